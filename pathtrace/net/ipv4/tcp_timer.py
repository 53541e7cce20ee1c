"""net/ipv4/tcp_timer.c and inet_timewait_sock.c: the delayed-ACK timer and timewait expiry, on capture time.

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


def next_due(net, now: float) -> "tuple[float, str, TcpConn] | None":
    """The earliest TCP timer due by `now` (None if none); recomputes the clock's TCP minimum."""
    clock = net.neigh.clock
    if now < clock.tcp:
        return None
    best = None
    low = INF
    for conn in net.tcp_conns.values():
        for kind, when in (("delack", conn.delack_timer), ("timewait", conn.tw_timer)):
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
    else:
        conn.tw_timer = None
        ctx.step("tw_timer_handler", state=conn.state)
        ctx.step("inet_twsk_kill")
        net.tcp_conns.pop(conn.key, None)
    clock = net.neigh.clock
    clock.tcp = min((w for c in net.tcp_conns.values() for w in (c.delack_timer, c.tw_timer) if w is not None),
                    default=INF)


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

