"""net/ipv4/tcp_timer.c, inet_timewait_sock.c and inet_connection_sock.c: the delayed-ACK timer, timewait
expiry and the request sock's SYN-ACK retransmit timer (reqsk_timer_handler), on capture time.

Timers lower the namespace's TimerClock (net.neigh.clock) like neighbour timers, so the
replay stops serving cached paths once one is due and fires it (Replayer._run_timers)
before the first packet whose capture time is past it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from pathtrace.net.ipv4.tcp_sock import TcpConn
    from pathtrace.trace import PacketContext

from pathtrace.net.ipv4.tcp_sock import TCP_ATO_MIN

INF = float("inf")
TCP_RTO_MIN = 0.200
from pathtrace.kernel.time.timer import timer_expiry

TCP_RTO_MAX = 120.0
TCP_TIMEOUT_INIT = 1.0       # req->timeout: the first SYN-ACK retransmit, doubled on each one after
# The timer wheel never fires a timer early: calc_index rounds the expiry up to the next granule of its
# level (at least one jiffy; 32 ms for 1-2 s and 256 ms for 4-16 s at HZ=250).  Where in the granule the
# deadline falls depends on jiffies the capture does not show, so the model takes the minimum, one
# jiffy (HZ=250 as on the reference kernel): a retransmit is never modelled at or before its nominal time.
TIMER_TICK = 0.004


def _lower(net, when: float) -> None:
    clock = net.neigh.clock
    if when < clock.tcp:
        clock.tcp = when
    clock.arm(when)


def arm_delack(net, conn: "TcpConn", when: float) -> None:
    """sk_reset_timer(ICSK_TIME_DACK): keep an earlier deadline that is already set (tcp_send_delayed_ack)."""
    if conn.delack_timer is not None and conn.delack_timer <= when:
        return
    conn.delack_timer = when
    _lower(net, when)


def arm_timewait(net, conn: "TcpConn", when: float) -> None:
    """inet_twsk_schedule / inet_twsk_reschedule."""
    conn.tw_timer = when
    _lower(net, when)


def arm_reqsk(net, conn: "TcpConn", now: float, timeout: float) -> None:
    """mod_timer(&req->rsk_timer, jiffies + timeout): set (or move) the request sock's SYN-ACK
    retransmit deadline where the timer wheel puts it (kernel/time/timer.py: 1.004-1.032 s for the
    first, then 2.016.., 4.0-4.256 s: the 4.224 and 8.192 s a 6.18 kernel showed)."""
    conn.rsk_timer = timer_expiry(now, timeout)
    _lower(net, conn.rsk_timer)


def tcp_reqsk_timeout(conn: "TcpConn") -> float:
    """tcp_reqsk_timeout: TCP_TIMEOUT_INIT doubled for every time the timer fired, capped at TCP_RTO_MAX."""
    return min(TCP_TIMEOUT_INIT * (1 << min(conn.num_timeout, 16)), TCP_RTO_MAX)


def _timers(conn: "TcpConn") -> tuple:
    return (("delack", conn.delack_timer), ("timewait", conn.tw_timer), ("reqsk", conn.rsk_timer))


def next_due(net, now: float) -> "tuple[float, str, TcpConn] | None":
    """The earliest TCP timer due by `now` (None if none); recomputes the clock's TCP minimum."""
    clock = net.neigh.clock
    if now < clock.tcp:
        return None
    best = None
    low = INF
    for conn in net.tcp_conns.values():
        for kind, when in _timers(conn):
            if when is None:
                continue
            low = min(low, when)
            if when <= now and (best is None or when < best[0]):
                best = (when, kind, conn)
    clock.tcp = low
    if low < clock.earliest:
        clock.earliest = low
    return best


def run_timer(net, ctx: "PacketContext", due: "tuple[float, str, TcpConn]") -> None:
    """Fire one timer: the delayed ACK goes out, an expired timewait sock is freed."""
    when, kind, conn = due
    if kind == "delack":
        conn.delack_timer = None
        tcp_delack_timer(net, ctx, conn, when)
    elif kind == "reqsk":
        conn.rsk_timer = None
        reqsk_timer_handler(net, ctx, conn, when)
    else:
        conn.tw_timer = None
        ctx.step("tw_timer_handler", state=conn.state)
        ctx.step("inet_twsk_kill")
        net.tcp_conns.pop(conn.key, None)
    clock = net.neigh.clock
    clock.tcp = min((w for c in net.tcp_conns.values() for _, w in _timers(c) if w is not None), default=INF)


def reqsk_timer_handler(net, ctx: "PacketContext", conn: "TcpConn", when: float) -> None:
    """The request sock's timer: while retries are left (the listener's TCP_SYNCNT or
    net.ipv4.tcp_synack_retries) the SYN-ACK goes out again (tcp_rtx_synack) and the timer is re-armed
    with the doubled timeout; after the last one, or when the SYN-ACK cannot be sent, the request sock
    is dropped (inet_csk_reqsk_queue_drop_and_put).  A request sock already gone or grown into a full
    socket has no timer any more (inet_csk_reqsk_queue_drop deleted it)."""
    from pathtrace.net.ipv4.tcp_ipv4 import tcp_v4_send_synack_req
    if net.tcp_conns.get(conn.key) is not conn or conn.state != "SYN_RECV":
        return
    max_retries = net.sysctl.glob.get("tcp_synack_retries", 5)
    ctx.step("reqsk_timer_handler", at=round(when, 6), num_timeout=conn.num_timeout, max_retries=max_retries)
    with ctx.nested():
        # syn_ack_recalc without TCP_DEFER_ACCEPT: expire once num_timeout reaches the retries
        expire = conn.num_timeout >= max_retries
        ctx.step("tcp_syn_ack_timeout")
        if not expire:
            ctx.step("tcp_rtx_synack", num_retrans=conn.num_retrans)
            if tcp_v4_send_synack_req(net, ctx, conn, when) == 0:
                conn.num_retrans += 1
                conn.synack_at = when
                conn.num_timeout += 1
                arm_reqsk(net, conn, when, tcp_reqsk_timeout(conn))
                return
        ctx.step("inet_csk_reqsk_queue_drop_and_put",
                 why="SYN-ACK retries exhausted" if expire else "the SYN-ACK could not be sent")
        net.tcp_conns.pop(conn.key, None)


def tcp_delack_timer(net, ctx: "PacketContext", conn: "TcpConn", when: float) -> None:
    """tcp_delack_timer → tcp_delack_timer_handler: send the ACK still owed (the connection may be gone)."""
    from pathtrace.net.ipv4.tcp_output import tcp_send_ack
    if net.tcp_conns.get(conn.key) is not conn or not conn.ack_pending:
        return
    ctx.step("tcp_delack_timer", at=round(when, 6))
    ctx.step("tcp_delack_timer_handler")
    if conn.pingpong:
        # the application did not answer within ato: leave interactive mode (inet_csk_exit_pingpong_mode)
        conn.pingpong = 0
        conn.ato = TCP_ATO_MIN
    else:
        conn.ato = min(conn.ato * 2, TCP_RTO_MIN)      # delayed ACK missed: inflate ATO (capped by the RTO)
    with ctx.nested():
        tcp_send_ack(net, ctx, conn, when)

