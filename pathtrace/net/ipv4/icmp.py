"""net/ipv4/icmp.c: ICMP input (echo, errors) and __icmp_send with the kernel's rate limits.

Rate limits run on capture time: the global bucket (icmp_msgs_per_sec / icmp_msgs_burst,
one credit per message; the kernel draws 0–2 at random, the model takes the mean) and the
per-destination inet_peer bucket (icmp_ratelimit ms, burst 6) for types in icmp_ratemask.
ip_error keeps its own per-source bucket (ip_rt_error_cost 1 s, burst 5 s).
"""
from __future__ import annotations

import struct

from pathtrace.lib.checksum import csum_fold, csum_partial
from pathtrace.lib.inet import ntoa
from pathtrace.net.core.skbuff import (
    IP_OFFSET, IPPROTO_ICMP, PACKET_HOST, SkBuff, consume_skb, kfree_skb_reason,
)

ICMP_ECHOREPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_SOURCE_QUENCH = 4
ICMP_REDIRECT = 5
ICMP_ECHO = 8
ICMP_TIME_EXCEEDED = 11
ICMP_PARAMETERPROB = 12
ICMP_TIMESTAMP = 13
ICMP_TIMESTAMPREPLY = 14
NR_ICMP_TYPES = 18

ICMP_NET_UNREACH = 0
ICMP_HOST_UNREACH = 1
ICMP_PROT_UNREACH = 2
ICMP_PORT_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMP_PKT_FILTERED = 13
ICMP_EXC_TTL = 0
ICMP_REDIR_HOST = 1

ERROR_TYPES = {ICMP_DEST_UNREACH, ICMP_SOURCE_QUENCH, ICMP_REDIRECT, ICMP_TIME_EXCEEDED, ICMP_PARAMETERPROB}
XRLIM_BURST_FACTOR = 6


def icmp_checksum(msg: bytes) -> int:
    return csum_fold(csum_partial(msg))


# ---- receive ---------------------------------------------------------------------------
def icmp_rcv(skb: SkBuff) -> None:
    skb.ctx.uncacheable("icmp_rcv")
    ctx = skb.ctx
    net = skb.ctx_net
    data = skb.payload
    if len(data) < 8:
        ctx.step("icmp_rcv", result=f"short ICMP header ({len(data)} bytes)")
        kfree_skb_reason(skb, "PKT_TOO_SMALL")
        return
    if icmp_checksum(bytes(data)):
        ctx.step("icmp_rcv", result="bad ICMP checksum")
        kfree_skb_reason(skb, "ICMP_CSUM")
        return
    itype, code = data[0], data[1]
    ctx.step("icmp_rcv", type=itype, code=code)
    if itype > NR_ICMP_TYPES:
        kfree_skb_reason(skb, "UNHANDLED_PROTO")
        return
    if skb.dst.type in ("broadcast", "multicast"):
        if itype in (ICMP_ECHO, ICMP_TIMESTAMP) and net.sysctl.glob["icmp_echo_ignore_broadcasts"]:
            kfree_skb_reason(skb, "INVALID_PROTO", why="icmp_echo_ignore_broadcasts")
            return
        if itype not in (ICMP_ECHO, ICMP_TIMESTAMP, 17, 18):
            kfree_skb_reason(skb, "INVALID_PROTO")
            return
    if itype == ICMP_ECHO:
        icmp_echo(skb)
    elif itype == ICMP_TIMESTAMP:
        icmp_timestamp(skb)
    elif itype == ICMP_ECHOREPLY:
        from pathtrace.net.ipv4.ping import ping_rcv
        ping_rcv(skb)
    elif itype in ERROR_TYPES:
        ctx.step("icmp_redirect" if itype == ICMP_REDIRECT else "icmp_unreach", note="error delivered to the socket it quotes (icmp_socket_deliver)")
        consume_skb(skb, "LOCAL_DELIVER")
    else:
        ctx.step("icmp_discard")
        consume_skb(skb, "LOCAL_DELIVER")


def icmp_echo(skb: SkBuff) -> None:
    ctx = skb.ctx
    net = skb.ctx_net
    ctx.step("icmp_echo", id=skb.icmp_id)
    if net.sysctl.glob["icmp_echo_ignore_all"]:
        consume_skb(skb, "LOCAL_DELIVER", why="icmp_echo_ignore_all")
        return
    reply = bytearray(skb.payload)
    reply[0] = ICMP_ECHOREPLY
    icmp_reply(skb, bytes(reply))
    consume_skb(skb, "LOCAL_DELIVER")


def icmp_timestamp(skb: SkBuff) -> None:
    ctx = skb.ctx
    ctx.step("icmp_timestamp")
    if len(skb.payload) < 20:
        kfree_skb_reason(skb, "PKT_TOO_SMALL")
        return
    ms = int((ctx.now % 86400) * 1000)
    reply = bytearray(skb.payload[:20])
    reply[0] = ICMP_TIMESTAMPREPLY
    struct.pack_into("!II", reply, 12, ms, ms)
    icmp_reply(skb, bytes(reply))
    consume_skb(skb, "LOCAL_DELIVER")


def icmp_reply(skb: SkBuff, message: bytes) -> None:
    """Answer from the address the request was sent to (fib_compute_spec_dst for broadcasts)."""
    from pathtrace.net.ipv4.ip_local import new_local_skb
    from pathtrace.net.ipv4.ip_output import ip_local_out
    from pathtrace.net.ipv4.route import fib_compute_spec_dst, ip_route_output
    ctx = skb.ctx
    net = skb.ctx_net
    iph = skb.iph
    saddr = fib_compute_spec_dst(skb)
    msg = bytearray(message)
    struct.pack_into("!H", msg, 2, 0)
    struct.pack_into("!H", msg, 2, icmp_checksum(bytes(msg)))
    with ctx.nested():
        ctx.step("icmp_reply", to=ntoa(iph.saddr))
        mark = ip4_reply_mark(net, skb.mark)
        rt = ip_route_output(net, iph.saddr, saddr, mark=mark, tos=iph.tos, ctx=ctx)
        if rt.error:
            ctx.step("icmp_reply", result=f"no route back ({rt.error})")
            return
        out = new_local_skb(ctx, rt, saddr, iph.saddr, IPPROTO_ICMP, bytes(msg), tos=iph.tos,
                            generated_by="icmp_reply", mark=mark)
        ctx.step("icmp_push_reply")
        ctx.step("ip_push_pending_frames")
        ctx.step("ip_send_skb")
        ip_local_out(out)


# ---- errors ----------------------------------------------------------------------------
def icmp_global_allow(net, now: float) -> bool:
    """Global token bucket: icmp_msgs_per_sec refill, icmp_msgs_burst cap."""
    glob = net.sysctl.glob
    per_sec, burst = glob["icmp_msgs_per_sec"], glob["icmp_msgs_burst"]
    credit, last = net.icmp_global
    if last < 0:
        credit = burst
    else:
        credit = min(burst, credit + (now - last) * per_sec)
    if credit < 1:
        net.icmp_global[:] = [credit, now]
        return False
    net.icmp_global[:] = [credit - 1, now]
    return True


PEER_TOKENS, PEER_LAST, PEER_REDIRECTS = 0, 1, 2
IP_RT_REDIRECT_NUMBER = 9
IP_RT_REDIRECT_LOAD = 0.02                                               # HZ / 50
IP_RT_REDIRECT_SILENCE = IP_RT_REDIRECT_LOAD * (1 << (IP_RT_REDIRECT_NUMBER + 1))
IP_RT_ERROR_COST, IP_RT_ERROR_BURST = 1.0, 5.0


def inet_getpeer(peers: dict, addr: int, now: float) -> list:
    """inet_getpeer_v4: ONE entry per address, whose rate_tokens and rate_last are shared by
    icmpv4_xrlim_allow, ip_error and ip_rt_send_redirect; a new peer starts 60 s back."""
    peer = peers.get(addr)
    if peer is None:
        peer = peers[addr] = [0.0, now - 60.0, 0]
    return peer


def inet_peer_xrlim_allow(peers: dict, addr: int, now: float, timeout: float, burst_factor: int) -> bool:
    """inet_peer token bucket in jiffies-like seconds."""
    peer = inet_getpeer(peers, addr, now)
    tokens = min(peer[PEER_TOKENS] + (now - peer[PEER_LAST]), burst_factor * timeout)
    peer[PEER_LAST] = now
    allowed = tokens >= timeout
    if allowed:
        tokens -= timeout
    peer[PEER_TOKENS] = tokens
    return allowed


def icmpv4_mask_allow(net, itype: int, code: int) -> bool:
    if itype > NR_ICMP_TYPES:
        return True
    if itype == ICMP_DEST_UNREACH and code == ICMP_FRAG_NEEDED:
        return True
    return not ((1 << itype) & net.sysctl.glob["icmp_ratemask"])


def _ct_attach(out: SkBuff, skb_in: SkBuff) -> None:
    """icmp_glue_bits: an ICMP error joins the conntrack of the packet it quotes (nf_ct_attach),
    so OUTPUT sees it RELATED and NAT translates it (or drops a redirect, nf_nat_icmp_reply_translation)."""
    if skb_in.ct is not None:
        from pathtrace.net.netfilter.nf_conntrack_core import nf_ct_attach
        nf_ct_attach(out, skb_in)


def ip4_reply_mark(net, mark: int) -> int:
    """IP4_REPLY_MARK: what the stack answers with (echo replies, errors, resets) carries the packet's
    mark only with net.ipv4.fwmark_reflect; else mark 0, so fwmark policy rules do not route it."""
    return mark if net.sysctl.glob.get("fwmark_reflect", 0) else 0


def icmp_send(skb_in: SkBuff, itype: int, code: int, info: int = 0) -> None:
    """__icmp_send: the error the kernel sends about skb_in, if it sends one."""
    skb_in.ctx.uncacheable("icmp_send (rate limits)")
    from pathtrace.net.ipv4.ip_local import new_local_skb
    from pathtrace.net.ipv4.ip_output import ip_local_out
    from pathtrace.net.ipv4.route import ip_route_output
    ctx = skb_in.ctx
    net = skb_in.ctx_net
    iph = skb_in.iph
    with ctx.nested():
        ctx.step("__icmp_send", type=itype, code=code, to=ntoa(iph.saddr))
        rt_in = skb_in.dst
        if rt_in is not None and rt_in.type in ("broadcast", "multicast"):
            ctx.step("__icmp_send", result="not sent: packet was broadcast/multicast")
            return
        if skb_in.pkt_type != PACKET_HOST and skb_in.iif is not None:
            ctx.step("__icmp_send", result="not sent: pkt_type is not PACKET_HOST")
            return
        if iph.frag_off & IP_OFFSET:
            ctx.step("__icmp_send", result="not sent: not the first fragment")
            return
        if iph.protocol == IPPROTO_ICMP and itype in ERROR_TYPES | {ICMP_PARAMETERPROB}:
            inner = skb_in.icmp_type
            if inner < 0 or inner > NR_ICMP_TYPES or inner in ERROR_TYPES:
                ctx.step("__icmp_send", result="not sent: never an error about an ICMP error")
                return
        limited = not icmpv4_mask_allow(net, itype, code)
        if limited and not icmp_global_allow(net, ctx.now):
            ctx.step("icmp_global_allow", result="rate limited (icmp_msgs_per_sec)")
            ctx.warnings.append("ICMP error suppressed by the global rate limit")
            return
        saddr = iph.daddr
        if rt_in is None or rt_in.type != "local":
            saddr = 0
            if net.sysctl.glob["icmp_errors_use_inbound_ifaddr"] and skb_in.iif is not None:
                saddr = net.inet_select_addr(skb_in.iif, iph.saddr, "link")
        tos = ((iph.tos & 0x1E) | 0xC0) if itype in ERROR_TYPES else iph.tos
        ctx.step("icmp_route_lookup", to=ntoa(iph.saddr))
        mark = ip4_reply_mark(net, skb_in.mark)
        rt = ip_route_output(net, iph.saddr, saddr, mark=mark, tos=tos, ctx=ctx)
        if rt.error or rt.dev is None:
            ctx.step("icmp_route_lookup", result=f"no route ({rt.error})")
            return
        if limited and not rt.dev.loopback and not inet_peer_xrlim_allow(
                net.icmp_peers, iph.saddr, ctx.now, net.sysctl.glob["icmp_ratelimit"] / 1000.0,
                XRLIM_BURST_FACTOR):
            ctx.step("icmpv4_xrlim_allow", result="rate limited (icmp_ratelimit)")
            ctx.warnings.append("ICMP error suppressed by the per-destination rate limit")
            return
        room = min(rt.dev.mtu, 576) - 20 - 8
        quoted = (iph.pack() + bytes(skb_in.payload))[:room]
        rest = struct.pack("!HH", 0, info) if itype == ICMP_DEST_UNREACH and code == ICMP_FRAG_NEEDED \
            else struct.pack("!I", info)
        msg = bytearray(struct.pack("!BBH", itype, code, 0) + rest + quoted)
        struct.pack_into("!H", msg, 2, icmp_checksum(bytes(msg)))
        src = rt.prefsrc or saddr
        out = new_local_skb(ctx, rt, src, iph.saddr, IPPROTO_ICMP, bytes(msg), tos=tos,
                            generated_by="__icmp_send", mark=mark)
        out.cb["icmp_error_of"] = skb_in
        _ct_attach(out, skb_in)
        ctx.step("icmp_push_reply")
        ctx.step("ip_push_pending_frames")
        ctx.step("ip_send_skb")
        ip_local_out(out)


def ip_error(skb: SkBuff) -> None:
    """dst.input for unroutable packets: maybe an ICMP unreachable, always a drop."""
    ctx = skb.ctx
    net = skb.ctx_net
    rt = skb.dst
    dev = skb.dev
    ctx.step("ip_error", error=rt.error)
    if not net.sysctl.dev(dev.name, "forwarding"):
        reason = {"EHOSTUNREACH": "IP_INADDRERRORS", "ENETUNREACH": "IP_INNOROUTES"}.get(rt.error, "NOT_SPECIFIED")
        kfree_skb_reason(skb, reason, why="forwarding disabled on " + dev.name)
        return
    code = {"EHOSTUNREACH": ICMP_HOST_UNREACH, "ENETUNREACH": ICMP_NET_UNREACH,
            "EACCES": ICMP_PKT_FILTERED}.get(rt.error)
    reason = "IP_INNOROUTES" if rt.error == "ENETUNREACH" else "NOT_SPECIFIED"
    if code is not None:
        ctx.uncacheable("ip_error (rate limit)")      # the peer's tokens decide, suppressed or not
        peer = inet_getpeer(net.icmp_peers, skb.iph.saddr, ctx.now)
        peer[PEER_TOKENS] = min(peer[PEER_TOKENS] + ctx.now - peer[PEER_LAST], IP_RT_ERROR_BURST)
        peer[PEER_LAST] = ctx.now
        if peer[PEER_TOKENS] >= IP_RT_ERROR_COST:
            peer[PEER_TOKENS] -= IP_RT_ERROR_COST
            icmp_send(skb, ICMP_DEST_UNREACH, code)
        else:
            ctx.step("ip_error", result="ICMP suppressed (ip_rt_error_cost)")
    kfree_skb_reason(skb, reason)


def ip_rt_send_redirect(skb: SkBuff) -> None:
    """Tell the sender a better first hop exists on its own link (rate limited per source)."""
    skb.ctx.uncacheable("redirect (rate limit)")
    from pathtrace.net.ipv4.ip_local import new_local_skb
    from pathtrace.net.ipv4.ip_output import ip_local_out
    from pathtrace.net.ipv4.route import ip_route_output
    ctx = skb.ctx
    net = skb.ctx_net
    iph = skb.iph
    rt = skb.dst
    peer = inet_getpeer(net.icmp_peers, iph.saddr, ctx.now)
    if ctx.now > peer[PEER_LAST] + IP_RT_REDIRECT_SILENCE:     # silence resets the shared tokens too
        peer[PEER_TOKENS], peer[PEER_REDIRECTS] = 0.0, 0
    if peer[PEER_REDIRECTS] >= IP_RT_REDIRECT_NUMBER:
        peer[PEER_LAST] = ctx.now
        ctx.step("ip_rt_send_redirect", result="suppressed (redirect rate limit)")
        return
    if peer[PEER_REDIRECTS] and not ctx.now > peer[PEER_LAST] + IP_RT_REDIRECT_LOAD * (1 << peer[PEER_REDIRECTS]):
        ctx.step("ip_rt_send_redirect", result="suppressed (redirect backoff)")
        return
    peer[PEER_LAST] = ctx.now
    peer[PEER_REDIRECTS] += 1
    gw = rt.nexthop(iph.daddr)
    with ctx.nested():
        ctx.step("ip_rt_send_redirect", gateway=ntoa(gw))
        ctx.step("__icmp_send", type=ICMP_REDIRECT, code=ICMP_REDIR_HOST, to=ntoa(iph.saddr))
        if iph.frag_off & IP_OFFSET:      # __icmp_send answers fragment 0 only (the peer still counted it)
            ctx.step("__icmp_send", result="not sent: not the first fragment")
            return
        out_rt = ip_route_output(net, iph.saddr, 0, ctx=ctx)
        if out_rt.error:
            return
        quoted = (iph.pack() + bytes(skb.payload))[:548]
        msg = bytearray(struct.pack("!BBHI", ICMP_REDIRECT, ICMP_REDIR_HOST, 0, gw) + quoted)
        struct.pack_into("!H", msg, 2, icmp_checksum(bytes(msg)))
        src = net.inet_select_addr(skb.iif, iph.saddr, "link") if skb.iif else out_rt.prefsrc
        out = new_local_skb(ctx, out_rt, src, iph.saddr, IPPROTO_ICMP, bytes(msg),
                            tos=(iph.tos & 0x1E) | 0xC0, generated_by="ip_rt_send_redirect")
        _ct_attach(out, skb)
        ip_local_out(out)
