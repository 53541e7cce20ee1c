"""net/ipv4/tcp_input.c: segments for a full socket — tcp_rcv_established, tcp_rcv_state_process for
the closing states and SYN_SENT, sequence/RST/SYN checks, tcp_ack, tcp_data_queue, tcp_fin, and the
choice between an immediate and a delayed ACK.

The application is assumed to read promptly and never to send unless the capture shows it.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from pathtrace.net.core.skbuff import SkBuff, consume_skb, kfree_skb_reason
from pathtrace.net.ipv4.tcp_output import (
    tcp_send_ack, tcp_send_challenge_ack, tcp_send_delayed_ack, tcp_send_dupack,
)
from pathtrace.net.ipv4.tcp_sock import (
    SKB_TRUESIZE_SMALL, TCP_ACK, TCP_ATO_MIN, TCP_FIN, TCP_MAX_QUICKACKS, TCP_RST, TCP_SYN, TCP_TIMEWAIT_LEN,
    TcpConn, after, before, seq_add, tcp_parse_options,
)
from pathtrace.net.ipv4.tcp_timer import arm_timewait

if TYPE_CHECKING:  # pragma: no cover
    from pathtrace.trace import PacketContext

TCP_RTO_MIN = 0.200


class Seg:
    """TCP_SKB_CB: the fields of the segment being processed."""

    __slots__ = ("seq", "end_seq", "ack", "flags", "window", "paylen", "opts")

    def __init__(self, skb: SkBuff):
        data = skb.payload
        doff = (data[12] >> 4) * 4
        self.flags = data[13]
        self.seq, self.ack = struct.unpack_from("!II", data, 4)
        self.window = struct.unpack_from("!H", data, 14)[0]
        self.paylen = len(data) - doff
        self.end_seq = seq_add(self.seq, self.paylen + (1 if self.flags & TCP_SYN else 0)
                               + (1 if self.flags & TCP_FIN else 0))
        self.opts = tcp_parse_options(bytes(data[:doff]))


def tcp_set_state(ctx: "PacketContext", conn: TcpConn, state: str) -> None:
    if conn.state != state:
        ctx.step("tcp_set_state", old=conn.state, new=state)
        conn.state = state


def tcp_done(net, ctx: "PacketContext", conn: TcpConn) -> None:
    """The socket is closed: unhashed, its timers gone."""
    ctx.step("tcp_done")
    conn.state = "CLOSE"
    conn.delack_timer = conn.tw_timer = None
    net.tcp_conns.pop(conn.key, None)


def tcp_time_wait(net, ctx: "PacketContext", conn: TcpConn, substate: str, now: float) -> None:
    """The full socket becomes a timewait sock (TIME_WAIT, or FIN_WAIT2 of an orphan) for 60 s."""
    ctx.step("tcp_time_wait", state=substate)
    conn.state = "TIME_WAIT" if substate == "TIME_WAIT" else "FIN_WAIT2_TW"
    conn.delack_timer = None
    conn.ack_pending = False
    arm_timewait(net, conn, now + TCP_TIMEWAIT_LEN)


def _update_ts_recent(conn: TcpConn, seg: Seg) -> None:
    """tcp_replace_ts_recent: keep the peer's TSval of the segment at the left edge of the window."""
    if conn.tstamp_ok and seg.opts.tsval is not None and not after(seg.seq, conn.rcv_wup):
        conn.ts_recent = seg.opts.tsval


def tcp_paws_discard(conn: TcpConn, seg: Seg) -> bool:
    """PAWS: a timestamp older than ts_recent marks an old duplicate (RST exempt)."""
    if not conn.tstamp_ok or seg.opts.tsval is None or seg.flags & TCP_RST:
        return False
    older = (conn.ts_recent - seg.opts.tsval) & 0xFFFFFFFF
    return 1 < older < 0x80000000          # (s32)(ts_recent - tsval) > TCP_PAWS_WINDOW


def tcp_validate_incoming(net, ctx: "PacketContext", skb: SkBuff, conn: TcpConn, seg: Seg, now: float) -> bool:
    """PAWS, sequence window (tcp_sequence), RST (RFC 5961 exact match or challenge ACK), SYN (challenge)."""
    ctx.step("tcp_validate_incoming")
    if tcp_paws_discard(conn, seg):
        tcp_send_dupack(net, ctx, conn, seg.seq, seg.end_seq, now)
        kfree_skb_reason(skb, "TCP_RFC7323_PAWS")
        return False
    reason = None
    if before(seg.end_seq, conn.rcv_wup):
        reason = "TCP_OLD_SEQUENCE"
    elif after(seg.seq, seq_add(conn.rcv_nxt, conn.receive_window())):
        reason = "TCP_INVALID_SEQUENCE" if conn.receive_window() else "TCP_ZEROWINDOW"
    if reason is not None:
        ctx.step("tcp_sequence", result=reason, seq=seg.seq, rcv_nxt=conn.rcv_nxt)
        if not seg.flags & TCP_RST:
            if seg.flags & TCP_SYN:
                tcp_send_challenge_ack(net, ctx, conn, now)
                kfree_skb_reason(skb, "TCP_INVALID_SYN")
                return False
            tcp_send_dupack(net, ctx, conn, seg.seq, seg.end_seq, now)
        kfree_skb_reason(skb, reason)
        return False
    if seg.flags & TCP_RST:
        if seg.seq == conn.rcv_nxt:
            ctx.step("tcp_reset", state=conn.state)
            tcp_done(net, ctx, conn)
        else:
            tcp_send_challenge_ack(net, ctx, conn, now)
        kfree_skb_reason(skb, "TCP_RESET")
        return False
    if seg.flags & TCP_SYN:
        tcp_send_challenge_ack(net, ctx, conn, now)
        kfree_skb_reason(skb, "TCP_INVALID_SYN")
        return False
    return True


def tcp_ack(net, ctx: "PacketContext", skb: SkBuff, conn: TcpConn, seg: Seg, now: float) -> str | None:
    """Acknowledgment processing; a drop reason when the segment must be discarded."""
    ack = seg.ack
    if after(ack, conn.snd_nxt):
        if not conn.seen_sent:
            # the capture never showed this socket sending: what it acknowledges was sent unseen
            conn.snd_nxt = conn.write_seq = ack
        else:
            ctx.step("tcp_ack", ack=ack, snd_nxt=conn.snd_nxt, result="acknowledges data never sent")
            return "TCP_ACK_UNSENT_DATA"
    if before(ack, conn.snd_una):
        if before(ack, (conn.snd_una - conn.max_window) & 0xFFFFFFFF):
            tcp_send_challenge_ack(net, ctx, conn, now)
            return "TCP_TOO_OLD_ACK"
        ctx.step("tcp_ack", ack=ack, result="old ACK")
        return None
    if ctx.record:
        ctx.step("tcp_ack", ack=ack, acked=(ack - conn.snd_una) & 0xFFFFFFFF)
    conn.snd_una = ack
    conn.snd_wnd = seg.window << conn.snd_wscale
    conn.max_window = max(conn.max_window, conn.snd_wnd)
    return None


def tcp_event_data_recv(conn: TcpConn, seg: Seg, now: float) -> None:
    """Schedule an ACK and run the ATO estimator; the first data enters quick-ACK mode."""
    conn.ack_pending = True
    if seg.paylen >= conn.rcv_mss:
        conn.rcv_mss = min(seg.paylen, conn.advmss)
    if not conn.ato:
        tcp_incr_quickack(conn, TCP_MAX_QUICKACKS)
        conn.ato = TCP_ATO_MIN
    else:
        m = now - conn.lrcvtime
        if m <= TCP_ATO_MIN / 2:
            conn.ato = conn.ato / 2 + TCP_ATO_MIN / 2
        elif m < conn.ato:
            conn.ato = min(conn.ato / 2 + m, TCP_RTO_MIN)
        elif m > TCP_RTO_MIN:
            tcp_incr_quickack(conn, TCP_MAX_QUICKACKS)
    conn.lrcvtime = now


def tcp_incr_quickack(conn: TcpConn, max_quickacks: int) -> None:
    quickacks = conn.rcv_wnd // (2 * conn.rcv_mss) or 2
    if quickacks > conn.quick:
        conn.quick = min(quickacks, max_quickacks)


def tcp_enter_quickack_mode(conn: TcpConn, max_quickacks: int) -> None:
    tcp_incr_quickack(conn, max_quickacks)
    conn.pingpong = 0
    conn.ato = TCP_ATO_MIN


def tcp_fin(net, ctx: "PacketContext", conn: TcpConn, now: float) -> None:
    """The peer closed: CLOSE_WAIT (interactive mode, the ACK may wait), or on from our own FIN."""
    ctx.step("tcp_fin", state=conn.state)
    conn.ack_pending = True
    conn.rcv_shutdown = True
    if conn.state in ("SYN_RECV", "ESTABLISHED"):
        tcp_set_state(ctx, conn, "CLOSE_WAIT")
        conn.pingpong = max(conn.pingpong, 1)
    elif conn.state == "FIN_WAIT1":
        with ctx.nested():
            tcp_send_ack(net, ctx, conn, now)
        tcp_set_state(ctx, conn, "CLOSING")
    elif conn.state == "FIN_WAIT2":
        with ctx.nested():
            tcp_send_ack(net, ctx, conn, now)
        tcp_time_wait(net, ctx, conn, "TIME_WAIT", now)


def tcp_data_queue(net, ctx: "PacketContext", skb: SkBuff, conn: TcpConn, seg: Seg, now: float) -> None:
    """In-order data and FIN are queued; duplicates, out-of-window and out-of-order data are handled
    as the kernel does (D-SACK, quick ACK mode, the ofo queue)."""
    if seg.seq == seg.end_seq:
        consume_skb(skb, "LOCAL_DELIVER")
        return
    ctx.step("tcp_data_queue", seq=seg.seq, len=seg.paylen, rcv_nxt=conn.rcv_nxt)
    if seg.seq == conn.rcv_nxt:
        if not conn.receive_window() and seg.paylen:
            tcp_enter_quickack_mode(conn, TCP_MAX_QUICKACKS)
            conn.ack_pending = True
            kfree_skb_reason(skb, "TCP_ZEROWINDOW")
            return
        _queue_and_out(net, ctx, skb, conn, seg, now)
        return
    if not after(seg.end_seq, conn.rcv_nxt):
        ctx.step("tcp_rcv_spurious_retrans")
        if conn.sack_ok and net.sysctl.glob.get("tcp_dsack", 1):
            conn.dsack = (seg.seq, seg.end_seq)
            ctx.step("tcp_dsack_set", start=seg.seq, end=seg.end_seq)
        tcp_enter_quickack_mode(conn, TCP_MAX_QUICKACKS)
        conn.ack_pending = True
        kfree_skb_reason(skb, "TCP_OLD_DATA")
        return
    if not before(seg.seq, seq_add(conn.rcv_nxt, conn.receive_window())):
        tcp_enter_quickack_mode(conn, TCP_MAX_QUICKACKS)
        conn.ack_pending = True
        kfree_skb_reason(skb, "TCP_OVERWINDOW")
        return
    if before(seg.seq, conn.rcv_nxt):
        # partial overlap: D-SACK the old part, queue the rest
        if conn.sack_ok and net.sysctl.glob.get("tcp_dsack", 1):
            conn.dsack = (seg.seq, conn.rcv_nxt)
            ctx.step("tcp_dsack_set", start=seg.seq, end=conn.rcv_nxt)
        _queue_and_out(net, ctx, skb, conn, seg, now)
        return
    ctx.step("tcp_data_queue_ofo", seq=seg.seq, end_seq=seg.end_seq)
    conn.ack_pending = conn.ack_now = True
    for s, e in conn.ofo:
        if not before(seg.seq, s) and not after(seg.end_seq, e):
            kfree_skb_reason(skb, "TCP_OFOMERGE")
            return
    conn.ofo.insert(0, (seg.seq, seg.end_seq))
    skb.verdict = "LOCAL_DELIVER"


def _queue_and_out(net, ctx: "PacketContext", skb: SkBuff, conn: TcpConn, seg: Seg, now: float) -> None:
    ctx.step("tcp_queue_rcv", bytes=seg.paylen)
    conn.rcv_nxt = seg.end_seq
    if seg.paylen:
        tcp_event_data_recv(conn, seg, now)
        ctx.step("tcp_event_data_recv", quick=conn.quick, ato_ms=round(conn.ato * 1000))
    # the last skb queued stays charged to the receive buffer when the window is chosen (measured:
    # win 509 << 7 both right after data and in the FIN's delayed ACK, not the 510 of an empty buffer)
    conn.rmem = SKB_TRUESIZE_SMALL
    if seg.flags & TCP_FIN:
        tcp_fin(net, ctx, conn, now)
    if conn.ofo:
        _ofo_queue(ctx, conn)
    listener = conn.listener
    if listener is not None and hasattr(listener, "rx_packets"):
        listener.rx_packets += 1
    if conn.state in ("TIME_WAIT",):
        consume_skb(skb, "LOCAL_DELIVER")
        return
    skb.verdict = "LOCAL_DELIVER"


def _ofo_queue(ctx: "PacketContext", conn: TcpConn) -> None:
    """tcp_ofo_queue: move out-of-order ranges the new data reaches into the receive queue."""
    moved = True
    while moved:
        moved = False
        for rng in list(conn.ofo):
            s, e = rng
            if not after(s, conn.rcv_nxt):
                conn.ofo.remove(rng)
                if after(e, conn.rcv_nxt):
                    conn.rcv_nxt = e
                moved = True
    ctx.step("tcp_ofo_queue", rcv_nxt=conn.rcv_nxt)
    if not conn.ofo:
        conn.ack_now = True            # RFC 5681 4.2: ACK at once when the gap is filled


def tcp_in_quickack_mode(conn: TcpConn) -> bool:
    return bool(conn.quick) and not conn.pingpong


def tcp_ack_snd_check(net, ctx: "PacketContext", conn: TcpConn, now: float) -> None:
    """__tcp_ack_snd_check: ACK now (more than a full segment unacknowledged, quick-ACK mode, a
    mandated ACK, out-of-order data) or arm the delayed-ACK timer."""
    if not conn.ack_pending or net.tcp_conns.get(conn.key) is not conn:
        return
    ctx.step("__tcp_ack_snd_check", quick=conn.quick, pingpong=conn.pingpong)
    unacked = (conn.rcv_nxt - conn.rcv_wup) & 0xFFFFFFFF
    with ctx.nested():
        if unacked > conn.rcv_mss or tcp_in_quickack_mode(conn) or conn.ack_now or conn.ofo:
            tcp_send_ack(net, ctx, conn, now)
        else:
            tcp_send_delayed_ack(net, ctx, conn, now)


def tcp_rcv_established(net, ctx: "PacketContext", skb: SkBuff, conn: TcpConn, now: float) -> None:
    """Fast path for the predicted in-order segment, else the slow path with every check."""
    seg = Seg(skb)
    conn.last_event = now
    fast = (seg.seq == conn.rcv_nxt and not seg.flags & (TCP_SYN | TCP_RST | TCP_FIN | 0x20)
            and seg.flags & TCP_ACK and not after(seg.ack, conn.snd_nxt) and not before(seg.ack, conn.snd_una)
            and not conn.ofo and (seg.window << conn.snd_wscale) == conn.snd_wnd
            and (not conn.tstamp_ok or (seg.opts.tsval is not None and not tcp_paws_discard(conn, seg))))
    ctx.step("tcp_rcv_established", path="fast" if fast else "slow")
    if fast:
        _update_ts_recent(conn, seg)
        if not seg.paylen:
            tcp_ack(net, ctx, skb, conn, seg, now)
            consume_skb(skb, "LOCAL_DELIVER")
            return
        tcp_ack(net, ctx, skb, conn, seg, now)
        _queue_and_out(net, ctx, skb, conn, seg, now)
        tcp_ack_snd_check(net, ctx, conn, now)
        return
    if not seg.flags & (TCP_ACK | TCP_RST | TCP_SYN):
        kfree_skb_reason(skb, "TCP_FLAGS")
        return
    if not tcp_validate_incoming(net, ctx, skb, conn, seg, now):
        return
    reason = tcp_ack(net, ctx, skb, conn, seg, now)
    if reason is not None:
        kfree_skb_reason(skb, reason)
        return
    _update_ts_recent(conn, seg)
    tcp_data_queue(net, ctx, skb, conn, seg, now)
    tcp_ack_snd_check(net, ctx, conn, now)


def tcp_rcv_state_process(net, ctx: "PacketContext", skb: SkBuff, conn: TcpConn, now: float) -> None:
    """Segments for a socket past ESTABLISHED (FIN_WAIT1/2, CLOSING, CLOSE_WAIT, LAST_ACK) or in SYN_SENT."""
    seg = Seg(skb)
    conn.last_event = now
    ctx.step("tcp_rcv_state_process", state=conn.state)
    if conn.state == "SYN_SENT":
        tcp_rcv_synsent_state_process(net, ctx, skb, conn, seg, now)
        return
    if not seg.flags & (TCP_ACK | TCP_RST | TCP_SYN):
        kfree_skb_reason(skb, "TCP_FLAGS")
        return
    if not tcp_validate_incoming(net, ctx, skb, conn, seg, now):
        return
    reason = tcp_ack(net, ctx, skb, conn, seg, now)
    if reason is not None:
        tcp_send_challenge_ack(net, ctx, conn, now)
        kfree_skb_reason(skb, reason)
        return
    _update_ts_recent(conn, seg)
    fin_acked = conn.snd_fin and conn.snd_una == conn.write_seq
    if conn.state == "FIN_WAIT1" and fin_acked:
        tcp_set_state(ctx, conn, "FIN_WAIT2")
    elif conn.state == "CLOSING" and fin_acked:
        tcp_time_wait(net, ctx, conn, "TIME_WAIT", now)
        consume_skb(skb, "LOCAL_DELIVER")
        return
    elif conn.state == "LAST_ACK" and fin_acked:
        tcp_done(net, ctx, conn)
        consume_skb(skb, "LOCAL_DELIVER")
        return
    if conn.state in ("CLOSE_WAIT", "CLOSING", "LAST_ACK") and not before(seg.seq, conn.rcv_nxt):
        kfree_skb_reason(skb, "NOT_SPECIFIED")      # nothing more is accepted after the peer's FIN
        tcp_ack_snd_check(net, ctx, conn, now)
        return
    if conn.state in ("FIN_WAIT1", "FIN_WAIT2") and conn.rcv_shutdown and seg.paylen \
            and after(seq_add(seg.end_seq, -(1 if seg.flags & TCP_FIN else 0)), conn.rcv_nxt):
        ctx.step("tcp_reset", why="data after shutdown")
        from pathtrace.net.ipv4.tcp_ipv4 import _send_reset
        _send_reset(skb)
        tcp_done(net, ctx, conn)
        kfree_skb_reason(skb, "NOT_SPECIFIED")
        return
    tcp_data_queue(net, ctx, skb, conn, seg, now)
    if skb.verdict is None:
        consume_skb(skb, "LOCAL_DELIVER")
    tcp_ack_snd_check(net, ctx, conn, now)


def tcp_rcv_synsent_state_process(net, ctx: "PacketContext", skb: SkBuff, conn: TcpConn, seg: Seg,
                                  now: float) -> None:
    """The peer's answer to the host's SYN: a SYN-ACK for our ISN completes the connection and is
    ACKed at once; a wrong ACK gets a reset; an RST that acknowledges our SYN refuses it."""
    from pathtrace.net.ipv4.tcp_ipv4 import _send_reset
    flags = seg.flags
    ctx.step("tcp_rcv_synsent_state_process")
    if flags & TCP_ACK:
        if not after(seg.ack, conn.iss) or after(seg.ack, conn.snd_nxt):
            if not flags & TCP_RST:
                _send_reset(skb)
            kfree_skb_reason(skb, "TCP_INVALID_ACK_SEQUENCE" if not flags & TCP_RST else "TCP_RESET")
            return
        if flags & TCP_RST:
            ctx.step("tcp_reset", state="SYN_SENT")
            tcp_done(net, ctx, conn)
            kfree_skb_reason(skb, "TCP_RESET")
            return
        if not flags & TCP_SYN:
            kfree_skb_reason(skb, "TCP_FLAGS")
            return
        opts = seg.opts
        conn.irs = seg.seq
        conn.rcv_nxt = conn.rcv_wup = seq_add(seg.seq, 1)
        conn.snd_una = seg.ack
        if conn.wscale_ok and opts.wscale is not None:
            conn.snd_wscale = opts.wscale
        else:
            conn.wscale_ok = False
            conn.rcv_wscale = conn.snd_wscale = 0
        conn.snd_wnd = seg.window
        conn.tstamp_ok = conn.tstamp_ok and opts.tsval is not None
        if conn.tstamp_ok:
            conn.ts_recent = opts.tsval
        conn.sack_ok = conn.sack_ok and opts.sack_ok
        if opts.mss:
            conn.mss_clamp = min(opts.mss, conn.advmss)
        ctx.step("tcp_finish_connect")
        tcp_set_state(ctx, conn, "ESTABLISHED")
        conn.rcv_mss = min(conn.advmss, 536)
        with ctx.nested():
            tcp_send_ack(net, ctx, conn, now)
        consume_skb(skb, "LOCAL_DELIVER")
        return
    if flags & TCP_RST:
        kfree_skb_reason(skb, "TCP_RESET")
        return
    if flags & TCP_SYN:
        # simultaneous open: answer with SYN-ACK (rare; the model keeps SYN_RECV)
        conn.irs = seg.seq
        conn.rcv_nxt = conn.rcv_wup = seq_add(seg.seq, 1)
        tcp_set_state(ctx, conn, "SYN_RECV")
        consume_skb(skb, "LOCAL_DELIVER")
        return
    kfree_skb_reason(skb, "TCP_FLAGS")


def tcp_timewait_state_process(net, ctx: "PacketContext", skb: SkBuff, conn: TcpConn, now: float) -> str:
    """A segment for a timewait sock: TW_ACK (re-ACK a retransmitted FIN or an out-of-window segment),
    TW_SYN (a new connection may reuse the pair), TW_SUCCESS (bare ACK, RST kills the sock)."""
    seg = Seg(skb)
    ctx.step("tcp_timewait_state_process", state="TIME_WAIT" if conn.state == "TIME_WAIT" else "FIN_WAIT2")
    flags = seg.flags
    if conn.state == "FIN_WAIT2_TW":
        if flags & TCP_FIN and seg.seq == conn.rcv_nxt and seg.paylen == 0:
            conn.state = "TIME_WAIT"
            conn.rcv_nxt = seg.end_seq
            arm_timewait(net, conn, now + TCP_TIMEWAIT_LEN)
            return "TCP_TW_ACK"
        if flags & TCP_RST or seg.paylen:
            return "TCP_TW_RST"
        return "TCP_TW_SUCCESS"
    paws = tcp_paws_discard(conn, seg)
    if not paws and seg.seq == conn.rcv_nxt and (seg.seq == seg.end_seq or flags & TCP_RST):
        if flags & TCP_RST:
            ctx.step("inet_twsk_deschedule_put")
            net.tcp_conns.pop(conn.key, None)
        else:
            arm_timewait(net, conn, now + TCP_TIMEWAIT_LEN)
        return "TCP_TW_SUCCESS"
    if flags & TCP_SYN and not flags & (TCP_RST | TCP_ACK) and not paws and after(seg.seq, conn.rcv_nxt):
        return "TCP_TW_SYN"
    if not flags & TCP_RST:
        if paws or flags & TCP_ACK:
            arm_timewait(net, conn, now + TCP_TIMEWAIT_LEN)
        if conn.last_oow_ack >= 0 and now - conn.last_oow_ack < 0.5:
            return "TCP_TW_SUCCESS"
        conn.last_oow_ack = now
        return "TCP_TW_ACK"
    return "TCP_TW_SUCCESS"
