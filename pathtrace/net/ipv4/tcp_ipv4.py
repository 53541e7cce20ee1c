"""net/ipv4/tcp_ipv4.c: socket lookup, listeners answering SYNs, resets for closed ports.

Listeners come from the host file.  A SYN creates a request sock and a SYN-ACK; the
ACK that completes the handshake creates an established child, which later segments
of that flow find first (__inet_lookup_established).  The model does not send the
ACKs a real socket would send for received data.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from pathtrace.lib.checksum import l4_checksum
from pathtrace.lib.inet import ntoa
from pathtrace.net.core.skbuff import IPPROTO_TCP, PACKET_HOST, SkBuff, consume_skb, kfree_skb_reason

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclass(slots=True)
class TcpConn:
    """A request sock (SYN_RECV) or an established child of a listener."""

    state: str
    iss: int
    rcv_nxt: int
    listener: object


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
    if conn is not None:
        ctx.step("__inet_lookup_established", found=conn.state)
        _established_rcv(skb, conn, conns, key)
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
        kfree = "TCP_FLAGS"
        _send_reset(skb)
        kfree_skb_reason(skb, kfree, why="ACK to a listener without a matching request")
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
    ctx.step("tcp_v4_conn_request")
    ctx.step("tcp_conn_request")
    iss = _iss(key)
    conns[key] = TcpConn("SYN_RECV", iss, (skb.tcp_seq + 1) & 0xFFFFFFFF, sock)
    sock.rx_packets += 1
    _send_synack(skb, iss)
    consume_skb(skb, "LOCAL_DELIVER")


def _established_rcv(skb: SkBuff, conn: TcpConn, conns: dict, key) -> None:
    ctx = skb.ctx
    flags = skb.tcp_flags
    if conn.state == "SYN_RECV":
        ctx.step("tcp_check_req")
        if flags & TCP_RST:
            del conns[key]
            consume_skb(skb, "LOCAL_DELIVER")
            return
        if flags & TCP_ACK and skb.tcp_ack_seq == (conn.iss + 1) & 0xFFFFFFFF:
            ctx.step("tcp_v4_syn_recv_sock")
            ctx.step("inet_csk_complete_hashdance")
            ctx.step("tcp_child_process")
            conn.state = "ESTABLISHED"
            consume_skb(skb, "LOCAL_DELIVER")
            return
        if flags & TCP_SYN and not flags & TCP_ACK:
            _send_synack(skb, conn.iss)       # retransmitted SYN: the request sock answers again
            consume_skb(skb, "LOCAL_DELIVER")
            return
        _send_reset(skb)
        kfree_skb_reason(skb, "TCP_FLAGS")
        return
    ctx.step("tcp_v4_do_rcv", state=conn.state)
    ctx.step("tcp_rcv_established")
    if flags & TCP_RST:
        del conns[key]
    elif flags & TCP_FIN:
        conn.state = "CLOSE_WAIT"
    conn.listener.rx_packets += 1
    skb.verdict = "LOCAL_DELIVER"
    ctx.step("tcp_data_queue", socket=conn.listener.text)


def _no_socket(skb: SkBuff) -> None:
    _send_reset(skb)
    kfree_skb_reason(skb, "NO_SOCKET")


def _iss(key) -> int:
    """Initial sequence number: deterministic stand-in for secure_tcp_seq."""
    return int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=4).digest(), "big")


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
    rt = ip_route_output(net, iph.saddr, iph.daddr, mark=oldskb.mark, ctx=ctx)
    if rt.error:
        ctx.step("ip_send_unicast_reply", result=f"no route back ({rt.error})")
        return None
    # resets leave through a control socket with IP_PMTUDISC_DO: DF set, IP ID 0
    return new_local_skb(ctx, rt, iph.daddr, iph.saddr, IPPROTO_TCP, bytes(hdr), tos=iph.tos, df=True,
                         generated_by="tcp_v4_send_reset", mark=oldskb.mark)


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


def _send_synack(skb: SkBuff, iss: int) -> None:
    """tcp_v4_send_synack → ip_build_and_send_pkt: SYN-ACK with MSS (and the options the SYN offered)."""
    from pathtrace.net.ipv4.ip_local import new_local_skb
    from pathtrace.net.ipv4.ip_output import ip_local_out
    from pathtrace.net.ipv4.route import ip_route_output
    ctx = skb.ctx
    net = skb.ctx_net
    iph = skb.iph
    with ctx.nested():
        ctx.step("tcp_v4_send_synack", to=f"{ntoa(iph.saddr)}:{skb.sport}")
        rt = ip_route_output(net, iph.saddr, iph.daddr, mark=skb.mark, ctx=ctx)
        if rt.error:
            ctx.step("tcp_v4_send_synack", result=f"no route back ({rt.error})")
            return
        mss = (rt.dev.mtu if rt.dev else 1500) - 40
        opts = struct.pack("!BBH", 2, 4, mss)
        opts += b"\x01" * ((4 - len(opts) % 4) % 4)
        ack = (skb.tcp_seq + 1) & 0xFFFFFFFF
        hdr = bytearray(struct.pack("!HHIIBBHHH", skb.dport, skb.sport, iss, ack, (5 + len(opts) // 4) << 4,
                                    TCP_SYN | TCP_ACK, 65160, 0, 0) + opts)
        struct.pack_into("!H", hdr, 16, l4_checksum(iph.daddr, iph.saddr, IPPROTO_TCP, bytes(hdr)))
        out = new_local_skb(ctx, rt, iph.daddr, iph.saddr, IPPROTO_TCP, bytes(hdr), df=True,
                            generated_by="tcp_v4_send_synack", mark=skb.mark)
        ctx.step("ip_build_and_send_pkt")
        ip_local_out(out)
