"""net/ipv4/tcp_minisocks.c: a request sock meets the segments that follow its SYN (tcp_check_req)
and becomes a full socket (tcp_create_openreq_child).

The request sock's ISN and timestamp offset are provisional (the kernel draws them from a
secret): the peer's first ACK tells the real ISN (ack - 1) and its TSecr the real TSval, and
the model adopts them instead of resetting a handshake the real host completed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pathtrace.net.core.skbuff import SkBuff, consume_skb, kfree_skb_reason
from pathtrace.net.ipv4.tcp_input import Seg
from pathtrace.net.ipv4.tcp_sock import TCP_ACK, TCP_RST, TCP_SYN, TcpConn, after, before, seq_add

if TYPE_CHECKING:  # pragma: no cover
    from pathtrace.trace import PacketContext


def tcp_check_req(net, ctx: "PacketContext", skb: SkBuff, conn: TcpConn, now: float) -> None:
    """A segment for a request sock (SYN_RECV)."""
    from pathtrace.net.ipv4.tcp_ipv4 import _send_reset, tcp_v4_send_ack, tcp_v4_send_synack
    seg = Seg(skb)
    flags = seg.flags
    ctx.step("tcp_check_req")
    if seg.seq == seq_add(conn.rcv_nxt, -1) and flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN:
        # a retransmitted SYN: the request sock sends its SYN-ACK again (inet_rtx_syn_ack)
        if conn.last_oow_ack >= 0 and now - conn.last_oow_ack < 0.5:
            ctx.step("tcp_check_req", result="SYN-ACK retransmission rate limited (tcp_oow_rate_limited)")
        else:
            conn.last_oow_ack = now
            ctx.step("tcp_rtx_synack", num_retrans=conn.num_retrans)
            if tcp_v4_send_synack(skb, conn) == 0:
                # the timer restarts from now (mod_timer_pending: only while it is still pending)
                conn.num_retrans += 1
                conn.synack_at = now
                if conn.rsk_timer is not None:
                    from pathtrace.net.ipv4.tcp_timer import arm_reqsk, tcp_reqsk_timeout
                    arm_reqsk(net, conn, now, tcp_reqsk_timeout(conn))
        kfree_skb_reason(skb, "NOT_SPECIFIED")
        return
    if flags & TCP_ACK and seg.ack != seq_add(conn.iss, 1):
        if conn.iss_provisional and not flags & (TCP_RST | TCP_SYN):
            conn.iss = seq_add(seg.ack, -1)
            conn.snd_una = conn.snd_nxt = conn.write_seq = seg.ack
            ctx.step("tcp_check_req", adopted_isn=conn.iss, why="the peer acknowledges the real host's ISN")
        else:
            # not for this request sock: the listener answers (tcp_rcv_state_process LISTEN → reset)
            ctx.step("tcp_v4_do_rcv", state="LISTEN")
            ctx.step("tcp_rcv_state_process", state="LISTEN")
            _send_reset(skb)
            kfree_skb_reason(skb, "TCP_FLAGS")
            return
    conn.iss_provisional = False
    window = conn.rcv_wnd
    in_window = not before(seg.end_seq, conn.rcv_nxt) and not after(seg.seq, seq_add(conn.rcv_nxt, window))
    if not in_window:
        if not flags & TCP_RST:
            if conn.last_oow_ack < 0 or now - conn.last_oow_ack >= 0.5:
                conn.last_oow_ack = now
                tcp_v4_send_ack(skb, conn, now)
        kfree_skb_reason(skb, "NOT_SPECIFIED")
        return
    if flags & (TCP_RST | TCP_SYN):
        # embryonic reset: a SYN in the window gets a reset; either way the request sock is freed
        if not flags & TCP_RST:
            _send_reset(skb)
        ctx.step("inet_csk_reqsk_queue_drop_and_put")
        net.tcp_conns.pop(conn.key, None)
        kfree_skb_reason(skb, "NOT_SPECIFIED")
        return
    if not flags & TCP_ACK:
        kfree_skb_reason(skb, "NOT_SPECIFIED")
        return
    if conn.tstamp_ok and seg.opts.tsval is not None and conn.ts_provisional:
        # the peer echoes the TSval the real host put in its SYN-ACK
        conn.ts_off = (seg.opts.tsecr - int(conn.synack_at * 1000)) & 0xFFFFFFFF
        conn.ts_provisional = False
    ctx.step("tcp_v4_syn_recv_sock")
    tcp_create_openreq_child(ctx, conn, seg)
    ctx.step("inet_csk_complete_hashdance")
    ctx.step("tcp_child_process")
    ctx.step("tcp_rcv_state_process", state="SYN_RECV")
    conn.state = "ESTABLISHED"
    conn.rsk_timer = None                 # inet_csk_reqsk_queue_drop deleted the request's timer
    ctx.step("tcp_set_state", old="SYN_RECV", new="ESTABLISHED")
    ctx.step("tcp_init_transfer")
    conn.snd_una = seg.ack
    conn.snd_wnd = seg.window << conn.snd_wscale
    conn.max_window = conn.snd_wnd
    if conn.tstamp_ok and seg.opts.tsval is not None:
        conn.ts_recent = seg.opts.tsval
    conn.last_event = now
    from pathtrace.net.ipv4.tcp_input import tcp_ack_snd_check, tcp_data_queue
    tcp_data_queue(net, ctx, skb, conn, seg, now)
    if skb.verdict is None:
        consume_skb(skb, "LOCAL_DELIVER")
    tcp_ack_snd_check(net, ctx, conn, now)


def tcp_create_openreq_child(ctx: "PacketContext", conn: TcpConn, seg: Seg) -> None:
    """The child inherits the request's negotiated options; its delayed-ACK engine starts cold."""
    ctx.step("tcp_create_openreq_child")
    conn.rcv_wup = conn.rcv_nxt
    conn.rcv_mss = max(88, min(conn.advmss, conn.rcv_wnd // 2, 536))
    conn.quick = 0
    conn.ato = 0.0
    conn.pingpong = 0
    conn.last_oow_ack = -1.0



def tcp_adopt_isn(net, conn: TcpConn, isn: int) -> None:
    """The capture shows the host's real ISN (its SYN-ACK, or the peer's first ACK): the request sock
    and conntrack's view of the SYN-ACK the model sent with a placeholder take it."""
    from pathtrace.net.netfilter.nf_conntrack_proto_tcp import nf_ct_tcp_shift_seq
    from pathtrace.net.netfilter.nf_conntrack_tuple import Tuple
    delta = (isn - conn.iss) & 0xFFFFFFFF
    conn.iss = isn
    conn.snd_una = conn.snd_nxt = conn.write_seq = seq_add(isn, 1)
    conn.iss_provisional = False
    table = getattr(net.nf, "conntrack", None) if net.nf is not None else None
    if table is None or not delta:
        return
    peer, pport, local, lport = conn.key
    hit = table.hash.get(Tuple(local, peer, 6, lport, pport))
    if hit is not None:
        nf_ct_tcp_shift_seq(hit[0], hit[1], delta)


def tcp_adopt_isn_before_rcv(net, l3: bytes) -> None:
    """Before an ACK for a request sock whose ISN is still a placeholder enters the stack (and its
    conntrack check): the ISN it acknowledges is the real host's."""
    ihl = (l3[0] & 15) * 4
    if len(l3) < ihl + 14 or l3[9] != 6 or int.from_bytes(l3[6:8], "big") & 0x3FFF:
        return
    tcp = l3[ihl:]
    if tcp[13] & (TCP_SYN | TCP_RST | TCP_ACK) != TCP_ACK:
        return
    key = (int.from_bytes(l3[12:16], "big"), int.from_bytes(tcp[0:2], "big"),
           int.from_bytes(l3[16:20], "big"), int.from_bytes(tcp[2:4], "big"))
    conn = net.tcp_conns.get(key)
    if conn is None or conn.state != "SYN_RECV" or not conn.iss_provisional:
        return
    ack = int.from_bytes(tcp[8:12], "big")
    if ack != seq_add(conn.iss, 1):
        tcp_adopt_isn(net, conn, seq_add(ack, -1))
