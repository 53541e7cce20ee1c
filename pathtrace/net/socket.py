"""net/socket.c and net/ipv4/af_inet.c: an application's send, for frames a capture shows the host sending.

A frame the capture shows leaving the host that the model did not predict was built
by an application (data, its own connections, DNS queries, pings) or by the kernel in
a way the model missed.  It enters the model where the application's send would:
sock_sendmsg → inet_sendmsg → the protocol's sendmsg, and from there the kernel's
local output path (route, LOCAL_OUT, conntrack, POST_ROUTING, neighbour, qdisc,
driver).  The captured bytes are the truth for what the socket asked to send: the
model does not rebuild them, it routes and filters them.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from pathtrace.net.core.skbuff import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Iphdr, SkBuff, kfree_skb_reason

if TYPE_CHECKING:  # pragma: no cover
    from pathtrace.net.core.netdevice import NetDevice
    from pathtrace.trace import PacketContext

ICMP_ECHO = 8


def skb_from_sent(ctx: "PacketContext", l3: bytes, dev: "NetDevice | None") -> SkBuff | None:
    """The skb a socket hands to its protocol, from a captured IPv4 packet the host sent; None if unparsable."""
    if len(l3) < 20 or l3[0] >> 4 != 4 or (l3[0] & 15) < 5:
        return None
    hlen = (l3[0] & 15) * 4
    tos, tot_len, ident, frag_off, ttl, proto, check, saddr, daddr = struct.unpack_from("!xBHHHBBHII", l3)
    if len(l3) < hlen or tot_len < hlen:
        return None
    tot_len = min(tot_len, len(l3))
    iph = Iphdr(4, hlen // 4, tos, tot_len, ident, frag_off, ttl, proto, check, saddr, daddr, bytes(l3[20:hlen]))
    return SkBuff(ctx=ctx, dev=dev, iph=iph, payload=bytearray(l3[hlen:tot_len]), tstamp=ctx.now,
                  generated_by="sock_sendmsg")


def sock_sendmsg(skb: SkBuff) -> None:
    """__sys_sendto/sendmsg → sock_sendmsg → inet_sendmsg → the protocol's sendmsg."""
    ctx = skb.ctx
    iph = skb.iph
    ctx.step("__sys_sendto")
    ctx.step("sock_sendmsg")
    ctx.step("inet_sendmsg", protocol=iph.protocol)
    if iph.protocol == IPPROTO_TCP and not iph.is_fragment():
        from pathtrace.net.ipv4.tcp_output import tcp_sendmsg_from_capture
        tcp_sendmsg_from_capture(skb)
    elif iph.protocol == IPPROTO_UDP and not iph.is_fragment():
        from pathtrace.net.ipv4.udp import udp_sendmsg
        udp_sendmsg(skb)
    elif iph.protocol == IPPROTO_ICMP and skb.l4_available(1) and skb.payload[0] == ICMP_ECHO:
        from pathtrace.net.ipv4.ping import ping_v4_sendmsg
        ping_v4_sendmsg(skb)
    else:
        from pathtrace.net.ipv4.raw import raw_sendmsg
        raw_sendmsg(skb)


def route_for_send(skb: SkBuff, oif: str | None = None) -> bool:
    """ip_route_output_flow for a socket's packet: sets skb.dst, or frees the skb as the send fails."""
    from pathtrace.net.ipv4.route import ip_route_output
    ctx = skb.ctx
    iph = skb.iph
    net = ctx.net
    rt = ip_route_output(net, iph.daddr, iph.saddr, oif=oif, mark=skb.mark, tos=iph.tos & 0x1C, ctx=ctx)
    if ctx.record:
        ctx.step("ip_route_output_flow", result=rt.error or "ok", dev=rt.dev.name if rt.dev else None)
    if rt.error or rt.dev is None:
        kfree_skb_reason(skb, "IP_OUTNOROUTES", why=f"sendmsg fails: {rt.error or 'no device'}")
        return False
    skb.dst = rt
    skb.dev = rt.dev
    return True

