"""Capture reader: the shared corpus (cross-checked against capinfos/tshark) and
synthetic files for every format variant, link type and failure mode."""
from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import tracemalloc
from pathlib import Path

import dpkt
import pytest

from pathtrace.capture import Frame, count_frames, read_frames
from pathtrace.errors import CaptureError
from pathtrace.packet import build
from pathtrace.packet.pcapwriter import PcapWriter

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "pcaps"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not present")

# Packet counts measured with capinfos 4.0 (pcapng: packet blocks only; tshark also lists
# custom blocks of test102/test202 as "frames").
CORPUS_COUNTS = {
    "dpkt_dns_icmp.pcap": (32, 1), "dpkt_nb6-http.pcap": (62, 1), "gopacket_test_loopback.pcap": (24, 0),
    "pcapng_be_test001_basic.pcapng": (4, 1), "pcapng_le_test001_basic.pcapng": (4, 1),
    "pcapng_le_test006_two_linktypes.pcapng": (5, 1), "pcapng_le_test011_spb_epb.pcapng": (4, 1),
    "pcapng_le_test102_all_blocks.pcapng": (5, 1), "pcapng_le_test202_multi_shb_endian.pcapng": (8, 1),
    "sv_frag_ipv6_tcp.pcap": (3, 229), "sv_frag_rawipv4_tcp_syn.pcap": (3, 228),
    "sv_frag_vlan_ipv4_tcp_syn.pcap": (3, 1), "sv_gre_udp_vlan.pcap": (3, 1),
    "sv_icmp_ping_weird_code.pcap": (3, 1), "sv_icmp_redirect.pcap": (1, 1), "sv_ipv4frags_icmp.pcap": (3, 1),
    "sv_ipv6_malformed_frag1.pcap": (13, 1), "sv_ipv6_over_ipv4.pcap": (1, 1),
    "sv_ipv6_tcp_tls_session.pcap": (70, 1), "sv_ipv6_toobig_atomic_frag.pcap": (5, 1),
    "sv_midstream_no_3whs.pcap": (4, 1), "sv_vlan_tcp_rst_session.pcap": (8, 1),
    "sv_vlan_triple_tag.pcap": (2, 1), "tcpdump_802.1ad_QinQ.pcap": (2, 1),
    "tcpdump_LINKTYPE_RAW_ipv4.pcap": (1, 101), "tcpdump_accecn_handshake.pcap": (6, 1),
    "tcpdump_icmp-length-zero.pcapng": (1, 1), "tcpdump_icmpv6.pcap": (5, 1),
    "tcpdump_ipv6-routing-header.pcap": (4, 1), "tcpdump_mpls-traceroute.pcap": (18, 9),
    "tcpdump_nflog.pcap": (4, 239), "tcpdump_print-flags.pcap": (10, 1),
    "tcpdump_tcp-handshake-nano.pcap": (3, 113), "tcpdump_tcp_rst_data.pcap": (1, 1),
    "tcpreplay_test.pcap": (179, 1),
}


# ---- corpus -----------------------------------------------------------------------

@needs_corpus
@pytest.mark.parametrize("name", sorted(CORPUS_COUNTS))
def test_corpus_counts_and_linktype(name: str) -> None:
    path = str(CORPUS / name)
    frames = list(read_frames(path))
    count, linktype = CORPUS_COUNTS[name]
    assert len(frames) == count
    assert count_frames(path) == count
    assert [f.index for f in frames] == list(range(count))
    assert frames[0].linktype == linktype
    supported = linktype not in (9, 239)
    for f in frames:
        assert isinstance(f, Frame)
        assert (f.error is None) == supported, f.error
        assert f.caplen <= f.wirelen
        if supported:
            assert f.ethertype > 0  # tcpreplay_test also has 802.2 LLC (IS-IS) and 0x9000 loopback frames


@needs_corpus
def test_corpus_unsupported_linktype_message() -> None:
    f = next(iter(read_frames(str(CORPUS / "tcpdump_nflog.pcap"))))
    assert f.error == "unsupported link type 239"
    assert f.payload == b"" and f.ethertype == 0


@needs_corpus
def test_corpus_qinq_and_triple_tag() -> None:
    f0, f1 = read_frames(str(CORPUS / "tcpdump_802.1ad_QinQ.pcap"))
    assert f0.vlan == (200, 2001) and f0.ethertype == 0x0806 and len(f0.payload) == 42
    assert f1.src_mac == bytes.fromhex("0080ea818863")
    t0, t1 = read_frames(str(CORPUS / "sv_vlan_triple_tag.pcap"))
    assert t0.vlan == (200, 300, 400) and t0.ethertype == 0x0800
    assert t1.vlan == ()


@needs_corpus
def test_corpus_sll_nanosecond() -> None:
    frames = list(read_frames(str(CORPUS / "tcpdump_tcp-handshake-nano.pcap")))
    assert [f.pkt_type for f in frames] == [4, 0, 4]  # outgoing, host, outgoing
    assert [f.dst_mac for f in frames] == [None] * 3
    # tshark: 1418145369.924505488, 1418145370.052027262, 1418145370.052115157
    assert frames[0].ts == pytest.approx(1418145369.924505488, abs=1e-6)
    assert frames[2].ts - frames[1].ts == pytest.approx(0.000087895, abs=1e-7)
    assert frames[0].payload[0] == 0x45 and frames[0].ethertype == 0x0800


@needs_corpus
def test_corpus_loopback_and_raw() -> None:
    lo = next(iter(read_frames(str(CORPUS / "gopacket_test_loopback.pcap"))))
    assert lo.ethertype == 0x86DD and lo.payload[0] >> 4 == 6 and lo.wirelen == lo.caplen == 560
    assert len(lo.payload) == 556 and lo.src_mac is None and lo.dst_mac is None
    raw = next(iter(read_frames(str(CORPUS / "tcpdump_LINKTYPE_RAW_ipv4.pcap"))))
    assert raw.ethertype == 0x0800 and len(raw.payload) == raw.caplen
    v6 = list(read_frames(str(CORPUS / "sv_frag_ipv6_tcp.pcap")))
    assert [f.ethertype for f in v6] == [0x86DD] * 3 and [f.caplen for f in v6] == [512, 512, 140]


@needs_corpus
def test_corpus_pcapng_interfaces_sections_spb() -> None:
    two = list(read_frames(str(CORPUS / "pcapng_le_test006_two_linktypes.pcapng")))
    assert [(f.ifname, f.linktype) for f in two] == [("eth0", 1), ("en1", 0), ("eth0", 1), ("eth0", 1), ("eth0", 1)]
    assert [(f.wirelen, f.caplen) for f in two[:2]] == [(314, 96), (168, 168)]
    assert two[1].ts == pytest.approx(1340954905.299858, abs=1e-6)
    # test202: 3 sections, the middle one big-endian with its own interface 0 (snaplen 128)
    multi = list(read_frames(str(CORPUS / "pcapng_le_test202_multi_shb_endian.pcapng")))
    assert [f.ifname for f in multi] == ["eth0", "eth0", "null1"] + ["silly ethernet interface 2"] * 4 + ["null1"]
    assert [f.caplen for f in multi] == [96, 96, 168, 128, 128, 128, 128, 168]
    assert [f.linktype for f in multi] == [1, 1, 0, 1, 1, 1, 1, 0]
    assert all(f.error is None for f in multi)
    # SPBs have no timestamp: they keep the previous packet's
    spb = list(read_frames(str(CORPUS / "pcapng_le_test011_spb_epb.pcapng")))
    assert [f.ts for f in spb] == [0.0, spb[1].ts, spb[1].ts, spb[3].ts]
    assert spb[1].ts == pytest.approx(1340954905.298858, abs=1e-6)
    allb = list(read_frames(str(CORPUS / "pcapng_le_test102_all_blocks.pcapng")))
    assert allb[1].ifname == "silly!\r\nethernet interface 2"
    assert (allb[2].wirelen, allb[2].caplen) == (314, 96)  # SPB cut to IDB snaplen


@needs_corpus
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_corpus_matches_tshark() -> None:
    """Every corpus frame's time, lengths and (for Ethernet) MACs agree with tshark."""
    for path in sorted(CORPUS.iterdir()):
        out = subprocess.run(
            ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|", "-e", "frame.interface_id",
             "-e", "frame.time_epoch", "-e", "frame.len", "-e", "frame.cap_len", "-e", "eth.src"],
            capture_output=True, text=True, check=True).stdout
        rows = [r.split("|") for r in out.splitlines()]
        if path.suffix == ".pcapng":
            rows = [r for r in rows if r[0]]  # drop custom blocks
        frames = list(read_frames(str(path)))
        assert len(rows) == len(frames), path.name
        for r, f in zip(rows, frames):
            if r[1]:
                assert f.ts == pytest.approx(float(r[1]), abs=2e-6), (path.name, f.index)
            assert (f.wirelen, f.caplen) == (int(r[2]), int(r[3])), (path.name, f.index)
            if f.linktype == 1:
                assert f.src_mac.hex(":") == r[4].split(",")[0], (path.name, f.index)


# ---- synthetic pcap ---------------------------------------------------------------

FRAMES = [
    build.ether("02:00:00:00:00:02", "02:00:00:00:00:01", 0x0800, build.tcp_packet("10.0.0.1", "10.0.0.2", 1000, 22)),
    build.ether("ff:ff:ff:ff:ff:ff", "02:00:00:00:00:01", 0x0806,
                build.arp(1, "02:00:00:00:00:01", "10.0.0.1", "00:00:00:00:00:00", "10.0.0.2"), vlan=[100, 10]),
    build.ether("02:00:00:00:00:02", "02:00:00:00:00:01", 0x86DD, build.ipv6("::1", "::2", 59)),
]


def pcap_bytes(records: list[tuple[int, int, bytes]], magic: int = 0xA1B2C3D4, endian: str = "<",
               linktype: int = 1, wirelen_extra: int = 0) -> bytes:
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for sec, frac, data in records:
        out += struct.pack(endian + "IIII", sec, frac, len(data), len(data) + wirelen_extra)
        if magic == 0xA1B2CD34:
            out += struct.pack(endian + "IHBB", 3, 0x0800, 0, 0)
        out += data
    return out


def write(tmp_path: Path, data: bytes, name: str = "c.pcap") -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("magic,scale", [(0xA1B2C3D4, 1e6), (0xA1B23C4D, 1e9), (0xA1B2CD34, 1e6)])
def test_pcap_magic_variants(tmp_path: Path, endian: str, magic: int, scale: float) -> None:
    recs = [(1700000000 + i, int(0.25 * scale) * (i + 1), fr) for i, fr in enumerate(FRAMES)]
    path = write(tmp_path, pcap_bytes(recs, magic, endian, wirelen_extra=4))
    frames = list(read_frames(path))
    assert count_frames(path) == 3
    assert [f.ts for f in frames] == [1700000000.25, 1700000001.5, 1700000002.75]
    assert [f.ethertype for f in frames] == [0x0800, 0x0806, 0x86DD]
    assert frames[1].vlan == (100, 10)
    assert frames[0].dst_mac == bytes.fromhex("020000000002") and frames[0].src_mac == bytes.fromhex("020000000001")
    assert frames[0].payload == FRAMES[0][14:]
    assert frames[1].payload == FRAMES[1][22:]
    assert [(f.caplen, f.wirelen) for f in frames] == [(len(x), len(x) + 4) for x in FRAMES]
    assert all(f.error is None and f.ifname is None and f.pkt_type is None for f in frames)


def test_reader_attributes_and_early_error(tmp_path: Path) -> None:
    path = write(tmp_path, pcap_bytes([(1, 0, FRAMES[0])], linktype=101))
    with read_frames(path) as reader:
        assert reader.format == "pcap" and reader.linktype == 101
        assert len(list(reader)) == 1
    with pytest.raises(CaptureError):
        read_frames(str(tmp_path / "missing.pcap"))  # raises before iteration


IP4 = build.icmp_packet("10.0.0.1", "10.0.0.2", id=1, seq=1)
IP6 = build.ipv6("fe80::1", "fe80::2", 59)


def sll(pkt_type: int, proto: int, payload: bytes, mac: bytes = bytes.fromhex("020000000001")) -> bytes:
    return struct.pack("!HHH", pkt_type, 1, len(mac)) + mac.ljust(8, b"\0") + struct.pack("!H", proto) + payload


def sll2(pkt_type: int, proto: int, payload: bytes) -> bytes:
    return struct.pack("!HHIHBB", proto, 0, 7, 1, pkt_type, 6) + bytes.fromhex("0200000000010000") + payload


@pytest.mark.parametrize("linktype,data,expect", [
    (113, sll(3, 0x0800, IP4), (None, "020000000001", 3, (), 0x0800, IP4, None)),
    (113, sll(1, 0x8100, b"\x00\x05\x08\x06" + b"arp"), (None, "020000000001", 1, (5,), 0x0806, b"arp", None)),
    (113, sll(0, 0x0800, IP4, mac=b""), (None, None, 0, (), 0x0800, IP4, None)),
    (276, sll2(4, 0x86DD, IP6), (None, "020000000001", 4, (), 0x86DD, IP6, None)),
    (101, IP4, (None, None, None, (), 0x0800, IP4, None)),
    (101, IP6, (None, None, None, (), 0x86DD, IP6, None)),
    (12, IP6, (None, None, None, (), 0x86DD, IP6, None)),
    (14, IP4, (None, None, None, (), 0x0800, IP4, None)),
    (228, IP4, (None, None, None, (), 0x0800, IP4, None)),
    (229, IP6, (None, None, None, (), 0x86DD, IP6, None)),
    (101, b"\x50abc", (None, None, None, (), 0, b"\x50abc", "raw packet with IP version 5")),
    (101, b"", (None, None, None, (), 0, b"", "empty raw IP packet")),
    (0, struct.pack("<I", 2) + IP4, (None, None, None, (), 0x0800, IP4, None)),
    (0, struct.pack(">I", 2) + IP4, (None, None, None, (), 0x0800, IP4, None)),
    (0, struct.pack("<I", 30) + IP6, (None, None, None, (), 0x86DD, IP6, None)),
    (0, struct.pack("<I", 24) + IP6, (None, None, None, (), 0x86DD, IP6, None)),
    (108, struct.pack(">I", 28) + IP6, (None, None, None, (), 0x86DD, IP6, None)),
    (108, struct.pack(">I", 10) + IP6, (None, None, None, (), 0x86DD, IP6, None)),
    (0, struct.pack("<I", 7) + IP4, (None, None, None, (), 0, IP4, "unsupported loopback address family 7")),
    (0, b"\x02\x00", (None, None, None, (), 0, b"", "truncated loopback header (2 bytes)")),
    (1, b"\x01" * 10, (None, None, None, (), 0, b"", "truncated Ethernet header (10 bytes)")),
    (1, b"\x01" * 12 + b"\x00\x30" + b"\xe0\xe0\x03", ("010101010101", "010101010101", None, (), 0x0004, b"\xe0\xe0\x03", None)),
    (1, b"\x01" * 12 + b"\x00\x30" + b"\xff\xff\x03", ("010101010101", "010101010101", None, (), 0x0001, b"\xff\xff\x03", None)),
    (1, b"\x01" * 12 + b"\x91\x00\x20\x07\x81\x00\x00\x0a\x08\x00" + IP4,
     ("010101010101", "010101010101", None, (0x2007, 10), 0x0800, IP4, None)),
    (1, b"\x01" * 12 + b"\x81\x00\x00", ("010101010101", "010101010101", None, (), 0x8100, b"\x00",
                                       "truncated VLAN tag (1 bytes)")),
    (113, b"\x00" * 15, (None, None, None, (), 0, b"", "truncated Linux cooked header (15 bytes)")),
    (276, b"\x00" * 19, (None, None, None, (), 0, b"", "truncated Linux cooked v2 header (19 bytes)")),
    (147, IP4, (None, None, None, (), 0, b"", "unsupported link type 147")),
])
def test_linktypes(tmp_path: Path, linktype: int, data: bytes, expect: tuple) -> None:
    path = write(tmp_path, pcap_bytes([(5, 0, data)], linktype=linktype))
    (f,) = list(read_frames(path))
    dst, src, pkt_type, vlan, etype, payload, error = expect
    got = (f.dst_mac and f.dst_mac.hex(), f.src_mac and f.src_mac.hex(), f.pkt_type, f.vlan, f.ethertype,
           f.payload, f.error)
    assert got == (dst, src, pkt_type, vlan, etype, payload, error)
    assert f.linktype == linktype and f.caplen == len(data) and f.ts == 5.0


@pytest.mark.parametrize("content,message", [
    (b"", "empty file"),
    (b"hello world, this is not a capture file at all", "not a pcap or pcapng file"),
    (struct.pack("<I", 0xA1B2C3D4) + b"\x02\x00\x04\x00\x00\x00", "truncated pcap file header (10 of 24 bytes)"),
    (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00", "truncated or corrupt pcapng section header"),
    (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x11\x22\x33\x44" + b"\0" * 16, "truncated or corrupt pcapng section header"),
])
def test_bad_files_raise_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(CaptureError) as info:
        read_frames(path)
    assert message in str(info.value) and info.value.file == path
    assert "\n" not in str(info.value) and str(info.value).startswith(path + ": ")
    with pytest.raises(CaptureError):
        count_frames(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="cannot open capture: No such file"):
        read_frames(str(tmp_path / "nope.pcap"))


def test_corrupt_record_length_raises(tmp_path: Path) -> None:
    data = pcap_bytes([(1, 0, FRAMES[0])]) + struct.pack("<IIII", 2, 0, 0xFFFFFF00, 60) + b"x" * 100
    path = write(tmp_path, data)
    reader = read_frames(path)
    assert next(reader).index == 0
    with pytest.raises(CaptureError, match="corrupt pcap record 1"):
        next(reader)


def test_truncated_last_record_yields_error_frame(tmp_path: Path) -> None:
    full = pcap_bytes([(1, 0, FRAMES[0]), (2, 0, FRAMES[1])])
    path = write(tmp_path, full[:-10])
    frames = list(read_frames(path))
    assert len(frames) == 2 and count_frames(path) == 2
    assert frames[0].error is None
    assert frames[1].error == f"truncated record ({len(FRAMES[1]) - 10} of {len(FRAMES[1])} bytes)"
    assert frames[1].caplen == len(FRAMES[1]) - 10 and frames[1].vlan == (100, 10)  # L2 still parsed
    # a partial record header is dropped silently
    path = write(tmp_path, full[:24 + 16 + len(FRAMES[0]) + 7], "c2.pcap")
    assert len(list(read_frames(path))) == 1 == count_frames(path)


def test_every_cut_point_is_safe(tmp_path: Path) -> None:
    """Cutting a pcap or pcapng anywhere after its header never raises, and count_frames agrees."""
    for name, full, head in (("p.pcap", pcap_bytes([(1, 0, fr) for fr in FRAMES]), 24),
                             ("p.pcapng", PCAPNG_SAMPLE, 28)):
        for cut in range(head, len(full) + 1):
            path = write(tmp_path, full[:cut], name)
            frames = list(read_frames(path))
            assert len(frames) == count_frames(path), cut
            assert all(f.error is None for f in frames[:-1]), cut


def test_gzip_and_stream_chunk_boundaries(tmp_path: Path) -> None:
    """Records straddling the 1 MiB read chunks, compared with dpkt as an independent reader."""
    sizes = [60, 1514, 9000, 64, 300, 70000]
    path = tmp_path / "big.pcap"
    with PcapWriter(str(path)) as w:
        for i in range(700):
            frame = build.ether("02:00:00:00:00:02", "02:00:00:00:00:01", 0x0800,
                                bytes([i % 251]) * (sizes[i % len(sizes)] - 14))
            w.write(frame, 1000 + i * 0.001)
    assert path.stat().st_size > 3 << 20
    with open(path, "rb") as fh:
        expected = [(ts, buf) for ts, buf in dpkt.pcap.Reader(fh)]
    gz = tmp_path / "big.pcap.gz"
    gz.write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
    for p in (str(path), str(gz)):
        frames = list(read_frames(p))
        assert len(frames) == len(expected) == 700
        for f, (ts, buf) in zip(frames, expected):
            assert f.ts == pytest.approx(ts, abs=1e-6)
            assert f.payload == buf[14:] and f.caplen == len(buf)
    assert count_frames(str(gz)) is None


def test_memory_stays_flat(tmp_path: Path) -> None:
    path = tmp_path / "m.pcap"
    frame = build.ether("02:00:00:00:00:02", "02:00:00:00:00:01", 0x0800, b"\x45" + b"\0" * 1485)
    with PcapWriter(str(path)) as w:
        for i in range(9000):
            w.write(frame, i)
    assert path.stat().st_size > 12 << 20
    tracemalloc.start()
    try:
        n = sum(1 for _ in read_frames(str(path)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 9000
    assert peak < 4 << 20, peak  # reading the file whole would need > 12 MiB


# ---- synthetic pcapng ---------------------------------------------------------------

def block(e: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def opt(e: str, code: int, value: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def shb(e: str) -> bytes:
    return block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(e: str, linktype: int, snaplen: int = 0, name: str | None = None, tsresol: int | None = None,
        tsoffset: int | None = None) -> bytes:
    opts = b""
    if name is not None:
        opts += opt(e, 2, name.encode())
    if tsresol is not None:
        opts += opt(e, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += opt(e, 14, struct.pack(e + "q", tsoffset))
    if opts:
        opts += struct.pack(e + "HH", 0, 0)
    return block(e, 1, struct.pack(e + "HHI", linktype, 0, snaplen) + opts)


def epb(e: str, ifid: int, ticks: int, data: bytes, wirelen: int | None = None, caplen: int | None = None) -> bytes:
    return block(e, 6, struct.pack(e + "IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF,
                                   len(data) if caplen is None else caplen,
                                   len(data) if wirelen is None else wirelen) + data)


def spb(e: str, data: bytes, wirelen: int | None = None) -> bytes:
    return block(e, 3, struct.pack(e + "I", len(data) if wirelen is None else wirelen) + data)


def pb(e: str, ifid: int, ticks: int, data: bytes) -> bytes:
    return block(e, 2, struct.pack(e + "HHIIII", ifid, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data)) + data)


PCAPNG_SAMPLE = (shb("<") + idb("<", 1, name="eth0") + epb("<", 0, 1_500_000, FRAMES[0])
                 + spb("<", FRAMES[1]) + pb("<", 0, 2_000_000, FRAMES[2]))


@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_blocks_options_sections(tmp_path: Path, e: str) -> None:
    other = ">" if e == "<" else "<"
    data = (
        shb(e)
        + block(e, 0x0BAD, b"\0\0\x7e\xd9custom")          # custom block: skipped
        + idb(e, 1, name="eth0\0")                          # NUL-terminated name is tolerated
        + idb(e, 101, name="tun0", tsresol=9)              # nanoseconds
        + idb(e, 113, tsresol=0x80 | 10, tsoffset=100)     # 2^-10 s, +100 s, no name
        + block(e, 5, b"\0" * 12)                           # ISB: skipped
        + epb(e, 0, 1_700_000_000_250_000, FRAMES[0], wirelen=1000)
        + epb(e, 1, 1_700_000_000_123_456_789, IP4)
        + epb(e, 2, 1024 * 5 + 512, sll(4, 0x0800, IP4))
        + spb(e, FRAMES[1])
        + pb(e, 0, 3_000_000, FRAMES[2])
        + epb(e, 7, 1, FRAMES[0])                           # undefined interface
        + shb(other)                                        # new section: interfaces reset
        + epb(other, 1, 5, FRAMES[0])
        + spb(other, FRAMES[0])
        + idb(other, 1, snaplen=20, name="second")
        + spb(other, FRAMES[0])                             # cut to snaplen 20
        + spb(other, FRAMES[0][:10], wirelen=15)            # claims more than it holds
        + epb(other, 0, 2_000_000, FRAMES[0], caplen=9999)  # caplen beyond its block
    )
    path = write(tmp_path, data, "t.pcapng")
    frames = list(read_frames(path))
    assert count_frames(path) == len(frames) == 11
    assert [f.index for f in frames] == list(range(11))
    assert [f.ifname for f in frames] == ["eth0", "tun0", None, "eth0", "eth0", None, None, None] + ["second"] * 3
    assert [f.linktype for f in frames] == [1, 101, 113, 1, 1, -1, -1, -1, 1, 1, 1]
    assert frames[0].ts == 1700000000.25 and frames[0].wirelen == 1000
    assert frames[1].ts == pytest.approx(1700000000.123456789, abs=1e-6) and frames[1].payload == IP4
    assert frames[2].ts == 105.5 and frames[2].pkt_type == 4
    assert frames[3].ts == frames[2].ts and frames[3].vlan == (100, 10)  # SPB: previous ts
    assert frames[4].ts == 3.0 and frames[4].ethertype == 0x86DD
    assert frames[5].error == "packet refers to undefined interface 7" and frames[5].payload == b""
    assert frames[6].error == "packet refers to undefined interface 1"  # new section: old IDBs are gone
    assert frames[7].error == "simple packet block before any interface description"
    assert (frames[8].caplen, frames[8].wirelen, frames[8].error) == (20, len(FRAMES[0]), None)
    assert (frames[9].error, frames[9].caplen) == ("packet length 15 exceeds its simple packet block", 12)
    assert frames[10].error == "captured length 9999 exceeds its block" and frames[10].caplen == 56  # padded body
    for f in (frames[0], frames[3], frames[4]):
        assert f.error is None


def test_pcapng_corrupt_block_length(tmp_path: Path) -> None:
    data = PCAPNG_SAMPLE + struct.pack("<II", 6, 13) + b"\0" * 20
    path = write(tmp_path, data, "c.pcapng")
    with pytest.raises(CaptureError, match="corrupt pcapng block at byte"):
        list(read_frames(path))
    with pytest.raises(CaptureError, match="corrupt pcapng block"):
        count_frames(path)


def test_pcapng_truncated_last_epb(tmp_path: Path) -> None:
    path = write(tmp_path, PCAPNG_SAMPLE + epb("<", 0, 9, FRAMES[0])[:-20], "t.pcapng")
    frames = list(read_frames(path))
    assert len(frames) == 4 == count_frames(path)
    # 20 bytes cut = 4 trailer + 2 padding + 14 packet bytes
    assert frames[-1].error == f"truncated record ({len(FRAMES[0]) - 14} of {len(FRAMES[0])} bytes)"
    assert frames[-1].caplen == len(FRAMES[0]) - 14 and frames[-1].ethertype == 0x0800


def test_stdin_dash(tmp_path: Path) -> None:
    path = write(tmp_path, PCAPNG_SAMPLE, "s.pcapng")
    code = ("from pathtrace.capture import read_frames, count_frames;"
            "print(len(list(read_frames('-'))), count_frames('-'))")
    with open(path, "rb") as fh:
        out = subprocess.run([os.sys.executable, "-c", code], stdin=fh, capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["3", "None"], out.stderr


def test_pcapng_malformed_idb(tmp_path: Path) -> None:
    data = shb("<") + block("<", 1, b"\x01\x00") + epb("<", 0, 1, FRAMES[0])
    (f,) = list(read_frames(write(tmp_path, data, "m.pcapng")))
    assert (f.linktype, f.error, f.payload) == (-1, "malformed interface description block", b"")


def test_pcap_linktype_fcs_bits_ignored(tmp_path: Path) -> None:
    """The header's upper linktype bits carry FCS info (pcap spec), not the link type."""
    (f,) = list(read_frames(write(tmp_path, pcap_bytes([(1, 0, FRAMES[0])], linktype=0x14000001))))
    assert f.linktype == 1 and f.error is None and f.ethertype == 0x0800


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_fifo_streams_as_data_arrives(tmp_path: Path, kind: str) -> None:
    """A capture piped in (`tcpdump -w - | ...`) yields frames as they arrive, not per MiB."""
    import threading

    fifo = tmp_path / "cap.fifo"
    os.mkfifo(fifo)
    if kind == "pcap":
        data = pcap_bytes([(i, 0, FRAMES[i % 3]) for i in range(50)])
        first = 24 + sum(16 + len(FRAMES[i % 3]) for i in range(10))
    else:
        recs = [epb("<", 0, i * 1_000_000, FRAMES[i % 3]) for i in range(50)]
        data = shb("<") + idb("<", 1) + b"".join(recs)
        first = len(data) - sum(len(r) for r in recs[10:])
    got_ten = threading.Event()
    waited: list[bool] = []

    def feed() -> None:
        with open(fifo, "wb") as w:
            for i in range(0, first, 37):  # first ten records, in small pieces
                w.write(data[i:min(i + 37, first)])
                w.flush()
            waited.append(got_ten.wait(10))  # the reader must have them before we send more
            w.write(data[first:])

    t = threading.Thread(target=feed)
    t.start()
    frames = []
    try:
        for f in read_frames(str(fifo)):
            frames.append(f)
            if len(frames) == 10:
                got_ten.set()
    finally:
        got_ten.set()
        t.join(20)
    assert waited == [True]
    assert len(frames) == 50 and all(f.error is None for f in frames)
    assert [f.ts for f in frames] == [float(i) for i in range(50)]
