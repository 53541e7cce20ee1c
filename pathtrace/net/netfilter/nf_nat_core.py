"""NAT binding and the NAT hooks (net/netfilter/nf_nat_core.c, nf_nat_proto.c hooks).

The nat table is consulted only for a connection's first packet in each manip
direction (nf_nat_inet_fn with IP_CT_NEW/RELATED and no binding yet); when no rule
binds, nf_nat_alloc_null_binding records an identity mapping (which still makes the
tuple unique).  Every later packet in either direction is rewritten from the
conntrack's tuples by nf_nat_packet.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pathtrace.lib.inet import ntoa
from pathtrace.net.netfilter.nf_conntrack_core import (
    IP_CT_DIR_ORIGINAL, IP_CT_DIR_REPLY, IP_CT_NEW, IP_CT_RELATED, IP_CT_RELATED_REPLY, IPS_CONFIRMED,
    IPS_DST_NAT, IPS_DST_NAT_DONE, IPS_NAT_MASK, IPS_SRC_NAT, IPS_SRC_NAT_DONE, NF_ACCEPT, NF_DROP,
    NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING, NF_INET_PRE_ROUTING, HOOK_NAMES, NfConn,
    ctinfo2dir, nf_ct_get,
)
from pathtrace.net.netfilter.nf_conntrack_tuple import IPPROTO_ICMP, fmt_manip, fmt_tuple, nf_ct_invert_tuple
from pathtrace.net.netfilter.nf_nat_proto import hook2manip, nf_nat_icmp_reply_translation, nf_nat_manip_pkt
from pathtrace.net.netfilter.nf_nat_unique import (  # noqa: F401  (re-exported flags)
    NF_NAT_MANIP_DST, NF_NAT_MANIP_SRC, NF_NAT_RANGE_MAP_IPS, NF_NAT_RANGE_NETMAP, NF_NAT_RANGE_PERSISTENT,
    NF_NAT_RANGE_PROTO_OFFSET, NF_NAT_RANGE_PROTO_RANDOM, NF_NAT_RANGE_PROTO_RANDOM_ALL,
    NF_NAT_RANGE_PROTO_RANDOM_FULLY, NF_NAT_RANGE_PROTO_SPECIFIED, get_unique_tuple,
)

RunNatChain = Callable[[object, int], int]


@dataclass(slots=True, frozen=True)
class NatRange:
    """struct nf_nat_range2 (host-order addresses and ports)."""

    flags: int = 0
    min_addr: int = 0
    max_addr: int = 0
    min_proto: int = 0
    max_proto: int = 0
    base_proto: int = 0


def nf_nat_initialized(ct: NfConn, manip: int) -> bool:
    return bool(ct.status & (IPS_SRC_NAT_DONE if manip == NF_NAT_MANIP_SRC else IPS_DST_NAT_DONE))


def nf_nat_setup_info(ct: NfConn, rng: NatRange, maniptype: int) -> int:
    """Bind the connection: pick a unique tuple in the range and alter the reply tuple."""
    if ct.status & IPS_CONFIRMED:
        return NF_ACCEPT
    if nf_nat_initialized(ct, maniptype):
        return NF_DROP
    curr = nf_ct_invert_tuple(ct.reply)
    if curr is None:
        return NF_DROP
    new = get_unique_tuple(curr, rng, ct, maniptype)
    if new != curr:
        reply = nf_ct_invert_tuple(new)
        if reply is None:
            return NF_DROP
        ct.reply = reply       # nf_conntrack_alter_reply
        ct.status |= IPS_SRC_NAT if maniptype == NF_NAT_MANIP_SRC else IPS_DST_NAT
    ct.status |= IPS_DST_NAT_DONE if maniptype == NF_NAT_MANIP_DST else IPS_SRC_NAT_DONE
    ct.nat_trace = (maniptype, curr, new, rng)
    return NF_ACCEPT


def nf_nat_alloc_null_binding(ct: NfConn, hook: int) -> int:
    """No rule bound this direction: map to the same address, letting the port be made unique."""
    manip = hook2manip(hook)
    ip = ct.reply.dst if manip == NF_NAT_MANIP_SRC else ct.reply.src
    return nf_nat_setup_info(ct, NatRange(NF_NAT_RANGE_MAP_IPS, ip, ip), manip)


def nf_nat_packet(ct: NfConn, ctinfo: int, hook: int, skb) -> int:
    """Rewrite this packet if its direction needs the hook's manip type."""
    mtype = hook2manip(hook)
    direction = ctinfo2dir(ctinfo)
    statusbit = IPS_SRC_NAT if mtype == NF_NAT_MANIP_SRC else IPS_DST_NAT
    if direction == IP_CT_DIR_REPLY:
        statusbit ^= IPS_NAT_MASK
    if not ct.status & statusbit:
        return NF_ACCEPT
    ctx = skb.ctx
    before = (skb.iph.saddr, skb.sport, skb.iph.daddr, skb.dport) if ctx.record else None
    verdict = nf_nat_manip_pkt(skb, ct, mtype, direction)
    if ctx.record:
        if mtype == NF_NAT_MANIP_SRC:
            text = f"src {ntoa(before[0])}:{before[1]} -> {ntoa(skb.iph.saddr)}:{skb.sport}"
        else:
            text = f"dst {ntoa(before[2])}:{before[3]} -> {ntoa(skb.iph.daddr)}:{skb.dport}"
        if ct.orig.proto not in (6, 17, 132, 136):
            text = text.replace(f":{before[1]}", "").replace(f":{before[3]}", "") \
                .replace(f":{skb.sport}", "").replace(f":{skb.dport}", "")
        ctx.step("nf_nat_manip_pkt", nat=text, dir="reply" if direction else "original",
                 verdict="ACCEPT" if verdict == NF_ACCEPT else "DROP")
    return verdict


def _oif_changed(ct: NfConn, hook: int, ctinfo: int, outdev) -> bool:
    """nf_nat_oif_changed: a MASQUERADEd flow now leaves through another device."""
    return bool(ct.masq_index and hook == NF_INET_POST_ROUTING and outdev is not None
                and ctinfo2dir(ctinfo) == IP_CT_DIR_ORIGINAL and ct.masq_index != outdev.ifindex)


def nf_nat_inet_fn(nf, skb, hook: int, run_nat_chain: RunNatChain | None, outdev=None) -> int:
    """Bind new connections through the nat chain (or a null binding), then mangle."""
    ct = nf_ct_get(skb)
    if ct is None:
        return NF_ACCEPT
    ctinfo = skb.ctinfo
    manip = hook2manip(hook)
    ctx = skb.ctx
    if ctinfo in (IP_CT_NEW, IP_CT_RELATED, IP_CT_RELATED_REPLY) and not nf_nat_initialized(ct, manip):
        if run_nat_chain is not None:
            ct.nat_trace = None
            ret = run_nat_chain(skb, hook)
            if ret != NF_ACCEPT:
                return ret
            if nf_nat_initialized(ct, manip):
                _trace_binding(ctx, ct, "nf_nat_setup_info")
                if ctx.learn is not None and ct.nat_trace is not None:
                    # for the megaflow cache (pathtrace/megaflow.py): the binding as a rule made it
                    ctx.learn.recipe.append(("setup", ct.nat_trace[3], manip, ct.masq_index))
        if not nf_nat_initialized(ct, manip):
            ret = nf_nat_alloc_null_binding(ct, hook)
            _trace_binding(ctx, ct, "nf_nat_alloc_null_binding")
            if ctx.learn is not None:
                ctx.learn.recipe.append(("null", hook, ret))
            if ret != NF_ACCEPT:
                return ret
    elif _oif_changed(ct, hook, ctinfo, outdev):
        ct.table.kill(ct)
        if ctx.record:
            ctx.step("nf_ct_kill_acct", reason="masqueraded flow changed output device")
        return NF_DROP
    return nf_nat_packet(ct, ctinfo, hook, skb)


def _trace_binding(ctx, ct: NfConn, fn: str) -> None:
    if ctx.record and ct.nat_trace is not None:
        manip, old, new, _ = ct.nat_trace
        ctx.step(fn, manip="SRC" if manip == NF_NAT_MANIP_SRC else "DST",
                 nat=fmt_manip(manip, old, new) if new != old else "none (identity)",
                 tuple=fmt_tuple(ct.orig), reply=fmt_tuple(ct.reply))


def nf_nat_ipv4_fn(nf, skb, hook: int, run_nat_chain: RunNatChain | None = None, outdev=None) -> int:
    """ICMP errors of tracked flows are translated; everything else goes to nf_nat_inet_fn."""
    ct = nf_ct_get(skb)
    if ct is None:
        return NF_ACCEPT
    if skb.ctinfo in (IP_CT_RELATED, IP_CT_RELATED_REPLY) and skb.iph.protocol == IPPROTO_ICMP:
        if not nf_nat_icmp_reply_translation(skb, ct, skb.ctinfo, hook):
            if skb.ctx.record:
                skb.ctx.step("nf_nat_icmp_reply_translation", verdict="DROP")
            return NF_DROP
        return NF_ACCEPT
    return nf_nat_inet_fn(nf, skb, hook, run_nat_chain, outdev)


def _enter(skb, fn: str, hook: int) -> None:
    if skb.ctx.record and nf_ct_get(skb) is not None:
        skb.ctx.step(fn, hook=HOOK_NAMES[hook])


def nf_nat_ipv4_pre_routing(nf, skb, hook: int = NF_INET_PRE_ROUTING,
                            run_nat_chain: RunNatChain | None = None, outdev=None) -> int:
    """PRE_ROUTING, priority -100 (DNAT); a changed destination drops the cached route."""
    _enter(skb, "nf_nat_ipv4_pre_routing", hook)
    daddr = skb.iph.daddr
    ret = nf_nat_ipv4_fn(nf, skb, hook, run_nat_chain, outdev)
    if ret == NF_ACCEPT and daddr != skb.iph.daddr:
        skb.dst = None     # skb_dst_drop
    return ret


def nf_nat_ipv4_out(nf, skb, hook: int = NF_INET_POST_ROUTING,
                    run_nat_chain: RunNatChain | None = None, outdev=None) -> int:
    """POST_ROUTING, priority 100 (SNAT / MASQUERADE)."""
    _enter(skb, "nf_nat_ipv4_out", hook)
    if outdev is None:
        outdev = skb.dev
    return nf_nat_ipv4_fn(nf, skb, hook, run_nat_chain, outdev)


def nf_nat_ipv4_local_fn(nf, skb, hook: int = NF_INET_LOCAL_OUT,
                         run_nat_chain: RunNatChain | None = None, outdev=None) -> int:
    """LOCAL_OUT, priority -100 (DNAT of local traffic); re-route when the destination changed."""
    _enter(skb, "nf_nat_ipv4_local_fn", hook)
    ret = nf_nat_ipv4_fn(nf, skb, hook, run_nat_chain, outdev)
    if ret != NF_ACCEPT:
        return ret
    ct = nf_ct_get(skb)
    if ct is not None:
        direction = ctinfo2dir(skb.ctinfo)
        if ct.tuple(direction).dst != ct.tuple(1 - direction).src:
            from pathtrace.net.ipv4.route import ip_route_me_harder
            if skb.ctx.record:
                skb.ctx.step("ip_route_me_harder", reason="destination changed by NAT")
            if not ip_route_me_harder(skb):
                return NF_DROP
    return ret


def nf_nat_ipv4_local_in(nf, skb, hook: int = NF_INET_LOCAL_IN,
                         run_nat_chain: RunNatChain | None = None, outdev=None) -> int:
    """LOCAL_IN, priority 100 (SNAT of traffic to us); early-demuxed socket dropped if mangled."""
    _enter(skb, "nf_nat_ipv4_local_in", hook)
    saddr = skb.iph.saddr
    ret = nf_nat_ipv4_fn(nf, skb, hook, run_nat_chain, outdev)
    if ret != NF_ACCEPT or skb.sk is None:
        return ret
    ct = nf_ct_get(skb)
    mangled = saddr != skb.iph.saddr
    if not mangled and ct is not None and ct.orig.proto in (6, 17) \
            and ctinfo2dir(skb.ctinfo) == IP_CT_DIR_ORIGINAL:
        sk_dport = getattr(skb.sk, "dport", None)
        mangled = sk_dport is not None and ct.reply.dport != sk_dport
    if mangled:
        skb.sk = None      # skb_orphan: TCP edemux obtained wrong socket
    return ret
