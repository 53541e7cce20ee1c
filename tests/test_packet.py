"""Packet crafting (checked against dpkt as an independent parser), one-line decode
(exact strings; never raises on any bytes), and the pcap writer."""
from __future__ import annotations

import struct
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pathtrace.capture import Frame, read_frames
from pathtrace.lib.checksum import ip_fast_csum, l4_checksum
from pathtrace.lib.inet import aton
from pathtrace.packet import build
from pathtrace.packet.decode import describe_ether, describe_frame, describe_ip, tcp_flags_str
from pathtrace.packet.pcapwriter import PcapWriter

A, B = "10.0.0.1", "10.0.0.2"


# ---- build ---------------------------------------------------------------------------

def test_ipv4_header_fields_and_checksum() -> None:
    pkt = build.ipv4(A, B, 17, b"x" * 10, ttl=7, tos=0x10, id=0x1234, df=True, mf=True, frag_offset=3)
    assert len(pkt) == 30 and ip_fast_csum(pkt[:20]) == 0
    ip = dpkt.ip.IP(pkt)
    assert (ip.ttl, ip.tos, ip.id, ip.p, ip.len) == (7, 0x10, 0x1234, 17, 30)
    assert ip.df and ip.mf and ip.offset == 3 and pkt[6:8] == b"\x60\x03"  # dpkt: 8-byte units
    assert ip.src == bytes([10, 0, 0, 1]) and ip.dst == bytes([10, 0, 0, 2])
    assert build.ipv4(aton(A), aton(B), 17, b"x" * 10, ttl=7, tos=0x10, id=0x1234, df=True, mf=True,
                      frag_offset=3) == pkt


def test_ipv4_overrides_and_options() -> None:
    pkt = build.ipv4(A, B, 6, b"", options=b"\x01\x01\x01", check=0xBEEF, tot_len=99)
    assert pkt[0] == 0x46 and len(pkt) == 24 and pkt[20:] == b"\x01\x01\x01\x00"  # padded
    assert struct.unpack("!HH", pkt[2:4] + pkt[10:12]) == (99, 0xBEEF)
    assert build.ipv4(A, B, 6, b"", ihl=3)[0] == 0x43
    good = build.ipv4(A, B, 6, b"", options=b"\x01" * 4)
    assert ip_fast_csum(good[:24]) == 0


def test_tcp_checksum_flags_and_dpkt_view() -> None:
    seg = build.tcp(40000, 22, "SAEC", seq=5, ack=7, window=100, payload=b"hi",
                    options=b"\x02\x04\x05\xb4", src=A, dst=B)
    assert l4_checksum(aton(A), aton(B), 6, seg) == 0
    t = dpkt.tcp.TCP(seg)
    assert (t.sport, t.dport, t.seq, t.ack, t.win, t.data, t.off) == (40000, 22, 5, 7, 100, b"hi", 6)
    assert t.flags == 0x02 | 0x10 | 0x40 | 0x80
    assert build.tcp_flag_bits("FSRPAUEC") == 0xFF and build.tcp_flag_bits("S.") == 0x12
    assert build.tcp(1, 2, "R", check=0x1111)[16:18] == b"\x11\x11"
    assert build.tcp(1, 2)[16:18] == b"\0\0"  # no addresses: no checksum
    with pytest.raises(ValueError):
        build.tcp(1, 2, "SX")


def test_udp_icmp_arp() -> None:
    u = build.udp(5353, 53, b"q" * 5, src=A, dst=B)
    assert l4_checksum(aton(A), aton(B), 17, u) == 0 and dpkt.udp.UDP(u).ulen == 13
    assert build.udp(1, 2, b"", length=3)[4:6] == b"\x00\x03"
    assert build.udp(1, 2, b"", check=0)[6:8] == b"\0\0"
    ic = build.icmp(8, 0, b"data", id=1, seq=2)
    i = dpkt.icmp.ICMP(ic)
    assert (i.type, i.code, i.echo.id, i.echo.seq) == (8, 0, 1, 2)
    assert ip_fast_csum(ic) == 0
    assert build.icmp(3, 4, rest=1400)[4:8] == b"\x00\x00\x05\x78"
    a = dpkt.arp.ARP(build.arp("reply", "aa:bb:cc:dd:ee:ff", A, b"\x01" * 6, B))
    assert (a.op, a.sha, a.spa, a.tha, a.tpa) == (2, bytes.fromhex("aabbccddeeff"), bytes([10, 0, 0, 1]),
                                                  b"\x01" * 6, bytes([10, 0, 0, 2]))


def test_ether_vlan_stack() -> None:
    f = build.ether("ff:ff:ff:ff:ff:ff", "02:00:00:00:00:01", 0x0800, b"P", vlan=[100, 0x2005])
    assert f[12:22] == bytes.fromhex("88a8006481002005" "0800") and f[-1:] == b"P"
    assert build.ether(b"\1" * 6, b"\2" * 6, 0x0806, vlan=7)[12:18] == bytes.fromhex("810000070806")
    with pytest.raises(ValueError):
        build.ether("zz", b"\0" * 6, 0x0800)


def test_whole_packet_helpers() -> None:
    p = build.tcp_packet(A, B, 1, 2, "PA", payload=b"abc", ttl=3, id=9)
    ip = dpkt.ip.IP(p)
    assert ip.ttl == 3 and ip.id == 9 and ip.data.data == b"abc"
    assert l4_checksum(aton(A), aton(B), 6, p[20:]) == 0
    u = build.udp_packet(A, B, 1, 2, b"zz")
    assert l4_checksum(aton(A), aton(B), 17, u[20:]) == 0 and ip_fast_csum(u[:20]) == 0
    orig = build.udp_packet("8.8.8.8", A, 53, 5353, b"x" * 40)
    err = build.icmp_error_packet(A, "8.8.8.8", 3, 3, orig)
    assert err[28:] == orig[:28] and ip_fast_csum(err[20:]) == 0
    assert len(build.ipv6("::1", "::2", 59, b"abcd")) == 44


# ---- decode: exact lines ---------------------------------------------------------------

ETH = ("02:00:00:00:00:02", "02:00:00:00:00:01")


@pytest.mark.parametrize("pkt,line", [
    (build.tcp_packet(A, B, 40000, 22, "S"), "IP 10.0.0.1.40000 > 10.0.0.2.22: TCP [S] seq 0 len 0 ttl 64"),
    (build.tcp_packet(A, B, 40000, 22, "SA", seq=9, ack=10, payload=b"12345", ttl=3),
     "IP 10.0.0.1.40000 > 10.0.0.2.22: TCP [S.] seq 9 ack 10 len 5 ttl 3"),
    (build.tcp_packet(A, B, 1, 2, "FPA"), "IP 10.0.0.1.1 > 10.0.0.2.2: TCP [FP.] seq 0 ack 0 len 0 ttl 64"),
    (build.tcp_packet(A, B, 1, 2, 0), "IP 10.0.0.1.1 > 10.0.0.2.2: TCP [none] seq 0 len 0 ttl 64"),
    (build.icmp_packet(A, B, 8, 0, id=1, seq=1), "IP 10.0.0.1 > 10.0.0.2: ICMP echo request id 1 seq 1 ttl 64"),
    (build.icmp_packet(B, A, 0, 0, id=1, seq=1), "IP 10.0.0.2 > 10.0.0.1: ICMP echo reply id 1 seq 1 ttl 64"),
    (build.icmp_error_packet(A, "8.8.8.8", 3, 3, build.udp_packet("8.8.8.8", A, 53, 5353, b"x")),
     "IP 10.0.0.1 > 8.8.8.8: ICMP dest unreachable port (quoting UDP 8.8.8.8.53 > 10.0.0.1.5353) ttl 64"),
    (build.icmp_error_packet(A, B, 3, 4, build.tcp_packet(B, "1.2.3.4", 5, 6), rest=1400),
     "IP 10.0.0.1 > 10.0.0.2: ICMP dest unreachable frag needed mtu 1400 (quoting TCP 10.0.0.2.5 > 1.2.3.4.6) ttl 64"),
    (build.icmp_error_packet(A, B, 11, 0, build.icmp_packet(B, "9.9.9.9")),
     "IP 10.0.0.1 > 10.0.0.2: ICMP time exceeded in-transit (quoting ICMP 10.0.0.2 > 9.9.9.9) ttl 64"),
    (build.icmp_error_packet(A, B, 5, 1, build.ipv4(B, "9.9.9.9", 47, b""), rest=aton("10.0.0.254")),
     "IP 10.0.0.1 > 10.0.0.2: ICMP redirect host to 10.0.0.254 (quoting GRE 10.0.0.2 > 9.9.9.9) ttl 64"),
    (build.icmp_packet(A, B, 3, 3, b"\x45\x00"),
     "IP 10.0.0.1 > 10.0.0.2: ICMP dest unreachable port (quoting truncated IP (2 bytes)) ttl 64"),
    (build.icmp_error_packet(A, B, 11, 1, build.ipv4(B, A, 17, b"u" * 8, frag_offset=2)),
     "IP 10.0.0.1 > 10.0.0.2: ICMP time exceeded reassembly (quoting UDP frag 10.0.0.2 > 10.0.0.1) ttl 64"),
    (build.icmp_packet(A, B, 13, 0), "IP 10.0.0.1 > 10.0.0.2: ICMP timestamp request ttl 64"),
    (build.icmp_packet(A, B, 42, 3), "IP 10.0.0.1 > 10.0.0.2: ICMP type 42 code 3 ttl 64"),
    (build.udp_packet(A, B, 5353, 53, b"abc"), "IP 10.0.0.1.5353 > 10.0.0.2.53: UDP len 3 ttl 64"),
    (build.ipv4(A, B, 17, build.udp(1, 2, b"abc", length=99)),
     "IP 10.0.0.1.1 > 10.0.0.2.2: UDP len 3 [udp length 99] ttl 64"),
    (build.ipv4(A, B, 17, b"x" * 1480, id=5, frag_offset=185),
     "IP 10.0.0.1 > 10.0.0.2: frag id 5 off 1480 len 1480 UDP ttl 64"),
    (build.ipv4(A, B, 1, b"x" * 8, id=5, frag_offset=1, mf=True),
     "IP 10.0.0.1 > 10.0.0.2: frag id 5 off 8 len 8 ICMP MF ttl 64"),
    (build.ipv4(A, B, 17, build.udp(1, 2, b"x" * 20)[:16], id=5, mf=True),
     "IP 10.0.0.1.1 > 10.0.0.2.2: UDP len 8 [udp length 28] frag id 5 off 0 MF ttl 64"),
    (build.ipv4(A, B, 6, b"\x00\x01\x00\x02abcd"),
     "IP 10.0.0.1.1 > 10.0.0.2.2: TCP truncated (8 bytes) ttl 64"),
    (build.ipv4(A, B, 6, build.tcp(1, 2, "S")[:19]), "IP 10.0.0.1.1 > 10.0.0.2.2: TCP truncated (19 bytes) ttl 64"),
    (build.ipv4(A, B, 6, build.tcp(1, 2, "S", doff=15)),
     "IP 10.0.0.1.1 > 10.0.0.2.2: TCP [S] seq 0 bad data offset 60 ttl 64"),
    (build.ipv4(A, B, 132, b"z" * 12), "IP 10.0.0.1.31354 > 10.0.0.2.31354: SCTP len 12 ttl 64"),
    (build.ipv4(A, B, 253, b"z"), "IP 10.0.0.1 > 10.0.0.2: proto 253 len 1 ttl 64"),
    (build.icmp_packet(A, B, tot_len=0), "IP 10.0.0.1 > 10.0.0.2: ICMP echo request id 0 seq 0 ttl 64 [bad tot_len 0]"),
    (build.udp_packet(A, B, 1, 2, b"x" * 10, tot_len=100),
     "IP 10.0.0.1.1 > 10.0.0.2.2: UDP len 72 [udp length 18] ttl 64 [truncated: tot_len 100, 38 captured]"),
    (build.ipv4(A, B, 6, b"", ihl=4), "IP 10.0.0.1 > 10.0.0.2: bad ihl 4"),
    (build.ipv4(A, B, 6, b"", ihl=15), "IP 10.0.0.1 > 10.0.0.2: truncated header (ihl 15, 20 bytes)"),
    (build.tcp_packet(A, B, 1, 2, "S")[:12], "IP truncated (12 bytes)"),
    (b"", "IP truncated (0 bytes)"),
    (b"\x55" + b"\0" * 30, "IP bad version 5 (31 bytes)"),
    (build.ipv6("2001:db8::1", "2001:db8::2", 6, build.tcp(443, 5555, "SA", seq=1, ack=2)),
     "IPv6 2001:db8::1.443 > 2001:db8::2.5555: TCP [S.] seq 1 ack 2 len 0 hlim 64"),
    (build.ipv6("fe80::1", "ff02::1", 58, bytes([135, 0, 0, 0, 0, 0, 0, 0]) + bytes(15) + b"\x01"),
     "IPv6 fe80::1 > ff02::1: ICMPv6 neighbor solicitation who-has ::1 hlim 64"),
    (build.ipv6("::1", "::2", 0, bytes([44, 0]) + bytes(6) + bytes([17, 0, 0x05, 0xC9, 0, 0, 0, 9]) + b"u" * 8),
     "IPv6 ::1 > ::2: frag id 9 off 1480 len 8 UDP MF hlim 64"),
    (build.ipv6("::1", "::2", 44, bytes([58, 0, 0, 1, 0, 0, 0, 9]) + build.icmp(128, 0, id=3, seq=4)),
     "IPv6 ::1 > ::2: ICMPv6 echo request id 3 seq 4 frag id 9 off 0 MF hlim 64"),
    (build.ipv6("::1", "::2", 59), "IPv6 ::1 > ::2: no next header hlim 64"),
    (build.ipv6("::1", "::2", 0, b"\x3b"), "IPv6 ::1 > ::2: truncated extension header 0 hlim 64"),
    (build.ipv6("::1", "::2", 17, b"", payload_len=50), "IPv6 ::1 > ::2: UDP truncated (0 bytes) hlim 64 "
     "[truncated: payload length 50, 0 captured]"),
    (b"\x60" + bytes(20), "IPv6 truncated (21 bytes)"),
])
def test_describe_ip_lines(pkt: bytes, line: str) -> None:
    assert describe_ip(pkt) == line


def test_describe_ether_and_frame() -> None:
    arp_req = build.arp(1, ETH[1], B, "00:00:00:00:00:00", A)
    assert describe_ether(build.ether("ff:ff:ff:ff:ff:ff", ETH[1], 0x0806, arp_req)) == "ARP who-has 10.0.0.1 tell 10.0.0.2"
    arp_rep = build.arp(2, "aa:bb:cc:dd:ee:ff", A, ETH[1], B)
    assert describe_ether(build.ether(*ETH, 0x0806, arp_rep, vlan=10)) == "vlan 10 ARP reply 10.0.0.1 is-at aa:bb:cc:dd:ee:ff"
    assert describe_ether(build.ether(*ETH, 0x0806, arp_rep[:20])) == "ARP op 2 truncated (20 bytes)"
    assert describe_ether(build.ether(*ETH, 0x0806, b"\x00\x06" + arp_rep[2:])) == "ARP hrd 6 pro 0x0800 hln 6 pln 4 op 2"
    assert describe_ether(build.ether(*ETH, 0x0800, build.icmp_packet(A, B), vlan=[5, 0x3006])) == \
        "vlan 5 vlan 6 IP 10.0.0.1 > 10.0.0.2: ICMP echo request id 0 seq 0 ttl 64"
    assert describe_ether(build.ether(*ETH, 0x88CC, b"abc")) == "ethertype 0x88cc (LLDP) len 3"
    assert describe_ether(b"\x01" * 10) == "[truncated Ethernet header (10 bytes)]"
    f = Frame(0, 0.0, None, 1, None, None, None, (), 0, b"", 60, 60, "unsupported link type 9")
    assert describe_frame(f) == "[unsupported link type 9]"
    f = Frame(3, 0.0, None, 1, None, None, None, (7,), 0x0800, build.udp_packet(A, B, 1, 2), 60, 40,
              "truncated record (40 of 60 bytes)")
    assert describe_frame(f) == "vlan 7 [truncated record (40 of 60 bytes)] IP 10.0.0.1.1 > 10.0.0.2.2: UDP len 0 ttl 64"
    f = Frame(0, 0.0, None, 101, None, None, None, (), 0x86DD, build.ipv6("::1", "::2", 59), 40, 40, None)
    assert describe_frame(f) == "IPv6 ::1 > ::2: no next header hlim 64"


def test_tcp_flags_str_order_matches_tcpdump() -> None:
    assert tcp_flags_str(0x02 | 0x40 | 0x80) == "[SEW]"
    assert tcp_flags_str(0x12) == "[S.]" and tcp_flags_str(0x11) == "[F.]" and tcp_flags_str(0x04) == "[R]"


# ---- decode: never raises -------------------------------------------------------------

SEEDS = [
    build.tcp_packet(A, B, 1, 2, "S", options=b"\x02\x04\x05\xb4"),
    build.icmp_error_packet(A, B, 3, 3, build.udp_packet(B, A, 1, 2, b"x")),
    build.ipv6("::1", "::2", 0, bytes([44, 0]) + bytes(6) + bytes([58, 0, 0, 1, 0, 0, 0, 9])
               + build.icmp(128, 0)),
    build.arp(1, ETH[1], A, ETH[0], B),
]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120))
def test_decode_never_raises_on_random_bytes(data: bytes) -> None:
    for text in (describe_ip(data), describe_ether(data), describe_ip(b"\x45" + data), describe_ip(b"\x60" + data)):
        assert isinstance(text, str) and "undecodable" not in text and "\n" not in text


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
       st.integers(0, 200), st.sampled_from([0x0800, 0x86DD, 0x0806, 0x8100, 0x1234]))
def test_decode_never_raises_on_mutated_packets(seed: bytes, flips: list, cut: int, etype: int) -> None:
    """Valid packets with bytes overwritten and tails cut reach the deep parsing paths."""
    data = bytearray(seed)
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    data = bytes(data[:cut])
    frame = Frame(0, 0.0, None, 1, None, None, None, (), etype, data, len(data), len(data), None)
    for text in (describe_ip(data), describe_frame(frame), describe_ether(build.ether(*ETH, etype, data))):
        assert isinstance(text, str) and "undecodable" not in text


# ---- pcap writer -------------------------------------------------------------------

def test_pcap_writer_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "w.pcap"
    frames = [build.ether(*ETH, 0x0800, build.udp_packet(A, B, 1, 2, bytes(i))) for i in range(5)]
    with PcapWriter(str(path)) as w:
        for i, fr in enumerate(frames):
            w.write(fr, 1700000000 + i * 0.5)
        w.write(frames[0], 1.9999999)  # rounds up into the next second
    with open(path, "rb") as fh:
        got = list(dpkt.pcap.Reader(fh))
    assert [buf for _, buf in got] == frames + frames[:1]
    assert [ts for ts, _ in got][:5] == [1700000000 + i * 0.5 for i in range(5)]
    mine = list(read_frames(str(path)))
    assert mine[-1].ts == 2.0 and mine[2].payload == frames[2][14:]


def test_pcap_writer_snaplen_and_nanoseconds(tmp_path: Path) -> None:
    path = tmp_path / "n.pcap"
    frame = build.ether(*ETH, 0x0800, build.udp_packet(A, B, 1, 2, b"x" * 100))
    with open(path, "wb") as fh:
        with PcapWriter(fh, snaplen=50, nanosecond=True) as w:
            w.write(frame, 5.123456789)
        assert not fh.closed  # caller's file stays open
    (f,) = list(read_frames(str(path)))
    assert (f.caplen, f.wirelen) == (50, len(frame))
    assert f.ts == pytest.approx(5.123456789, abs=1e-9)
