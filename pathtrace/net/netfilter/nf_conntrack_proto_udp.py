"""UDP connection tracking (net/netfilter/nf_conntrack_proto_udp.c).

30 s while unreplied; once replies were seen and the flow is older than 2 s it is a
"stream": 120 s (nf_conntrack_udp_timeout_stream) and ASSURED.  SEEN_REPLY is read
before nf_conntrack_in sets it for the current packet, as in the kernel, so the
first reply itself still refreshes with the unreplied timeout.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from pathtrace.net.netfilter.nf_conntrack_checksum import nf_ip_checksum
from pathtrace.net.netfilter.nf_conntrack_core import (
    IPS_ASSURED, IPS_CONFIRMED, IPS_NAT_CLASH, IPS_SEEN_REPLY, NF_ACCEPT, NF_INET_PRE_ROUTING,
    ConntrackTable, NfConn,
)


@dataclass(slots=True)
class UdpState:
    stream_ts: float = 0.0   # ct->proto.udp.stream_ts


def udp_error(table: ConntrackTable, skb, hook: int) -> str | None:
    payload = skb.payload
    if len(payload) < 8:
        return "short packet"
    ulen, check = struct.unpack_from("!HH", payload, 4)
    if ulen > len(payload) or ulen < 8:
        return "truncated/malformed packet"
    if not check:
        return None
    if hook == NF_INET_PRE_ROUTING and table.sysctl["nf_conntrack_checksum"]:
        if nf_ip_checksum(skb, 17):
            return "bad checksum"
    return None


def nf_conntrack_udp_packet(table: ConntrackTable, ct: NfConn, skb, ctinfo: int, hook: int) -> int:
    ctx = skb.ctx
    why = udp_error(table, skb, hook)
    if why:
        if ctx.record:
            ctx.step("nf_conntrack_udp_packet", result="invalid", reason=why)
        return -NF_ACCEPT
    now = ctx.now
    status = ct.status
    if not status & IPS_CONFIRMED:
        ct.proto = UdpState(stream_ts=now + 2.0)
    if status & IPS_SEEN_REPLY:
        extra = table.sysctl["nf_conntrack_udp_timeout"]
        stream = False
        if ct.proto is not None and now > ct.proto.stream_ts:
            extra = table.sysctl["nf_conntrack_udp_timeout_stream"]
            stream = not status & IPS_ASSURED
        table.refresh(ct, now, extra)
        if stream and not status & IPS_NAT_CLASH:
            ct.status |= IPS_ASSURED
    else:
        extra = table.sysctl["nf_conntrack_udp_timeout"]
        table.refresh(ct, now, extra)
    if ctx.record:
        ctx.step("nf_conntrack_udp_packet", timeout=extra, assured=bool(ct.status & IPS_ASSURED))
    if ctx.learn is not None and status & IPS_CONFIRMED:
        ctx.learn.tracker = "udp"
    return NF_ACCEPT
