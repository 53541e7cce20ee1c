"""fib expressions (net/ipv4/netfilter/nft_fib_ipv4.c): route lookups from a rule.

`fib daddr type` is nft_fib4_eval_type (inet_dev_addr_type of the address);
`fib saddr . iif oif` is nft_fib4_eval: the reverse lookup's output device, kept only
if it is the wanted one (0 when not, or when the lookup fails or finds a local route).
Loopback packets at prerouting and 0.0.0.0 to broadcast/local multicast take the
input device without a lookup, as the kernel does.
"""
from __future__ import annotations

from typing import Any, Callable

from pathtrace.lib.inet import ipv4_is_lbcast, ipv4_is_multicast
from pathtrace.net.core.skbuff import PACKET_LOOPBACK
from pathtrace.net.netfilter.nf_tables_datatypes import FIB_ADDRTYPES

NF_INET_PRE_ROUTING, NF_INET_FORWARD = 0, 2


def nft_fib4_eval_type(use_daddr: bool) -> Callable[[Any], int]:
    def load(pkt) -> int:
        from pathtrace.net.ipv4.route import inet_addr_type
        iph = pkt.skb.iph
        return FIB_ADDRTYPES.get(inet_addr_type(pkt.net, iph.daddr if use_daddr else iph.saddr).lower(), 0)
    return load


def _get_saddr(addr: int) -> int:
    return 0 if ipv4_is_multicast(addr) or ipv4_is_lbcast(addr) or addr >> 24 == 0 else addr


def nft_fib4_eval(use_daddr: bool, flag_iif: bool, flag_oif: bool, flag_mark: bool, result: str) -> Callable[[Any], Any]:
    """result: 'oif' (an ifindex, 0 = none) or 'oifname' (a name, '' = none)."""
    def store(dev) -> Any:
        if result == "oifname":
            return dev.name if dev is not None else ""
        return dev.ifindex if dev is not None else 0

    def load(pkt) -> Any:
        from pathtrace.net.ipv4.fib_rules import Flowi4
        from pathtrace.net.ipv4.route import _dev_for_gateway, fib_lookup
        skb = pkt.skb
        oif = pkt.outdev if flag_oif else pkt.indev if flag_iif else None
        if pkt.hook == NF_INET_PRE_ROUTING and (skb.pkt_type == PACKET_LOOPBACK
                                                or (pkt.indev is not None and pkt.indev.loopback)):
            return store(pkt.indev)
        iph = skb.iph
        if iph.saddr == 0 and (ipv4_is_lbcast(iph.daddr) or (iph.daddr & 0xFFFFFF00) == 0xE0000000):
            return store(skb.dev)
        iif = "lo"
        if use_daddr:
            daddr, saddr = iph.daddr, _get_saddr(iph.saddr)
        else:
            if pkt.hook == NF_INET_FORWARD and flag_iif and pkt.outdev is not None:
                iif = pkt.outdev.name
            daddr, saddr = iph.saddr, _get_saddr(iph.daddr)
        res = fib_lookup(pkt.net, Flowi4(daddr=daddr, saddr=saddr, iif=iif, mark=skb.mark if flag_mark else 0,
                                         tos=iph.tos & 0xFC))
        if res.error is not None or res.fa is None or res.fa.type == "local":
            return store(None)
        fa = res.fa
        name = fa.dev or (d.name if (d := _dev_for_gateway(pkt.net, fa.gateway, res.table)) is not None else None)
        found = pkt.net.devices.get(name) if name else None
        if oif is not None:
            return store(oif if name == oif.name else None)
        return store(found)
    return load
