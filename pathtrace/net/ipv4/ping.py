"""net/ipv4/ping.c: unprivileged ICMP echo sockets (ping_v4_sendmsg), for pings the host sent."""
from __future__ import annotations

from pathtrace.net.core.skbuff import SkBuff


def ping_v4_sendmsg(skb: SkBuff) -> None:
    """ping_v4_sendmsg → ip_route_output_flow → ip_append_data → ip_push_pending_frames → ip_send_skb."""
    from pathtrace.net.ipv4.ip_output import ip_push_pending_frames
    from pathtrace.net.socket import route_for_send
    ctx = skb.ctx
    ctx.step("ping_v4_sendmsg", id=skb.icmp_id)
    if not route_for_send(skb):
        return
    ctx.step("ip_append_data")
    ip_push_pending_frames(skb)
