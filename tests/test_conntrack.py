"""Connection tracking: states, timeouts, INVALID and UNTRACKED, conntrack -L.

Behaviour marked "kernel:" was checked on a 6.18 kernel in throw-away network
namespaces (veth, iptables-nft 1.8.9, conntrack-tools 1.4.7).
"""
from __future__ import annotations

import struct
from types import SimpleNamespace

from pathtrace.lib.inet import aton
from pathtrace.net.core.skbuff import Iphdr, SkBuff
from pathtrace.net.netfilter import nf_conntrack_core as core
from pathtrace.net.netfilter.nf_conntrack_core import (
    IP_CT_ESTABLISHED, IP_CT_ESTABLISHED_REPLY, IP_CT_NEW, IP_CT_RELATED_REPLY, IP_CT_UNTRACKED, IPS_ASSURED,
    IPS_CONFIRMED, IPS_SEEN_REPLY, NF_ACCEPT, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING, NF_INET_PRE_ROUTING,
    UNTRACKED, ConntrackTable, ipv4_confirm, ipv4_conntrack_in, ipv4_conntrack_local, nf_ct_set_untracked,
)
from pathtrace.net.netfilter.nf_conntrack_list import format_conntrack_list
from pathtrace.net.netfilter.nf_conntrack_proto_tcp import tcp_state_name
from pathtrace.packet import build
from pathtrace.trace import PacketContext


def mk_skb(ip: bytes, now: float, dev=None, record: bool = True) -> SkBuff:
    """An SkBuff as ip_rcv_core leaves it: parsed header, payload trimmed to tot_len."""
    vihl, tos, tot_len, ident, frag, ttl, proto, check, saddr, daddr = struct.unpack("!BBHHHBBHII", ip[:20])
    ihl = vihl & 0x0F
    iph = Iphdr(4, ihl, tos, tot_len, ident, frag, ttl, proto, check, saddr, daddr, ip[20:ihl * 4])
    return SkBuff(ctx=PacketContext(now, record=record), dev=dev, iph=iph,
                  payload=bytearray(ip[ihl * 4:tot_len]))


def tcp_pkt(src: str, dst: str, sport: int, dport: int, flags: str, seq: int = 0, ack: int = 0,
            data: bytes = b"", **kw) -> bytes:
    return build.ipv4(src, dst, 6, build.tcp(sport, dport, flags, seq=seq, ack=ack, payload=data,
                                             src=src, dst=dst, **kw))


def udp_pkt(src: str, dst: str, sport: int, dport: int, data: bytes = b"x", **kw) -> bytes:
    return build.ipv4(src, dst, 17, build.udp(sport, dport, data, src=src, dst=dst, **kw))


def nf_for(table: ConntrackTable) -> SimpleNamespace:
    return SimpleNamespace(conntrack=table, net=None)


def track(nf, ip: bytes, now: float, hook: int = NF_INET_PRE_ROUTING, confirm: bool = True) -> SkBuff:
    """conntrack at the first hook and (unless the packet is 'dropped') confirm at the last."""
    skb = mk_skb(ip, now)
    entry = ipv4_conntrack_in if hook == NF_INET_PRE_ROUTING else ipv4_conntrack_local
    assert entry(nf, skb, hook) == NF_ACCEPT
    if confirm:
        assert ipv4_confirm(nf, skb, NF_INET_POST_ROUTING) == NF_ACCEPT
    return skb


A, B = "10.0.0.2", "192.0.2.7"


def handshake(nf, t0: float = 0.0):
    c, s = 1000, 5000
    syn = track(nf, tcp_pkt(A, B, 40000, 80, "S", seq=c), t0)
    synack = track(nf, tcp_pkt(B, A, 80, 40000, "SA", seq=s, ack=c + 1), t0 + 0.01)
    ack = track(nf, tcp_pkt(A, B, 40000, 80, "A", seq=c + 1, ack=s + 1), t0 + 0.02)
    return syn, synack, ack


def test_tcp_states_through_close():
    """SYN/SYN-ACK/ACK, data, FIN both ways: the states and timeouts of tcp_conntracks/tcp_timeouts."""
    table = ConntrackTable()
    nf = nf_for(table)
    syn, synack, ack = handshake(nf)
    ct = syn.ct
    assert syn.ctinfo == IP_CT_NEW and synack.ctinfo == IP_CT_ESTABLISHED_REPLY and ack.ctinfo == IP_CT_ESTABLISHED
    assert synack.ct is ct and ack.ct is ct
    assert tcp_state_name(ct) == "ESTABLISHED" and ct.status & IPS_ASSURED and ct.status & IPS_SEEN_REPLY
    assert ct.timeout - 0.02 == 432000
    d = track(nf, tcp_pkt(A, B, 40000, 80, "PA", seq=1001, ack=5001, data=b"GET /"), 1.0)
    assert d.ctinfo == IP_CT_ESTABLISHED
    assert ct.timeout == 1.0 + 300          # unacknowledged data: nf_conntrack_tcp_timeout_unacknowledged
    track(nf, tcp_pkt(B, A, 80, 40000, "A", seq=5001, ack=1006), 1.1)
    assert ct.timeout == 1.1 + 432000
    track(nf, tcp_pkt(A, B, 40000, 80, "FA", seq=1006, ack=5001), 2.0)
    assert tcp_state_name(ct) == "FIN_WAIT"
    track(nf, tcp_pkt(B, A, 80, 40000, "A", seq=5001, ack=1007), 2.1)
    assert tcp_state_name(ct) == "CLOSE_WAIT"
    track(nf, tcp_pkt(B, A, 80, 40000, "FA", seq=5001, ack=1007), 2.2)
    assert tcp_state_name(ct) == "LAST_ACK"
    track(nf, tcp_pkt(A, B, 40000, 80, "A", seq=1007, ack=5002), 2.3)
    assert tcp_state_name(ct) == "TIME_WAIT" and ct.timeout == 2.3 + 120
    assert len(table) == 1
    # expiry: after TIME_WAIT's 120 s the entry is gone and a new SYN is NEW again
    again = track(nf, tcp_pkt(A, B, 40000, 80, "S", seq=90000), 200.0)
    assert again.ctinfo == IP_CT_NEW and again.ct is not ct


def test_syn_in_time_wait_reopens():
    """A new SYN on a TIME_WAIT tuple kills the old entry and is tracked as NEW (-NF_REPEAT)."""
    table = ConntrackTable()
    nf = nf_for(table)
    syn, _, _ = handshake(nf)
    for t, (s, d, sp, dp, fl, seq, ack) in enumerate([
            (A, B, 40000, 80, "FA", 1001, 5001), (B, A, 80, 40000, "FA", 5001, 1002),
            (A, B, 40000, 80, "A", 1002, 5002)]):
        track(nf, tcp_pkt(s, d, sp, dp, fl, seq=seq, ack=ack), 1 + t)
    assert tcp_state_name(syn.ct) == "TIME_WAIT"
    new = track(nf, tcp_pkt(A, B, 40000, 80, "S", seq=777777), 5.0)
    assert new.ctinfo == IP_CT_NEW and new.ct is not syn.ct and tcp_state_name(new.ct) == "SYN_SENT"
    assert len(table) == 1


def test_rst_before_reply_deletes_entry():
    table = ConntrackTable()
    nf = nf_for(table)
    track(nf, tcp_pkt(A, B, 40000, 81, "S", seq=1), 0.0)
    rst = track(nf, tcp_pkt(B, A, 81, 40000, "RA", seq=0, ack=2), 0.01)
    assert rst.ct is not None and rst.ctinfo == IP_CT_ESTABLISHED_REPLY
    assert len(table) == 0


def test_udp_unreplied_times_out_and_stream_is_assured():
    """UDP: 30 s unreplied; replies after >2 s make it a 120 s ASSURED stream.

    kernel: the first reply itself refreshes with 30 s (conntrack -L showed 27 s left
    a few seconds after a single query/answer), as SEEN_REPLY is set after the tracker ran.
    """
    table = ConntrackTable()
    nf = nf_for(table)
    first = track(nf, udp_pkt(A, B, 5000, 53), 0.0)
    ct = first.ct
    assert ct.timeout == 30.0 and ct.status & IPS_CONFIRMED
    again = track(nf, udp_pkt(A, B, 5000, 53), 29.0)
    assert again.ct is ct and again.ctinfo == IP_CT_NEW        # still unreplied
    late = track(nf, udp_pkt(A, B, 5000, 53), 29.0 + 30.5)
    assert late.ct is not ct and late.ctinfo == IP_CT_NEW       # the old one expired
    ct = late.ct
    reply = track(nf, udp_pkt(B, A, 53, 5000), 60.0)
    assert reply.ctinfo == IP_CT_ESTABLISHED_REPLY and ct.timeout == 90.0 and not ct.status & IPS_ASSURED
    more = track(nf, udp_pkt(A, B, 5000, 53), 62.0)
    assert more.ctinfo == IP_CT_ESTABLISHED and ct.timeout == 62.0 + 120 and ct.status & IPS_ASSURED


def test_gc_sweep_bounds_memory():
    table = ConntrackTable()
    nf = nf_for(table)
    for i in range(50):
        track(nf, udp_pkt(A, B, 10000 + i, 53), float(i) * 0.01)
    assert len(table) == 50
    track(nf, udp_pkt(A, B, 9, 53), 100.0)       # gc_worker runs on the way
    assert len(table) == 1


def test_dropped_packet_leaves_no_entry():
    """An unconfirmed conntrack (packet dropped before nf_confirm) is not kept."""
    table = ConntrackTable()
    nf = nf_for(table)
    skb = track(nf, udp_pkt(A, B, 5000, 53), 0.0, confirm=False)
    assert skb.ct is not None and len(table) == 0
    skb2 = track(nf, udp_pkt(A, B, 5000, 53), 1.0)
    assert skb2.ctinfo == IP_CT_NEW and skb2.ct is not skb.ct


def test_invalid_cases():
    table = ConntrackTable()
    nf = nf_for(table)
    cases = {
        "syn+fin": tcp_pkt(A, B, 1, 2, "SF"),
        "synack first": tcp_pkt(A, B, 1, 3, "SA"),
        "fin first": tcp_pkt(A, B, 1, 4, "FA"),
        "bad tcp checksum": tcp_pkt(A, B, 1, 5, "S", check=0x1234),
        "truncated tcp": build.ipv4(A, B, 6, b"\x00\x01\x00\x02" + b"\0" * 8),
        "udp length lie": udp_pkt(A, B, 1, 6, length=200),
        "echo reply without request": build.ipv4(B, A, 1, build.icmp(0, 0, id=7, seq=1)),
        "icmp error for unknown flow": build.ipv4(B, A, 1, build.icmp(3, 3, udp_pkt(A, B, 1, 7)[:28])),
        "icmp type 40": build.ipv4(B, A, 1, build.icmp(40, 0)),
    }
    for name, ip in cases.items():
        skb = track(nf, ip, 0.0)
        assert skb.ct is None, name
    assert len(table) == 0
    # the checksum is only verified in PRE_ROUTING (nf_conntrack_checksum=1)
    out = track(nf, tcp_pkt(A, B, 1, 5, "S", check=0x1234), 0.0, hook=NF_INET_LOCAL_OUT)
    assert out.ct is not None


def test_midstream_pickup_and_tcp_loose():
    """nf_conntrack_tcp_loose=1 (default) picks up an ACK as ESTABLISHED state (ctinfo NEW); 0 refuses."""
    loose = ConntrackTable()
    skb = track(nf_for(loose), tcp_pkt(A, B, 4444, 22, "A", seq=50, ack=60), 0.0)
    assert skb.ctinfo == IP_CT_NEW and tcp_state_name(skb.ct) == "ESTABLISHED"
    assert skb.ct.timeout == 300          # no reply yet: capped at the unacknowledged timeout
    strict = ConntrackTable(nf_conntrack_tcp_loose=0)
    assert track(nf_for(strict), tcp_pkt(A, B, 4444, 22, "A", seq=50, ack=60), 0.0).ct is None


def test_out_of_window_is_invalid():
    """tcp_in_window with be_liberal=0: data far beyond the receiver's window is INVALID."""
    table = ConntrackTable()
    nf = nf_for(table)
    handshake(nf)
    bad = track(nf, tcp_pkt(A, B, 40000, 80, "PA", seq=1001 + 10_000_000, ack=5001, data=b"x"), 1.0)
    assert bad.ct is None
    ok = track(nf, tcp_pkt(A, B, 40000, 80, "PA", seq=1001, ack=5001, data=b"x"), 1.1)
    assert ok.ctinfo == IP_CT_ESTABLISHED
    liberal = ConntrackTable(nf_conntrack_tcp_be_liberal=1)
    handshake(nf_for(liberal))
    assert track(nf_for(liberal), tcp_pkt(A, B, 40000, 80, "PA", seq=1001 + 10_000_000, ack=5001,
                                         data=b"x"), 1.0).ct is not None


def test_icmp_echo_and_related_error():
    table = ConntrackTable()
    nf = nf_for(table)
    req = track(nf, build.ipv4(A, B, 1, build.icmp(8, 0, id=99, seq=1)), 0.0)
    rep = track(nf, build.ipv4(B, A, 1, build.icmp(0, 0, id=99, seq=1)), 0.1)
    assert req.ctinfo == IP_CT_NEW and rep.ctinfo == IP_CT_ESTABLISHED_REPLY and rep.ct is req.ct
    assert abs(req.ct.timeout - 30.1) < 1e-9
    udp = track(nf, udp_pkt(A, B, 5353, 53), 1.0)
    err = track(nf, build.ipv4(B, A, 1, build.icmp(3, 3, udp_pkt(A, B, 5353, 53)[:28])), 1.1)
    assert err.ct is udp.ct and err.ctinfo == IP_CT_RELATED_REPLY


def test_untracked():
    """CT --notrack: conntrack leaves the packet alone, nothing is created or confirmed."""
    table = ConntrackTable()
    nf = nf_for(table)
    skb = mk_skb(udp_pkt(A, B, 5000, 53), 0.0)
    nf_ct_set_untracked(skb)
    assert ipv4_conntrack_in(nf, skb, NF_INET_PRE_ROUTING) == NF_ACCEPT
    assert ipv4_confirm(nf, skb, NF_INET_POST_ROUTING) == NF_ACCEPT
    assert skb.ct is UNTRACKED and skb.ctinfo == IP_CT_UNTRACKED and len(table) == 0
    assert core.nf_ct_get(skb) is None


def test_conntrack_list_format():
    """kernel: `conntrack -L` prints e.g.
    tcp      6 117 TIME_WAIT src=10.0.1.2 dst=203.0.113.5 sport=40000 dport=80 src=203.0.113.5 dst=203.0.113.1 sport=80 dport=40000 [ASSURED] mark=0 use=1
    udp      17 27 src=10.0.2.2 dst=203.0.113.5 sport=5000 dport=53 [UNREPLIED] src=203.0.113.5 dst=203.0.113.1 sport=53 dport=40291 mark=0 use=1
    """
    table = ConntrackTable()
    nf = nf_for(table)
    handshake(nf)
    track(nf, udp_pkt(A, B, 5000, 53), 0.5)
    text = format_conntrack_list(table, 3.0)
    assert text.splitlines() == [
        "tcp      6 431997 ESTABLISHED src=10.0.0.2 dst=192.0.2.7 sport=40000 dport=80 src=192.0.2.7 "
        "dst=10.0.0.2 sport=80 dport=40000 [ASSURED] mark=0 use=1",
        "udp      17 27 src=10.0.0.2 dst=192.0.2.7 sport=5000 dport=53 [UNREPLIED] src=192.0.2.7 "
        "dst=10.0.0.2 sport=53 dport=5000 mark=0 use=1",
    ]


def test_steps_only_when_recording():
    table = ConntrackTable()
    nf = nf_for(table)
    skb = mk_skb(udp_pkt(A, B, 5000, 53), 0.0, record=False)
    ipv4_conntrack_in(nf, skb, NF_INET_PRE_ROUTING)
    assert skb.ctx.steps == []
    skb = mk_skb(udp_pkt(A, B, 5001, 53), 0.0)
    ipv4_conntrack_in(nf, skb, NF_INET_PRE_ROUTING)
    details = {s.fn: s.detail for s in skb.ctx.steps}
    assert details["nf_conntrack_in"]["state"] == "NEW"
    assert details["nf_conntrack_in"]["tuple"] == "udp 10.0.0.2:5001 -> 192.0.2.7:53"
    assert aton(A) == skb.iph.saddr
