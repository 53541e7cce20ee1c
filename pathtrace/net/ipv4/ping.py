"""net/ipv4/ping.c: ICMP echo sockets, for pings a capture shows the host sending and their replies.

A ping socket exists on the host once the capture shows it sending an echo request
(ping_get_port binds its identifier); echo replies carrying that identifier are
delivered to it (ping_rcv → ping_lookup → ping_queue_rcv_skb), others have no socket.
"""
from __future__ import annotations

from pathtrace.lib.inet import ntoa
from pathtrace.net.core.skbuff import SkBuff, kfree_skb_reason


def ping_v4_sendmsg(skb: SkBuff) -> None:
    """ping_v4_sendmsg → ip_route_output_flow → ip_append_data → ip_push_pending_frames → ip_send_skb."""
    from pathtrace.net.ipv4.ip_output import ip_push_pending_frames
    from pathtrace.net.socket import route_for_send
    ctx = skb.ctx
    net = ctx.net
    ident = skb.icmp_id
    ctx.step("ping_v4_sendmsg", id=ident)
    if ident not in net.ping_socks:
        ctx.step("inet_autobind")
        ctx.step("ping_get_port", id=ident)
        net.ping_socks[ident] = f"ping id {ident} from {ntoa(skb.iph.saddr)} (the capture shows the host sending it)"
    if not route_for_send(skb):
        return
    ctx.step("ip_append_data")
    ip_push_pending_frames(skb)


def ping_rcv(skb: SkBuff) -> None:
    """An echo reply: to the ping socket bound to its identifier, or NO_SOCKET."""
    ctx = skb.ctx
    sock = ctx.net.ping_socks.get(skb.icmp_id)
    ctx.step("ping_rcv", id=skb.icmp_id)
    ctx.step("ping_lookup", found=sock)
    if sock is None:
        kfree_skb_reason(skb, "NO_SOCKET")
        return
    ctx.step("ping_queue_rcv_skb", socket=sock)
    skb.verdict = "LOCAL_DELIVER"
