"""snat, dnat, masquerade, redirect (nft_nat.c, nft_masq.c, nft_redir.c) onto the model's nf_nat.

The address and port range come from the rule's constants or from a map's data
(`dnat to ip saddr map { ... }`); a lookup that finds nothing breaks the rule.  The
binding itself is nf_nat_setup_info / nf_nat_masquerade_ipv4 / nf_nat_redirect_ipv4,
shared with iptables' targets; like them these run only for a connection's first
packet, from the nat hook's chain walk.
"""
from __future__ import annotations

from typing import Any, Callable

from pathtrace.lib.inet import ntoa
from pathtrace.net.netfilter.nf_tables_api import NFT_BREAK
from pathtrace.net.netfilter_hooks import NF_ACCEPT

# nf_nat_range2 flags (include/uapi/linux/netfilter/nf_nat.h)
NF_NAT_RANGE_MAP_IPS, NF_NAT_RANGE_PROTO_SPECIFIED, NF_NAT_RANGE_PROTO_RANDOM = 1, 2, 4
NF_NAT_RANGE_PERSISTENT, NF_NAT_RANGE_PROTO_RANDOM_FULLY = 8, 16
FLAG_WORDS = {"random": NF_NAT_RANGE_PROTO_RANDOM, "fully-random": NF_NAT_RANGE_PROTO_RANDOM_FULLY,
              "persistent": NF_NAT_RANGE_PERSISTENT}
# (min addr, max addr, min port, max port); None where the rule gives none
Target = tuple[int | None, int | None, int | None, int | None]


def _range(t: Target, flags: int):
    from pathtrace.net.netfilter.nf_nat_core import NatRange
    lo, hi, pmin, pmax = t
    if lo is not None:
        flags |= NF_NAT_RANGE_MAP_IPS
    if pmin is not None:
        flags |= NF_NAT_RANGE_PROTO_SPECIFIED
    return NatRange(flags, lo or 0, hi if hi is not None else (lo or 0), pmin or 0,
                    pmax if pmax is not None else (pmin or 0))


def describe(t: Target) -> str:
    lo, hi, pmin, pmax = t
    s = ntoa(lo) if lo is not None else ""
    if lo is not None and hi not in (None, lo):
        s += f"-{ntoa(hi)}"
    if pmin is not None:
        s += f":{pmin}" + (f"-{pmax}" if pmax not in (None, pmin) else "")
    return s


def nft_nat_eval(kind: str, to: Callable[[Any], Target | None], flags: int) -> Callable[[Any], int]:
    """kind: snat | dnat.  The verdict is nf_nat_setup_info's (NF_ACCEPT), as nft_nat_eval sets it."""
    manip = 1 if kind == "dnat" else 0

    def fn(pkt) -> int:
        from pathtrace.net.netfilter.nf_nat_core import nf_nat_setup_info
        t = to(pkt)
        if t is None:
            return NFT_BREAK
        skb = pkt.skb
        if skb.ctx.record:
            skb.ctx.step("nft_nat_eval", type=kind, to=describe(t))
        from pathtrace.net.netfilter.nf_conntrack_core import nf_ct_get
        ct = nf_ct_get(skb)
        if ct is None:
            return NF_ACCEPT
        return nf_nat_setup_info(ct, _range(t, flags), manip)
    return fn


def nft_masq_eval(ports: Target, flags: int) -> Callable[[Any], int]:
    def fn(pkt) -> int:
        from pathtrace.net.netfilter.nf_nat_masquerade import nf_nat_masquerade_ipv4
        pkt.skb.ctx.step("nft_masq_eval", out=pkt.outdev.name if pkt.outdev else "")
        return nf_nat_masquerade_ipv4(pkt.skb, _range(ports, flags), pkt.outdev)
    return fn


def nft_redir_eval(ports: Target, flags: int) -> Callable[[Any], int]:
    def fn(pkt) -> int:
        from pathtrace.net.netfilter.nf_nat_redirect import nf_nat_redirect_ipv4
        pkt.skb.ctx.step("nft_redir_eval", to_ports=describe(ports))
        return nf_nat_redirect_ipv4(pkt.skb, _range(ports, flags), pkt.hook)
    return fn
