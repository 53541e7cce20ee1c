"""net/ipv4/raw.c: raw sockets (raw_sendmsg), for packets of other protocols the host sent.

Everything the capture shows the host sending that is neither TCP, UDP nor an echo
request enters here, as from a raw socket building its own payload (IP_HDRINCL off:
ip_append_data + ip_push_pending_frames).
"""
from __future__ import annotations

from pathtrace.net.core.skbuff import SkBuff


def raw_sendmsg(skb: SkBuff) -> None:
    from pathtrace.net.ipv4.ip_output import ip_push_pending_frames
    from pathtrace.net.socket import route_for_send
    ctx = skb.ctx
    ctx.step("raw_sendmsg", protocol=skb.iph.protocol)
    if not route_for_send(skb):
        return
    ctx.step("ip_append_data")
    ip_push_pending_frames(skb)
