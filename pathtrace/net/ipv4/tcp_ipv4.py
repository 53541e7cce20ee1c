"""net/ipv4/tcp_ipv4.c: socket lookup, listeners answering SYNs, resets for closed ports, and the
entry points the replay uses for segments the capture shows the host sending.

Listeners come from the host file.  A SYN creates a request sock and a SYN-ACK with the
options tcp_synack_options builds; the ACK that completes the handshake creates an
established child (tcp_minisocks.py), whose later segments go through tcp_input.py and get
the kernel's ACKs (tcp_output.py).  Values the kernel draws at random are taken from the
capture: `tcp_observe_sent` for every segment the host sent, `tcp_sendmsg_from_capture`
for those the model did not predict.
"""
from __future__ import annotations

import struct

from pathtrace.lib.checksum import l4_checksum
from pathtrace.lib.inet import ntoa
from pathtrace.net.core.skbuff import IPPROTO_TCP, PACKET_HOST, SkBuff, consume_skb, kfree_skb_reason
from pathtrace.net.ipv4.icmp import ip4_reply_mark
from pathtrace.net.ipv4.tcp_output import tcp_sendmsg_from_capture  # noqa: F401  (replay entry point)
from pathtrace.net.ipv4.tcp_sock import (
    TCP_ACK, TCP_CWR, TCP_ECE, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TcpConn, after, provisional, seq_add,
    tcp_parse_options,
)

__all__ = ["TCP_FIN", "TCP_SYN", "TCP_RST", "TCP_PSH", "TCP_ACK", "TcpConn", "tcp_v4_rcv", "tcp_observe_sent",
           "tcp_sendmsg_from_capture", "tcp_v4_build_reset", "lookup_listener", "tcp_flag_string",
           "tcp_v4_send_synack_req"]


def _key(skb: SkBuff) -> tuple[int, int, int, int]:
    return (skb.iph.saddr, skb.sport, skb.iph.daddr, skb.dport)


def lookup_listener(net, daddr: int, dport: int, dev: str):
    """__inet_lookup_listener: exact address beats wildcard; a device-bound socket only on its device."""
    best = None
    for sock in net.sockets:
        if sock.proto != "tcp" or sock.port != dport:
            continue
        if sock.dev is not None and sock.dev != dev:
            continue
        if sock.addr == daddr:
            return sock
        if sock.addr == 0 and best is None:
            best = sock
    return best


def tcp_v4_rcv(skb: SkBuff) -> None:
    ctx = skb.ctx
    net = skb.ctx_net
    if skb.pkt_type != PACKET_HOST:
        ctx.step("tcp_v4_rcv", result="not PACKET_HOST")
        kfree_skb_reason(skb, "NOT_SPECIFIED")
        return
    data = skb.payload
    if len(data) < 20:
        ctx.step("tcp_v4_rcv", result=f"short TCP header ({len(data)} bytes)")
        kfree_skb_reason(skb, "PKT_TOO_SMALL")
        return
    doff = (data[12] >> 4) * 4
    if doff < 20:
        ctx.step("tcp_v4_rcv", result=f"doff {doff} < 20")
        kfree_skb_reason(skb, "PKT_TOO_SMALL")
        return
    if len(data) < doff:
        ctx.step("tcp_v4_rcv", result="options run past the segment")
        kfree_skb_reason(skb, "NOT_SPECIFIED")
        return
    if l4_checksum(skb.iph.saddr, skb.iph.daddr, IPPROTO_TCP, bytes(data)):
        ctx.step("tcp_v4_rcv", result="bad TCP checksum")
        kfree_skb_reason(skb, "TCP_CSUM")
        return
    flags = skb.tcp_flags
    if ctx.record:
        ctx.step("tcp_v4_rcv", sport=skb.sport, dport=skb.dport, flags=tcp_flag_string(flags))
    conns = net.tcp_conns
    key = _key(skb)
    conn = conns.get(key)
    now = ctx.now
    if conn is not None and conn.state in ("TIME_WAIT", "FIN_WAIT2_TW"):
        if _time_wait(skb, conn):
            return
        conn = None
    if conn is not None:
        ctx.uncacheable("TCP socket state")
        ctx.step("__inet_lookup_established", found=conn.state)
        if conn.state == "SYN_RECV":
            from pathtrace.net.ipv4.tcp_minisocks import tcp_check_req
            tcp_check_req(net, ctx, skb, conn, now)
            return
        from pathtrace.net.ipv4.tcp_input import tcp_rcv_established, tcp_rcv_state_process
        ctx.step("tcp_v4_do_rcv", state=conn.state)
        if conn.state == "ESTABLISHED":
            tcp_rcv_established(net, ctx, skb, conn, now)
        else:
            tcp_rcv_state_process(net, ctx, skb, conn, now)
        return
    sock = lookup_listener(net, skb.iph.daddr, skb.dport, skb.dev.name if skb.dev else "")
    if sock is None:
        ctx.step("__inet_lookup_listener", found=None)
        _no_socket(skb)
        return
    ctx.step("__inet_lookup_listener", found=sock.text)
    ctx.step("tcp_v4_do_rcv", state="LISTEN")
    ctx.step("tcp_rcv_state_process", state="LISTEN")
    if flags & TCP_ACK:
        _send_reset(skb)
        kfree_skb_reason(skb, "TCP_FLAGS", why="ACK to a listener without a matching request")
        return
    if flags & TCP_RST:
        kfree_skb_reason(skb, "TCP_RESET")
        return
    if not flags & TCP_SYN:
        kfree_skb_reason(skb, "TCP_FLAGS")
        return
    if flags & TCP_FIN:
        kfree_skb_reason(skb, "TCP_FLAGS")
        return
    ctx.uncacheable("TCP socket state")
    ctx.step("tcp_v4_conn_request")
    ctx.step("tcp_conn_request")
    conn = tcp_conn_request(net, skb, sock, key, now)
    if conn is None:
        # drop_and_free → drop: tcp_listendrop, but tcp_conn_request returns 0, which
        # tcp_rcv_state_process takes as acceptable: the SYN is consumed, with no drop reason
        sock.drops += 1
        consume_skb(skb, "LOCAL_DELIVER", listendrop=1)
        return
    conns[key] = conn
    sock.rx_packets += 1
    # inet_csk_reqsk_queue_hash_add arms the request's timer before the SYN-ACK leaves
    from pathtrace.net.ipv4.tcp_timer import TCP_TIMEOUT_INIT, arm_reqsk
    arm_reqsk(net, conn, now, TCP_TIMEOUT_INIT)
    tcp_v4_send_synack(skb, conn)
    consume_skb(skb, "LOCAL_DELIVER")


def tcp_conn_request(net, skb: SkBuff, sock, key: tuple, now: float) -> TcpConn | None:
    """A request sock from the SYN: the options both sides allow (sysctls tcp_timestamps, tcp_sack,
    tcp_window_scaling, tcp_ecn), the advertised MSS from the route's MTU, the receive window."""
    from pathtrace.net.ipv4.route import ip_route_output
    from pathtrace.net.ipv4.tcp_output import tcp_openreq_init_rwin
    ctx = skb.ctx
    glob = net.sysctl.glob
    data = bytes(skb.payload)
    opts = tcp_parse_options(data[:(data[12] >> 4) * 4])
    seq = skb.tcp_seq
    conn = TcpConn(state="SYN_RECV", key=key, listener=sock, tcp_rmem=net.sysctl.vectors["tcp_rmem"])
    conn.irs = seq
    conn.rcv_nxt = conn.rcv_wup = seq_add(seq, 1)
    conn.iss = provisional(key, "isn")
    conn.snd_una = conn.iss
    conn.snd_nxt = conn.write_seq = seq_add(conn.iss, 1)
    conn.ts_off = provisional(key, "ts_off")
    conn.ip_id = provisional(key, "inet_id", 16)
    conn.tstamp_ok = opts.tsval is not None and bool(glob.get("tcp_timestamps", 1))
    conn.sack_ok = opts.sack_ok and bool(glob.get("tcp_sack", 1))
    conn.wscale_ok = opts.wscale is not None and bool(glob.get("tcp_window_scaling", 1))
    conn.snd_wscale = opts.wscale if conn.wscale_ok else 0
    conn.ecn_ok = bool(skb.tcp_flags & TCP_ECE and skb.tcp_flags & TCP_CWR) and bool(glob.get("tcp_ecn", 2))
    conn.ts_recent = opts.tsval or 0
    conn.snd_wnd = struct.unpack_from("!H", data, 14)[0]
    # inet_request_mark: the listener's mark (none in host files), or the SYN's with tcp_fwmark_accept;
    # the SYN-ACK is routed with it (inet_csk_route_req) and the child socket inherits it
    conn.mark = skb.mark if glob.get("tcp_fwmark_accept", 0) else 0
    conn.synack_at = now
    conn.last_event = now
    rt = ip_route_output(net, skb.iph.saddr, skb.iph.daddr, mark=conn.mark, ctx=ctx)
    if rt.error:
        ctx.step("tcp_conn_request", result=f"no route back ({rt.error})")
        return None
    conn.dst = rt
    mtu = rt.mtu if rt.mtu else (rt.dev.mtu if rt.dev else 1500)
    # dst_metric_advmss: the route's advmss metric, else ipv4_default_advmss (MTU - 40, 256 .. 65495)
    advmss = rt.advmss or min(max(mtu - 40, 256), 65495)
    conn.mss_clamp = min(opts.mss or 536, advmss)
    ctx.step("tcp_openreq_init_rwin")
    tcp_openreq_init_rwin(conn, advmss)
    return conn


def _time_wait(skb: SkBuff, conn: TcpConn) -> bool:
    """tcp_v4_rcv's do_time_wait; False when a new SYN may reuse the pair (TCP_TW_SYN: go on to the listener)."""
    from pathtrace.net.ipv4.tcp_input import tcp_timewait_state_process
    ctx = skb.ctx
    net = skb.ctx_net
    ctx.uncacheable("TCP socket state")
    ctx.step("__inet_lookup_established", found="TIME_WAIT")
    verdict = tcp_timewait_state_process(net, ctx, skb, conn, ctx.now)
    ctx.step("tcp_timewait_state_process", result=verdict)
    if verdict == "TCP_TW_SYN":
        ctx.step("inet_twsk_deschedule_put")
        net.tcp_conns.pop(conn.key, None)
        return False
    if verdict == "TCP_TW_ACK":
        ctx.step("tcp_v4_timewait_ack")
        tcp_v4_send_ack(skb, conn, ctx.now)
    elif verdict == "TCP_TW_RST":
        _send_reset(skb)
        ctx.step("inet_twsk_deschedule_put")
        net.tcp_conns.pop(conn.key, None)
    kfree_skb_reason(skb, "NOT_SPECIFIED")
    return True


def tcp_v4_send_ack(skb: SkBuff, conn: TcpConn, now: float) -> None:
    """tcp_v4_send_ack: the ACK a timewait or request sock sends through the control socket."""
    from pathtrace.net.ipv4.ip_local import new_local_skb
    from pathtrace.net.ipv4.ip_output import ip_local_out
    from pathtrace.net.ipv4.route import ip_route_output
    ctx = skb.ctx
    net = skb.ctx_net
    iph = skb.iph
    with ctx.nested():
        ctx.step("tcp_v4_send_ack", to=f"{ntoa(iph.saddr)}:{skb.sport}")
        opts = b""
        if conn.tstamp_ok:
            opts = struct.pack("!BBBBII", 1, 1, 8, 10, conn.tsval(now), conn.ts_recent)
        window = min(conn.rcv_wnd >> conn.rcv_wscale, 0xFFFF) if conn.state != "SYN_RECV" else \
            min(conn.rcv_wnd, 0xFFFF) >> conn.rcv_wscale
        hdr = bytearray(struct.pack("!HHIIBBHHH", skb.dport, skb.sport, conn.snd_nxt, conn.rcv_nxt,
                                    (5 + len(opts) // 4) << 4, TCP_ACK, window, 0, 0) + opts)
        struct.pack_into("!H", hdr, 16, l4_checksum(iph.daddr, iph.saddr, IPPROTO_TCP, bytes(hdr)))
        mark = ip4_reply_mark(net, skb.mark)
        rt = ip_route_output(net, iph.saddr, iph.daddr, mark=mark, ctx=ctx)
        if rt.error:
            ctx.step("tcp_v4_send_ack", result=f"no route back ({rt.error})")
            return
        out = new_local_skb(ctx, rt, iph.daddr, iph.saddr, IPPROTO_TCP, bytes(hdr), df=True,
                            generated_by="tcp_v4_send_ack", mark=mark)
        ctx.step("ip_send_unicast_reply")
        ip_local_out(out)


def _no_socket(skb: SkBuff) -> None:
    _send_reset(skb)
    kfree_skb_reason(skb, "NO_SOCKET")


def tcp_flag_string(flags: int) -> str:
    return "".join(c for bit, c in ((1, "F"), (2, "S"), (4, "R"), (8, "P"), (16, "."), (32, "U"), (64, "E"),
                                    (128, "C")) if flags & bit) or "none"


def tcp_v4_build_reset(oldskb: SkBuff) -> SkBuff | None:
    """The RST tcp_v4_send_reset / nf_send_reset would send in reply; None for an RST."""
    from pathtrace.net.ipv4.ip_local import new_local_skb
    from pathtrace.net.ipv4.route import ip_route_output
    iph = oldskb.iph
    if not oldskb.l4_available(20):
        return None
    flags = oldskb.tcp_flags
    if flags & TCP_RST:
        return None
    ctx = oldskb.ctx
    net = oldskb.ctx_net
    if flags & TCP_ACK:
        seq, ack, rflags = oldskb.tcp_ack_seq, 0, TCP_RST
    else:
        seglen = len(oldskb.payload) - oldskb.tcp_doff + (1 if flags & TCP_SYN else 0) + (1 if flags & TCP_FIN else 0)
        seq, ack, rflags = 0, (oldskb.tcp_seq + seglen) & 0xFFFFFFFF, TCP_RST | TCP_ACK
    hdr = bytearray(struct.pack("!HHIIBBHHH", oldskb.dport, oldskb.sport, seq, ack, 5 << 4, rflags, 0, 0, 0))
    struct.pack_into("!H", hdr, 16, l4_checksum(iph.daddr, iph.saddr, IPPROTO_TCP, bytes(hdr)))
    mark = ip4_reply_mark(net, oldskb.mark)      # ip_send_unicast_reply / nf_send_reset
    rt = ip_route_output(net, iph.saddr, iph.daddr, mark=mark, ctx=ctx)
    if rt.error:
        ctx.step("ip_send_unicast_reply", result=f"no route back ({rt.error})")
        return None
    # resets leave through a control socket with IP_PMTUDISC_DO: DF set, IP ID 0
    return new_local_skb(ctx, rt, iph.daddr, iph.saddr, IPPROTO_TCP, bytes(hdr), tos=iph.tos, df=True,
                         generated_by="tcp_v4_send_reset", mark=mark)


def _send_reset(skb: SkBuff) -> None:
    from pathtrace.net.ipv4.ip_output import ip_local_out
    ctx = skb.ctx
    with ctx.nested():
        ctx.step("tcp_v4_send_reset", to=f"{ntoa(skb.iph.saddr)}:{skb.sport}")
        rst = tcp_v4_build_reset(skb)
        if rst is None:
            ctx.step("tcp_v4_send_reset", result="no reset for a reset")
            return
        ctx.step("ip_send_unicast_reply")
        ip_local_out(rst)


def tcp_v4_send_synack(skb: SkBuff, conn: TcpConn) -> int:
    """tcp_v4_send_synack for the SYN that made (or repeats) the request sock; see tcp_v4_send_synack_req."""
    return tcp_v4_send_synack_req(skb.ctx_net, skb.ctx, conn, skb.ctx.now)


def tcp_v4_send_synack_req(net, ctx, conn: TcpConn, now: float) -> int:
    """tcp_v4_send_synack → tcp_make_synack → ip_build_and_send_pkt (DF, IP ID 0: no full socket yet),
    from the request sock alone (its timer has no skb).  Returns the kernel's error: nonzero when no
    route leads back or netfilter dropped it (net_xmit_eval of ip_local_out), which makes
    reqsk_timer_handler drop the request sock."""
    from pathtrace.net.ipv4.ip_local import new_local_skb
    from pathtrace.net.ipv4.ip_output import ip_local_out
    from pathtrace.net.ipv4.route import ip_route_output
    from pathtrace.net.ipv4.tcp_output import tcp_make_synack
    peer, pport, local, _ = conn.key
    with ctx.nested():
        ctx.step("tcp_v4_send_synack", to=f"{ntoa(peer)}:{pport}")
        rt = ip_route_output(net, peer, local, mark=conn.mark, ctx=ctx)
        if rt.error:
            ctx.step("tcp_v4_send_synack", result=f"no route back ({rt.error})")
            return -1
        ctx.step("tcp_make_synack", mss=conn.advmss, wscale=conn.rcv_wscale if conn.wscale_ok else None,
                 sack=conn.sack_ok, ts=conn.tstamp_ok)
        hdr = bytearray(tcp_make_synack(conn, now))
        struct.pack_into("!H", hdr, 16, l4_checksum(local, peer, IPPROTO_TCP, bytes(hdr)))
        out = new_local_skb(ctx, rt, local, peer, IPPROTO_TCP, bytes(hdr), df=True,
                            generated_by="tcp_v4_send_synack", mark=conn.mark)
        ctx.step("ip_build_and_send_pkt")
        ip_local_out(out)
        return -1 if out.verdict == "DROP" and out.reason == "NETFILTER_DROP" else 0


def tcp_observe_sent(net, saddr: int, sport: int, daddr: int, dport: int, tcp_header_bytes: bytes,
                     payload_len: int, now: float | None = None) -> None:
    """A TCP segment the capture shows the host sending (predicted or not): take the ISN, TSval
    clock, IP ID and window the real host used, advance snd_nxt over the data its application
    sent, note its FIN (FIN_WAIT1 / LAST_ACK) or RST.  `now` is the segment's capture time
    (without it, the time of the connection's last event)."""
    key = (daddr, dport, saddr, sport)
    tcp_observe_segment(net, key, bytes(tcp_header_bytes), payload_len, now)


def tcp_observe_segment(net, key: tuple, hdr: bytes, paylen: int, now: float | None, iph=None,
                        sending: bool = False) -> TcpConn | None:
    """Update (or create) the socket of `key` (peer first) from a segment the host sent.  Idempotent:
    the replay may observe a segment and also send it through tcp_sendmsg_from_capture."""
    if len(hdr) < 20:
        return None
    flags = hdr[13]
    seq, ack = struct.unpack_from("!II", hdr, 4)
    window = struct.unpack_from("!H", hdr, 14)[0]
    opts = tcp_parse_options(hdr)
    end = seq_add(seq, paylen + (1 if flags & TCP_SYN else 0) + (1 if flags & TCP_FIN else 0))
    conns = net.tcp_conns
    conn = conns.get(key)
    if conn is not None and conn.state in ("TIME_WAIT", "FIN_WAIT2_TW") and flags & TCP_SYN:
        conns.pop(key, None)
        conn = None
    if conn is None:
        if flags & TCP_RST:
            return None
        conn = _conn_from_sent(net, key, flags, seq, ack, opts)
        conns[key] = conn
    when = conn.last_event if now is None else now
    conn.seen_sent = True
    if flags & TCP_SYN:
        if conn.iss_provisional and conn.iss != seq:
            from pathtrace.net.ipv4.tcp_minisocks import tcp_adopt_isn
            tcp_adopt_isn(net, conn, seq)         # conntrack saw the placeholder in the model's SYN-ACK
        conn.iss = seq
        conn.iss_provisional = False
        conn.synack_at = when
        if conn.state == "SYN_RECV":
            conn.advmss = opts.mss or conn.advmss
            conn.sack_ok = opts.sack_ok
            conn.wscale_ok = opts.wscale is not None
            conn.rcv_wscale = opts.wscale or 0
            conn.tstamp_ok = opts.tsval is not None
            conn.rcv_wnd = conn.rcv_ssthresh = window
        # the host's real ISN replaces the provisional one everywhere it was used
        conn.snd_una = seq
        conn.snd_nxt = conn.write_seq = end
    if opts.tsval is not None:
        conn.ts_off = (opts.tsval - int(when * 1000)) & 0xFFFFFFFF
        conn.ts_provisional = False
    if iph is not None and iph.frag_off & 0x4000 and iph.id:
        conn.ip_id = (iph.id + 1) & 0xFFFF
        conn.ip_id_provisional = False
    if after(end, conn.snd_nxt):
        conn.snd_nxt = end
    if after(end, conn.write_seq):
        conn.write_seq = end
    if not flags & TCP_SYN:
        conn.last_window = window
    if flags & TCP_ACK and not after(conn.rcv_nxt, ack):
        # an ACK (bare or on data) went out: nothing is owed any more (tcp_event_ack_sent)
        if conn.ack_pending and conn.quick:
            conn.quick -= 1
        conn.ack_pending = conn.ack_now = False
        conn.delack_timer = None
        conn.rcv_wup = ack if not after(ack, conn.rcv_nxt) else conn.rcv_wup
    if paylen and conn.state != "SYN_SENT":
        # tcp_event_data_sent: an answer within ato of the last data received means interactive traffic
        if conn.ato and when - conn.lrcvtime < conn.ato:
            conn.pingpong = max(conn.pingpong, 1)
    if flags & TCP_FIN and not conn.snd_fin:
        conn.snd_fin = True
        nxt = {"ESTABLISHED": "FIN_WAIT1", "SYN_RECV": "FIN_WAIT1", "CLOSE_WAIT": "LAST_ACK"}.get(conn.state)
        if nxt:
            conn.state = nxt
    if flags & TCP_RST:
        conns.pop(key, None)
    return conn


def _conn_from_sent(net, key: tuple, flags: int, seq: int, ack: int, opts) -> TcpConn:
    """A socket first seen through what the host sent: its own SYN (SYN_SENT, tcp_v4_connect), a
    SYN-ACK the model did not see the SYN of, or a connection already open when the capture began."""
    glob = net.sysctl.glob
    if flags & TCP_SYN and not flags & TCP_ACK:
        conn = TcpConn(state="SYN_SENT", key=key, tcp_rmem=net.sysctl.vectors["tcp_rmem"])
        conn.tstamp_ok = opts.tsval is not None and bool(glob.get("tcp_timestamps", 1))
        conn.sack_ok = opts.sack_ok
        conn.wscale_ok = opts.wscale is not None
        conn.rcv_wscale = opts.wscale or 0
        conn.advmss = opts.mss or 1460
        conn.rcv_wnd = conn.rcv_ssthresh = 64240
        conn.window_clamp = 0xFFFF << 14
        conn.snd_una = seq
        conn.snd_nxt = conn.write_seq = seq_add(seq, 1)
        return conn
    sock = lookup_listener(net, key[2], key[3], "")
    conn = TcpConn(state="SYN_RECV" if flags & TCP_SYN else "ESTABLISHED", key=key, listener=sock,
                   tcp_rmem=net.sysctl.vectors["tcp_rmem"])
    conn.rcv_nxt = conn.rcv_wup = ack
    conn.irs = seq_add(ack, -1)
    conn.snd_una = conn.snd_nxt = conn.write_seq = seq
    conn.tstamp_ok = opts.tsval is not None
    conn.sack_ok = opts.sack_ok or not flags & TCP_SYN
    conn.wscale_ok = opts.wscale is not None or not flags & TCP_SYN
    conn.rcv_wscale = conn.snd_wscale = opts.wscale if opts.wscale is not None else (0 if flags & TCP_SYN else 7)
    conn.window_clamp = 0xFFFF << 14
    conn.rcv_wnd = conn.rcv_ssthresh = 65160
    conn.ato = 0.04 if not flags & TCP_SYN else 0.0
    conn.iss_provisional = False
    return conn


def _iss(key: tuple) -> int:
    """The model's provisional ISN for a request sock of `key` (samples/make_samples.py builds the
    sample clients' ACKs on it)."""
    return provisional(key, "isn")
