"""net/ipv4/tcp_output.c: SYN-ACK options and window, the ACKs a socket sends, and the send path of
segments the capture shows the host's applications sending.

Window arithmetic follows tcp_select_initial_window and __tcp_select_window with the
defaults of a new namespace (tcp_rmem 4096 131072 6291456, rmem_max 212992) and an
application that reads promptly; measured against a 6.18 kernel (tests/test_tcp_sockets.py).
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from pathtrace.lib.checksum import l4_checksum
from pathtrace.net.core.skbuff import IP_DF, IPPROTO_TCP, Iphdr, SkBuff
from pathtrace.net.ipv4.tcp_sock import (
    RMEM_MAX, TCP_ACK, TCP_DELACK_MIN, TCP_ECE, TCP_FIN, TCP_RMEM, TCP_RST, TCP_SYN, TCPOPT_NOP, TCPOPT_SACK,
    TCPOPT_SACK_PERM, TCPOPT_TIMESTAMP, TCPOPT_WINDOW, TcpConn, after,
)
from pathtrace.net.ipv4.tcp_timer import arm_delack

if TYPE_CHECKING:  # pragma: no cover
    from pathtrace.trace import PacketContext

U16_MAX = 0xFFFF


def tcp_win_from_space(space: int) -> int:
    """tcp_win_from_space with the default scaling_ratio (half of the buffer is payload)."""
    return space >> 1


def tcp_full_space(conn: TcpConn) -> int:
    return tcp_win_from_space(conn.tcp_rmem[1])


def tcp_select_initial_window(space: int, mss: int, wscale_ok: bool, rmem_max: int = TCP_RMEM[2]
                              ) -> tuple[int, int, int]:
    """(rcv_wnd, rcv_wscale, window_clamp): the space rounded down to whole segments, and the
    smallest shift that lets the largest buffer (tcp_rmem[2] or rmem_max) be announced."""
    window_clamp = U16_MAX << 14
    space = min(window_clamp, space)
    if space > mss:
        space = (space // mss) * mss
    rcv_wnd = min(space, U16_MAX)
    wscale = 0
    if wscale_ok:
        big = min(max(rmem_max, RMEM_MAX), window_clamp)
        while big > U16_MAX and wscale < 14:
            big >>= 1
            wscale += 1
    return rcv_wnd, wscale, min(U16_MAX << wscale, window_clamp)


def tcp_openreq_init_rwin(conn: TcpConn, advmss: int) -> None:
    """The request sock's receive window: the listener's full space in segments of the MSS we
    advertise less the timestamp option (the peer's MSS only clamps what we send)."""
    conn.advmss = advmss
    mss = advmss - (12 if conn.tstamp_ok else 0)
    conn.rcv_wnd, conn.rcv_wscale, conn.window_clamp = tcp_select_initial_window(
        tcp_full_space(conn), mss, conn.wscale_ok, conn.tcp_rmem[2])
    conn.rcv_ssthresh = conn.rcv_wnd
    if not conn.wscale_ok:
        conn.rcv_wscale = 0


def tcp_synack_options(conn: TcpConn, tsval: int) -> bytes:
    """Options of a SYN-ACK in tcp_options_write's order: MSS; SACK_PERM folded into the timestamp
    word (or NOP NOP SACK_PERM, or NOP NOP TS); NOP WSCALE."""
    out = struct.pack("!BBH", 2, 4, conn.advmss)
    if conn.tstamp_ok:
        lead = bytes((TCPOPT_SACK_PERM, 2)) if conn.sack_ok else bytes((TCPOPT_NOP, TCPOPT_NOP))
        out += lead + struct.pack("!BBII", TCPOPT_TIMESTAMP, 10, tsval, conn.ts_recent)
    elif conn.sack_ok:
        out += bytes((TCPOPT_NOP, TCPOPT_NOP, TCPOPT_SACK_PERM, 2))
    if conn.wscale_ok:
        out += bytes((TCPOPT_NOP, TCPOPT_WINDOW, 3, conn.rcv_wscale))
    return out


def tcp_make_synack(conn: TcpConn, now: float) -> bytes:
    """The SYN-ACK's TCP header (checksum left 0); its window is never scaled."""
    peer, pport, local, lport = conn.key
    opts = tcp_synack_options(conn, conn.tsval(now))
    flags = TCP_SYN | TCP_ACK | (TCP_ECE if conn.ecn_ok else 0)
    return struct.pack("!HHIIBBHHH", lport, pport, conn.iss, conn.rcv_nxt, (5 + len(opts) // 4) << 4, flags,
                       min(conn.rcv_wnd, U16_MAX), 0, 0) + opts


def __tcp_select_window(conn: TcpConn) -> int:
    """Free receive space, capped by rcv_ssthresh; with window scaling rounded up to the scale unit."""
    free = tcp_win_from_space(conn.tcp_rmem[1] - conn.rmem)
    full = min(conn.window_clamp, tcp_full_space(conn))
    mss = min(conn.rcv_mss, full)
    if free < full // 2 and free < mss:
        return 0
    free = min(free, conn.rcv_ssthresh)
    if conn.rcv_wscale:
        unit = 1 << conn.rcv_wscale
        return (free + unit - 1) // unit * unit
    window = conn.rcv_wnd
    if window <= free - mss or window > free:
        window = free // mss * mss
    return window


def tcp_select_window(conn: TcpConn) -> int:
    """Never shrink the offered window; remember what was offered (rcv_wnd, rcv_wup); scale it."""
    if conn.last_window is not None:
        # the host's last captured segment shows the window its application's reading leaves
        new = conn.last_window << conn.rcv_wscale
    else:
        new = __tcp_select_window(conn)
    cur = conn.receive_window()
    new = max(new, cur)
    conn.rcv_wnd = new
    conn.rcv_wup = conn.rcv_nxt
    return min(new, U16_MAX << conn.rcv_wscale) >> conn.rcv_wscale


def _ack_options(conn: TcpConn, now: float) -> bytes:
    out = b""
    if conn.tstamp_ok:
        out += struct.pack("!BBBBII", TCPOPT_NOP, TCPOPT_NOP, TCPOPT_TIMESTAMP, 10, conn.tsval(now), conn.ts_recent)
    blocks = []
    if conn.sack_ok and conn.dsack is not None:
        blocks.append(conn.dsack)
    if conn.sack_ok:
        blocks += conn.ofo
    if blocks:
        blocks = blocks[:3 if conn.tstamp_ok else 4]
        out += bytes((TCPOPT_NOP, TCPOPT_NOP, TCPOPT_SACK, 2 + 8 * len(blocks)))
        out += b"".join(struct.pack("!II", s, e) for s, e in blocks)
    conn.dsack = None
    return out


def build_segment(conn: TcpConn, now: float, flags: int, seq: int, payload: bytes = b"") -> bytes:
    """A TCP header as __tcp_transmit_skb writes it for an established socket (checksum filled)."""
    peer, pport, local, lport = conn.key
    opts = _ack_options(conn, now) if not flags & TCP_RST else b""
    window = tcp_select_window(conn) if not flags & TCP_RST else 0
    hdr = bytearray(struct.pack("!HHIIBBHHH", lport, pport, seq, conn.rcv_nxt if flags & TCP_ACK else 0,
                                (5 + len(opts) // 4) << 4, flags, window, 0, 0) + opts + payload)
    struct.pack_into("!H", hdr, 16, l4_checksum(local, peer, IPPROTO_TCP, bytes(hdr)))
    return bytes(hdr)


def _xmit(net, ctx: "PacketContext", conn: TcpConn, segment: bytes, generated_by: str) -> None:
    """Hand a segment the socket built to ip_queue_xmit (IP ID from the socket's counter, DF set)."""
    from pathtrace.net.ipv4.ip_output import ip_queue_xmit
    peer, _pport, local, _lport = conn.key
    iph = Iphdr(4, 5, conn.tos, 20 + len(segment), conn.ip_id, IP_DF, net.sysctl.glob["ip_default_ttl"],
                IPPROTO_TCP, 0, local, peer)
    conn.ip_id = (conn.ip_id + 1) & 0xFFFF
    skb = SkBuff(ctx=ctx, iph=iph, payload=bytearray(segment), mark=conn.mark, tstamp=ctx.now,
                 generated_by=generated_by, sk=conn)
    ip_queue_xmit(skb)


def tcp_event_ack_sent(conn: TcpConn) -> None:
    """An ACK left: one quick ACK used up, the delayed-ACK timer cleared."""
    if conn.quick and conn.ack_pending:
        conn.quick -= 1
        if not conn.quick:
            conn.ato = TCP_DELACK_MIN
    conn.ack_pending = conn.ack_now = False
    conn.delack_timer = None


def tcp_send_ack(net, ctx: "PacketContext", conn: TcpConn, now: float) -> None:
    """tcp_send_ack → __tcp_send_ack → __tcp_transmit_skb: a bare ACK at snd_nxt."""
    ctx.step("tcp_send_ack", ack=conn.rcv_nxt)
    ctx.step("__tcp_send_ack")
    ctx.step("__tcp_transmit_skb")
    segment = build_segment(conn, now, TCP_ACK, conn.snd_nxt)
    tcp_event_ack_sent(conn)
    _xmit(net, ctx, conn, segment, "tcp_send_ack")


def tcp_send_delayed_ack(net, ctx: "PacketContext", conn: TcpConn, now: float) -> None:
    """Arm the delayed-ACK timer ato from now (ato capped at 500 ms in interactive mode)."""
    ato = conn.ato
    if ato > TCP_DELACK_MIN:
        ato = min(ato, 0.5 if conn.pingpong else 0.2)
    when = now + ato
    ctx.step("tcp_send_delayed_ack", ato_ms=round(ato * 1000), at=round(when, 6))
    arm_delack(net, conn, when)


def tcp_send_dupack(net, ctx: "PacketContext", conn: TcpConn, seq: int, end_seq: int, now: float) -> None:
    """A segment that is not new data: ACK it at once (D-SACK for a duplicate, tcp_dsack_set)."""
    ctx.step("tcp_send_dupack")
    if end_seq != seq and not after(end_seq, conn.rcv_nxt) and conn.sack_ok \
            and net.sysctl.glob.get("tcp_dsack", 1):
        conn.dsack = (seq, end_seq)
        ctx.step("tcp_dsack_set", start=seq, end=end_seq)
    conn.quick = max(conn.quick, 16)
    with ctx.nested():
        tcp_send_ack(net, ctx, conn, now)


def tcp_send_challenge_ack(net, ctx: "PacketContext", conn: TcpConn, now: float) -> None:
    """RFC 5961 challenge ACK, limited to one per 500 ms per socket (tcp_oow_rate_limited)."""
    if conn.last_oow_ack >= 0 and now - conn.last_oow_ack < 0.5:
        ctx.step("tcp_send_challenge_ack", result="rate limited (tcp_oow_rate_limited)")
        return
    conn.last_oow_ack = now
    ctx.step("tcp_send_challenge_ack")
    with ctx.nested():
        tcp_send_ack(net, ctx, conn, now)


def tcp_sendmsg_from_capture(skb: SkBuff) -> None:
    """A segment the capture shows the host sending that the model did not predict: the send path
    of the socket that sent it (connect, sendmsg, close, abort), its state updated, then the
    segment itself (bytes as captured) through ip_queue_xmit."""
    from pathtrace.net.ipv4.ip_output import ip_queue_xmit
    from pathtrace.net.ipv4.tcp_ipv4 import tcp_observe_segment
    ctx = skb.ctx
    net = ctx.net
    iph = skb.iph
    data = bytes(skb.payload)
    if len(data) < 20:
        ctx.step("tcp_sendmsg", result=f"short TCP header ({len(data)} bytes)")
        skb.verdict, skb.reason = "DROP", "PKT_TOO_SMALL"
        return
    flags = data[13]
    doff = (data[12] >> 4) * 4
    key = (iph.daddr, struct.unpack_from("!H", data, 2)[0], iph.saddr, struct.unpack_from("!H", data, 0)[0])
    conn = net.tcp_conns.get(key)
    paylen = len(data) - doff
    if flags & TCP_SYN and not flags & TCP_ACK:
        ctx.step("__sys_connect")
        ctx.step("tcp_v4_connect", to=f"{_ntoa(iph.daddr)}:{key[1]}")
        ctx.step("tcp_connect")
        ctx.step("tcp_transmit_skb")
        ctx.step("__tcp_transmit_skb")
    elif flags & TCP_RST:
        ctx.step("tcp_disconnect" if conn is not None else "tcp_v4_send_reset")
        if conn is not None:
            ctx.step("tcp_send_active_reset")
    elif flags & TCP_FIN and not paylen:
        ctx.step("inet_shutdown" if conn is not None and not conn.rcv_shutdown else "tcp_close")
        ctx.step("tcp_send_fin")
        ctx.step("__tcp_push_pending_frames")
        ctx.step("tcp_write_xmit")
        ctx.step("__tcp_transmit_skb")
    elif paylen:
        ctx.step("tcp_sendmsg", bytes=paylen)
        ctx.step("tcp_sendmsg_locked")
        ctx.step("tcp_push")
        ctx.step("__tcp_push_pending_frames")
        ctx.step("tcp_write_xmit")
        ctx.step("__tcp_transmit_skb")
    else:
        ctx.step("__tcp_transmit_skb", result="segment the model did not predict")
    conn = tcp_observe_segment(net, key, data, paylen, ctx.now, iph=iph, sending=True)
    if conn is not None:
        skb.sk = conn
    ip_queue_xmit(skb)


def _ntoa(a: int) -> str:
    from pathtrace.lib.inet import ntoa
    return ntoa(a)

