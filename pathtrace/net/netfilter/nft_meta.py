"""Meta expressions (net/netfilter/nft_meta.c): what the stack knows about the packet.

`meta iif`/`oif` compare interface indexes (nft resolves the name when the rule is
loaded: an interface that does not exist is refused), `iifname`/`oifname` compare
names ('*' at the end of a name is a prefix match).  `meta mark set` is the set
variant (nft_meta_set_eval) and writes skb->mark.
"""
from __future__ import annotations

from typing import Any, Callable

from pathtrace.net.core.skbuff import PACKET_LOOPBACK

# key -> datatype of its value
KEYS = {"iifname": "ifname", "oifname": "ifname", "iif": "iface_index", "oif": "iface_index",
        "mark": "mark", "l4proto": "inet_proto", "nfproto": "nf_proto", "pkttype": "pkt_type",
        "protocol": "ether_type", "length": "integer", "iiftype": "integer", "oiftype": "integer",
        "priority": "integer", "cpu": "integer"}
# keys that need no `meta` in front (nft's "primary" meta keys)
BARE = {"iifname", "oifname", "iif", "oif", "mark", "iiftype", "oiftype", "priority"}
NFPROTO_IPV4 = 2


def _pkttype(pkt) -> int:
    """nft_meta_get_eval NFT_META_PKTTYPE: skb->pkt_type; output packets are PACKET_HOST unless multicast
    or broadcast (nft_meta_get_eval_pkttype_lo)."""
    t = pkt.skb.pkt_type
    if t != PACKET_LOOPBACK:
        return t
    from pathtrace.lib.inet import ipv4_is_lbcast, ipv4_is_multicast
    daddr = pkt.skb.iph.daddr
    if ipv4_is_multicast(daddr):
        return 2
    if ipv4_is_lbcast(daddr):
        return 1
    return 0


def nft_meta_load(key: str) -> Callable[[Any], Any]:
    """A loader for the key; None (the expression breaks) where the kernel's has no device."""
    if key == "iifname":
        return lambda pkt: pkt.indev.name if pkt.indev is not None else None
    if key == "oifname":
        return lambda pkt: pkt.outdev.name if pkt.outdev is not None else None
    if key == "iif":        # the ifindex nft resolved at load time stands for the device: compare the device
        return lambda pkt: pkt.indev.name if pkt.indev is not None else None
    if key == "oif":
        return lambda pkt: pkt.outdev.name if pkt.outdev is not None else None
    if key == "mark":
        return lambda pkt: pkt.skb.mark
    if key == "l4proto":
        return lambda pkt: pkt.tprot if pkt.flags else None
    if key == "nfproto":
        return lambda pkt: NFPROTO_IPV4
    if key == "pkttype":
        return _pkttype
    if key == "protocol":
        return lambda pkt: pkt.skb.protocol
    if key == "length":
        return lambda pkt: pkt.skb.len
    if key == "iiftype":
        return lambda pkt: (772 if pkt.indev.loopback else 1) if pkt.indev is not None else None
    if key == "oiftype":
        return lambda pkt: (772 if pkt.outdev.loopback else 1) if pkt.outdev is not None else None
    if key == "priority":
        return lambda pkt: 0
    if key == "cpu":
        return lambda pkt: 0
    raise KeyError(key)


def nft_meta_set_mark(value: Callable[[Any], int | None]) -> Callable[[Any], int]:
    """meta mark set VALUE (a constant or a map's data)."""
    from pathtrace.net.netfilter.nf_tables_api import NFT_BREAK, NFT_CONTINUE

    def fn(pkt) -> int:
        v = value(pkt)
        if v is None:
            return NFT_BREAK
        old = pkt.skb.mark
        pkt.skb.mark = v & 0xFFFFFFFF
        if pkt.skb.ctx.record:
            pkt.skb.ctx.step("nft_meta_set_eval", key="mark", mark=f"{old:#x} -> {pkt.skb.mark:#x}")
        return NFT_CONTINUE
    return fn
