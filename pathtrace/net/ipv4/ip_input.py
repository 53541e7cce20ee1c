"""net/ipv4/ip_input.c: header checks, PRE_ROUTING, the input route, local delivery.

Drop reasons are the ones ip_rcv_core and ip_rcv_finish_core give in 6.x.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from pathtrace.lib.checksum import ip_fast_csum
from pathtrace.lib.inet import ntoa
from pathtrace.net.core.skbuff import (
    IP_MF, IP_OFFSET, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, PACKET_OTHERHOST, Iphdr, SkBuff,
    kfree_skb_reason,
)
from pathtrace.net.netfilter_hooks import NF_INET_LOCAL_IN, NF_INET_PRE_ROUTING, nf_hook

if TYPE_CHECKING:  # pragma: no cover
    from pathtrace.net.core.netdevice import NetDevice


def ip_rcv(skb: SkBuff, dev: "NetDevice") -> None:
    ctx = skb.ctx
    ctx.step("ip_rcv", dev=dev.name)
    if not ip_rcv_core(skb, dev):
        return
    if nf_hook(NF_INET_PRE_ROUTING, skb, dev, None):
        ip_rcv_finish(skb)


def ip_rcv_core(skb: SkBuff, dev: "NetDevice") -> bool:
    """Validate the IPv4 header exactly in ip_rcv_core's order; parse it into skb.iph."""
    ctx = skb.ctx
    if skb.pkt_type == PACKET_OTHERHOST:
        ctx.step("ip_rcv_core", check="pkt_type", result="PACKET_OTHERHOST")
        kfree_skb_reason(skb, "OTHERHOST")
        return False
    if skb.iph is not None:           # looped back: already parsed
        ctx.step("ip_rcv_core", result="ok")
        return True
    raw = skb.raw
    if len(raw) < 20:
        return _inhdr(skb, f"packet shorter than an IP header ({len(raw)} bytes)")
    vihl = raw[0]
    version, ihl = vihl >> 4, vihl & 0x0F
    if ihl < 5 or version != 4:
        return _inhdr(skb, f"version {version} ihl {ihl}")
    hlen = ihl * 4
    if len(raw) < hlen:
        return _inhdr(skb, f"ihl {ihl} longer than the packet ({len(raw)} bytes)")
    if ip_fast_csum(raw[:hlen]):
        ctx.step("ip_rcv_core", check="ip_fast_csum", result="bad header checksum")
        kfree_skb_reason(skb, "IP_CSUM")
        return False
    tos, tot_len, ident, frag_off, ttl, proto, check, saddr, daddr = struct.unpack_from("!xBHHHBBHII", raw)
    if len(raw) < tot_len:
        ctx.step("ip_rcv_core", check="tot_len", result=f"tot_len {tot_len} > skb->len {len(raw)}")
        kfree_skb_reason(skb, "PKT_TOO_SMALL")
        return False
    if tot_len < hlen:
        return _inhdr(skb, f"tot_len {tot_len} < header length {hlen}")
    skb.iph = Iphdr(version, ihl, tos, tot_len, ident, frag_off, ttl, proto, check, saddr, daddr,
                    bytes(raw[20:hlen]))
    skb.payload = bytearray(raw[hlen:tot_len])       # pskb_trim_rcsum: Ethernet padding goes
    if ctx.record:
        ctx.step("ip_rcv_core", result="ok", saddr=ntoa(saddr), daddr=ntoa(daddr), ttl=ttl, len=tot_len)
    return True


def _inhdr(skb: SkBuff, why: str) -> bool:
    skb.ctx.step("ip_rcv_core", check="header", result=why)
    kfree_skb_reason(skb, "IP_INHDR")
    return False


def ip_rcv_finish(skb: SkBuff) -> None:
    ctx = skb.ctx
    ctx.step("ip_rcv_finish")
    if not ip_rcv_finish_core(skb):
        return
    dst_input(skb)


def ip_rcv_finish_core(skb: SkBuff) -> bool:
    from pathtrace.net.ipv4.route import ip_route_input_rcu
    ctx = skb.ctx
    iph = skb.iph
    dev = skb.dev
    if skb.dst is None:
        ctx.step("ip_route_input_noref", daddr=ntoa(iph.daddr), saddr=ntoa(iph.saddr), iif=dev.name,
                 mark=skb.mark) if ctx.record else None
        reason = ip_route_input_rcu(skb, iph.daddr, iph.saddr, dev)
        if reason:
            kfree_skb_reason(skb, reason)
            return False
        if ctx.record and skb.dst.type != "multicast":
            dst = skb.dst
            ctx.step("ip_route_input_slow", result=dst.type, route=dst.route or None,
                     table={255: "local", 254: "main", 253: "default"}.get(dst.table, str(dst.table)),
                     rule=dst.rule or None, input=dst.input, error=dst.error,
                     out=dst.dev.name if dst.dev is not None and dst.input == "ip_forward" else None)
    if iph.ihl > 5 and not ip_rcv_options(skb, dev):
        return False
    return True


def ip_rcv_options(skb: SkBuff, dev: "NetDevice") -> bool:
    """ip_options_compile + source-route policy: malformed options or refused SRR drop the packet."""
    skb.ctx.uncacheable("IP options")
    ctx = skb.ctx
    opts = skb.iph.options
    i = 0
    srr = False
    while i < len(opts):
        kind = opts[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(opts) or opts[i + 1] < 2 or i + opts[i + 1] > len(opts):
            ctx.step("ip_options_compile", result=f"bad option length at offset {i}")
            kfree_skb_reason(skb, "NOT_SPECIFIED")
            return False
        if kind in (0x83, 0x89):
            srr = True
        i += opts[i + 1]
    ctx.step("ip_options_compile", result="ok", source_route=srr)
    if srr and not skb.ctx_net.sysctl.dev(dev.name, "accept_source_route"):
        ctx.step("ip_rcv_options", result="source route refused (accept_source_route=0)")
        kfree_skb_reason(skb, "NOT_SPECIFIED")
        return False
    return True


def dst_input(skb: SkBuff) -> None:
    ctx = skb.ctx
    target = skb.dst.input
    ctx.step("dst_input", input=target)
    if target == "ip_local_deliver":
        ip_local_deliver(skb)
    elif target == "ip_forward":
        from pathtrace.net.ipv4.ip_forward import ip_forward
        ip_forward(skb)
    else:
        from pathtrace.net.ipv4.icmp import ip_error
        ip_error(skb)


def ip_local_deliver(skb: SkBuff) -> None:
    skb.ctx.uncacheable("local delivery")
    ctx = skb.ctx
    ctx.step("ip_local_deliver")
    if skb.iph.frag_off & (IP_MF | IP_OFFSET):
        from pathtrace.net.ipv4.ip_fragment import IP_DEFRAG_LOCAL_DELIVER, ip_defrag
        whole = ip_defrag(skb.ctx_net, skb, IP_DEFRAG_LOCAL_DELIVER)
        if whole is None:
            return
        skb = whole
    if nf_hook(NF_INET_LOCAL_IN, skb, skb.dev, None):
        ip_local_deliver_finish(skb)


def ip_local_deliver_finish(skb: SkBuff) -> None:
    skb.ctx.step("ip_local_deliver_finish")
    ip_protocol_deliver_rcu(skb, skb.iph.protocol)


def ip_protocol_deliver_rcu(skb: SkBuff, protocol: int) -> None:
    ctx = skb.ctx
    ctx.step("ip_protocol_deliver_rcu", protocol=protocol)
    if protocol == IPPROTO_TCP:
        from pathtrace.net.ipv4.tcp_ipv4 import tcp_v4_rcv
        tcp_v4_rcv(skb)
    elif protocol == IPPROTO_UDP:
        from pathtrace.net.ipv4.udp import udp_rcv
        udp_rcv(skb)
    elif protocol == IPPROTO_ICMP:
        from pathtrace.net.ipv4.icmp import icmp_rcv
        icmp_rcv(skb)
    else:
        from pathtrace.net.ipv4.icmp import ICMP_DEST_UNREACH, ICMP_PROT_UNREACH, icmp_send
        icmp_send(skb, ICMP_DEST_UNREACH, ICMP_PROT_UNREACH)
        kfree_skb_reason(skb, "IP_NOPROTO", protocol=protocol)

