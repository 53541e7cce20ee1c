"""Building packets the host originates (the part of ip_make_skb / ip_build_and_send_pkt we need)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from pathtrace.net.core.skbuff import IP_DF, Iphdr, SkBuff

if TYPE_CHECKING:  # pragma: no cover
    from pathtrace.net.ipv4.route import RouteResult
    from pathtrace.trace import PacketContext


def ip_select_ident(net, df: bool) -> int:
    """IP ID: 0 for DF packets of connected sockets is common; a per-namespace counter otherwise.

    The kernel hashes the ID from a random secret (ip_idents), which no model can
    reproduce; a counter keeps frames deterministic.
    """
    if df:
        return 0
    net.ip_id = (net.ip_id + 1) & 0xFFFF
    return net.ip_id


def new_local_skb(ctx: "PacketContext", rt: "RouteResult", saddr: int, daddr: int, proto: int,
                  payload: bytes, tos: int = 0, ttl: int | None = None, df: bool = False,
                  generated_by: str = "", mark: int = 0) -> SkBuff:
    net = ctx.net
    ttl = net.sysctl.glob["ip_default_ttl"] if ttl is None else ttl
    iph = Iphdr(4, 5, tos, 20 + len(payload), ip_select_ident(net, df), IP_DF if df else 0, ttl, proto, 0,
                saddr, daddr)
    skb = SkBuff(ctx=ctx, dev=rt.dev, iph=iph, payload=bytearray(payload), dst=rt, mark=mark,
                 tstamp=ctx.now, generated_by=generated_by)
    return skb
