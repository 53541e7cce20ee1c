"""ICMP tracking (net/netfilter/nf_conntrack_proto_icmp.c).

Queries (echo, timestamp, info, address mask) form connections keyed by id; errors
(unreachable, source quench, redirect, time exceeded, parameter problem) are RELATED
to the connection of the packet they quote (nf_conntrack_inet_error), or INVALID when
that connection is unknown or the outer destination does not match it.
"""
from __future__ import annotations

from pathtrace.net.netfilter.nf_conntrack_checksum import nf_ip_checksum
from pathtrace.net.netfilter.nf_conntrack_core import (
    CTINFO_NAMES, IP_CT_DIR_REPLY, IP_CT_IS_REPLY, IP_CT_RELATED, IPS_CONFIRMED, NF_ACCEPT, NF_INET_PRE_ROUTING,
    ConntrackTable, NfConn,
)
from pathtrace.net.netfilter.nf_conntrack_tuple import fmt_tuple, nf_ct_invert_tuple, tuple_from_bytes

NR_ICMP_TYPES = 18
ICMP_ERRORS = frozenset((3, 4, 5, 11, 12))          # icmp_is_err
VALID_NEW = frozenset((8, 13, 15, 17))              # echo, timestamp, info request, address mask


def nf_conntrack_icmp_packet(table: ConntrackTable, ct: NfConn, skb, ctinfo: int, hook: int) -> int:
    ctx = skb.ctx
    if (ct.orig.dport >> 8) not in VALID_NEW:
        if ctx.record:
            ctx.step("nf_conntrack_icmp_packet", result="invalid",
                     reason=f"can't create new conn with type {ct.orig.dport >> 8}")
        return -NF_ACCEPT
    timeout = table.sysctl["nf_conntrack_icmp_timeout"]
    table.refresh(ct, ctx.now, timeout)
    if ctx.record:
        ctx.step("nf_conntrack_icmp_packet", timeout=timeout)
    if ctx.learn is not None and ct.status & IPS_CONFIRMED:
        ctx.learn.tracker = "icmp"    # a query of a known connection: the replay cache re-runs the refresh
    return NF_ACCEPT


def nf_conntrack_icmpv4_error(table: ConntrackTable, skb, hook: int) -> int:
    """NF_ACCEPT to go on with normal tracking; skb.ct set when RELATED; -NF_ACCEPT for invalid."""
    ctx = skb.ctx
    payload = skb.payload
    if len(payload) < 8:
        return _invalid(ctx, "short packet")
    if table.sysctl["nf_conntrack_checksum"] and hook == NF_INET_PRE_ROUTING:
        if nf_ip_checksum(skb, 1):
            return _invalid(ctx, "bad hw icmp checksum")
    itype = payload[0]
    if itype > NR_ICMP_TYPES:
        return _invalid(ctx, "invalid icmp type")
    if itype not in ICMP_ERRORS:
        return NF_ACCEPT
    return nf_conntrack_inet_error(table, skb, skb.iph.daddr)


def nf_conntrack_inet_error(table: ConntrackTable, skb, outer_daddr: int) -> int:
    ctx = skb.ctx
    orig = tuple_from_bytes(skb.payload, 8)
    if orig is None:
        return _invalid(ctx, "quoted packet too short", fn="nf_conntrack_inet_error")
    inner = nf_ct_invert_tuple(orig)
    if inner is None:
        return _invalid(ctx, "quoted packet has no reply tuple", fn="nf_conntrack_inet_error")
    hit = table.find(inner, ctx.now)
    if hit is None:
        return _invalid(ctx, f"no connection for quoted {fmt_tuple(orig)}", fn="nf_conntrack_inet_error")
    ct, direction = hit
    ct_daddr = ct.tuple(direction).dst
    if ct_daddr != outer_daddr:
        return _invalid(ctx, "outer daddr != inner", fn="nf_conntrack_inet_error")
    ctinfo = IP_CT_RELATED + (IP_CT_IS_REPLY if direction == IP_CT_DIR_REPLY else 0)
    skb.ct, skb.ctinfo = ct, ctinfo
    if ctx.record:
        ctx.step("nf_conntrack_inet_error", state=CTINFO_NAMES[ctinfo], tuple=fmt_tuple(ct.orig),
                 quoted=fmt_tuple(orig))
    return NF_ACCEPT


def _invalid(ctx, why: str, fn: str = "nf_conntrack_icmpv4_error") -> int:
    if ctx.record:
        ctx.step(fn, state="INVALID", reason=why)
    return -NF_ACCEPT
