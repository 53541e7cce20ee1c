"""ct expressions (net/netfilter/nft_ct.c) over the model's nf_conn, and `notrack` (nft_notrack).

`ct state` is a bit of the packet's ctinfo, also without an entry (invalid,
untracked); every other key breaks when the packet has no entry, as nft_ct_get_eval
does.  `ct mark set` writes the entry's mark (nft_ct_set_eval).
"""
from __future__ import annotations

from typing import Any, Callable

from pathtrace.net.netfilter.nf_tables_api import NFT_BREAK, NFT_CONTINUE

KEYS = {"state": "ct_state", "status": "ct_status", "mark": "mark", "direction": "ct_dir",
        "l3proto": "nf_proto", "protocol": "inet_proto", "zone": "integer"}
DIR_KEYS = {"saddr": "ipv4_addr", "daddr": "ipv4_addr", "proto-src": "inet_service", "proto-dst": "inet_service"}
NF_CT_STATE_UNTRACKED_BIT = 64
IP_CT_IS_REPLY = 3


def _ct(skb) -> Any:
    from pathtrace.net.netfilter.nf_conntrack_core import UNTRACKED
    ct = skb.ct
    return None if ct is None or ct is UNTRACKED else ct


def nft_ct_load(key: str, direction: int | None = None) -> Callable[[Any], Any]:
    """A loader for `ct [original|reply] key`."""
    if key == "state":
        from pathtrace.net.netfilter.xt_conntrack import ST_UNTRACKED, state_bit, untracked_sentinel
        untracked = untracked_sentinel()

        def state(pkt) -> int:
            bit = state_bit(pkt.skb, untracked)
            return NF_CT_STATE_UNTRACKED_BIT if bit == ST_UNTRACKED else bit
        return state
    if key in DIR_KEYS:
        attr = {"saddr": "src", "daddr": "dst", "proto-src": "sport", "proto-dst": "dport"}[key]

        def tuple_field(pkt) -> Any:
            ct = _ct(pkt.skb)
            if ct is None:
                return None
            d = direction if direction is not None else (1 if pkt.skb.ctinfo >= IP_CT_IS_REPLY else 0)
            return getattr(ct.tuple(d), attr)
        return tuple_field

    def other(pkt) -> Any:
        ct = _ct(pkt.skb)
        if ct is None:
            return None
        if key == "status":
            return ct.status
        if key == "mark":
            return ct.mark
        if key == "direction":
            return 1 if pkt.skb.ctinfo >= IP_CT_IS_REPLY else 0
        if key == "l3proto":
            return 2
        if key == "protocol":
            return ct.protonum
        return ct.zone
    return other


def nft_ct_set_mark(value: Callable[[Any], int | None]) -> Callable[[Any], int]:
    """ct mark set VALUE: the entry's mark (no entry: nothing happens)."""
    def fn(pkt) -> int:
        v = value(pkt)
        if v is None:
            return NFT_BREAK
        ct = _ct(pkt.skb)
        if ct is not None and ct.mark != v:
            old = ct.mark
            ct.mark = v & 0xFFFFFFFF
            if pkt.skb.ctx.record:
                pkt.skb.ctx.step("nft_ct_set_eval", key="mark", ctmark=f"{old:#x} -> {ct.mark:#x}")
        return NFT_CONTINUE
    return fn


def nft_notrack_eval(pkt) -> int:
    """notrack: a packet that has no entry yet is untracked (nft_notrack_eval)."""
    skb = pkt.skb
    if skb.ct is None:
        from pathtrace.net.netfilter.nf_conntrack_core import nf_ct_set_untracked
        nf_ct_set_untracked(skb)
        skb.ctx.step("nft_notrack_eval")
    return NFT_CONTINUE
