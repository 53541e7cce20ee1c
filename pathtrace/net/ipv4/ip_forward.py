"""net/ipv4/ip_forward.c: TTL, MTU and redirect checks, FORWARD hook, then dst_output."""
from __future__ import annotations

from pathtrace.net.core.skbuff import IP_DF, PACKET_HOST, SkBuff, kfree_skb_reason
from pathtrace.net.netfilter_hooks import NF_INET_FORWARD, nf_hook


def ip_exceeds_mtu(skb: SkBuff, mtu: int) -> bool:
    if skb.len <= mtu:
        return False
    if not skb.iph.frag_off & IP_DF:
        return False
    if (skb.cb.get("frag_max_size") or 0) > mtu:
        return True               # an original fragment exceeds the MTU and DF is set
    return not skb.cb.get("ignore_df")


def ip_forward(skb: SkBuff) -> None:
    from pathtrace.net.ipv4.icmp import (
        ICMP_DEST_UNREACH, ICMP_EXC_TTL, ICMP_FRAG_NEEDED, ICMP_TIME_EXCEEDED, icmp_send,
    )
    ctx = skb.ctx
    rt = skb.dst
    ctx.step("ip_forward", out=rt.dev.name if rt.dev else None, ttl=skb.iph.ttl)
    if skb.pkt_type != PACKET_HOST:
        kfree_skb_reason(skb, "NOT_SPECIFIED", why="ip_forward: pkt_type is not PACKET_HOST")
        return
    if skb.iph.ttl <= 1:
        ctx.step("ip_forward", check="ttl", result=f"ttl {skb.iph.ttl} <= 1: too many hops")
        icmp_send(skb, ICMP_TIME_EXCEEDED, ICMP_EXC_TTL)
        kfree_skb_reason(skb, "IP_INHDR")
        return
    mtu = rt.rtax_mtu or rt.dev.mtu     # ip_dst_mtu_maybe_forward: the route's mtu metric first
    if ip_exceeds_mtu(skb, mtu):
        ctx.step("ip_forward", check="mtu", result=f"len {skb.len} > mtu {mtu} with DF")
        icmp_send(skb, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, mtu)
        kfree_skb_reason(skb, "PKT_TOO_BIG")
        return
    skb.set_ttl(skb.iph.ttl - 1)        # ip_decrease_ttl
    if rt.redirect and not _has_srr(skb):
        from pathtrace.net.ipv4.icmp import ip_rt_send_redirect
        ip_rt_send_redirect(skb)
    if nf_hook(NF_INET_FORWARD, skb, skb.dev, rt.dev):
        ip_forward_finish(skb)


def _has_srr(skb: SkBuff) -> bool:
    return any(b in (0x83, 0x89) for b in skb.iph.options[:1])


def ip_forward_finish(skb: SkBuff) -> None:
    from pathtrace.net.ipv4.ip_output import dst_output
    skb.ctx.step("ip_forward_finish")
    skb.cb["forwarded"] = True
    dst_output(skb)
