"""Direction, interface and time order of captured frames (issue 11, parts 1 and 6).

Real captures: tests/data/*.pcap* recorded on a router in network namespaces by
tests/data/make_direction_captures.py (tcpdump -i eth0, tcpdump -i any in SLL2 and SLL,
dumpcap -i eth0 -i eth1, dumpcap -i any); host file tests/data/direction-host.yaml.
Synthetic pcapng/SLL2 bytes cover what the tools here do not write (epb_flags)."""
from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from helpers import CORPUS
from pathtrace.capture import read_frames, time_ordered
from pathtrace.capture.frame import DIR_INBOUND, DIR_OUTBOUND, DIR_UNKNOWN, Frame
from pathtrace.capture.ifmap import IfindexSeen, parse_ifindex_option, resolve_ifindex, scan_ifindexes
from pathtrace.capture.reorder import OrderedFrames, ReorderStats
from pathtrace.errors import HostFileError, PathtraceError
from pathtrace.host.loader import load_host
from pathtrace.packet import build
from pathtrace.replay import Replayer, ReplayOptions, create_namespace

DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parents[1]
HOST = DATA / "direction-host.yaml"
HOST_MACS = {bytes.fromhex("020000000101"), bytes.fromhex("020000000201")}
IFINDEX = {7: "eth0", 9: "eth1"}          # what make_direction_captures.py gives the router
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


def _frames(name: str) -> list[Frame]:
    return list(read_frames(str(DATA / name)))


# ---- the recorded captures ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["any_sll2.pcap", "any_sll.pcap", "dumpcap_any.pcapng"])
def test_cooked_captures_give_every_frame_a_direction(name):
    """tcpdump/dumpcap -i any: OUTGOING frames carry the router's own MAC, received ones the
    neighbour's, and the capture holds both directions."""
    frames = _frames(name)
    assert frames and all(f.error is None for f in frames)
    out = [f for f in frames if f.direction == DIR_OUTBOUND]
    inb = [f for f in frames if f.direction == DIR_INBOUND]
    assert len(out) + len(inb) == len(frames) and out and inb
    assert all(f.pkt_type == 4 for f in out) and all(f.pkt_type in (0, 1, 2, 3) for f in inb)
    assert {f.src_mac for f in out} == HOST_MACS
    assert not {f.src_mac for f in inb} & HOST_MACS
    assert all(f.dst_mac is None for f in frames)


def test_sll2_ifindex_is_the_capturing_hosts_index():
    frames = _frames("any_sll2.pcap")
    assert {f.ifindex for f in frames} == set(IFINDEX)
    mac_of = {7: bytes.fromhex("020000000101"), 9: bytes.fromhex("020000000201")}
    for f in frames:
        if f.direction == DIR_OUTBOUND:
            assert f.src_mac == mac_of[f.ifindex]
    assert all(f.ifindex is None for f in _frames("any_sll.pcap"))


def test_the_same_packets_through_two_tools():
    """eth0's frames in the SLL2 capture (ifindex 7) are the frames tcpdump -i eth0 wrote, in
    order; the Ethernet capture itself has no direction."""
    eth = _frames("eth0.pcap")
    assert all(f.direction == DIR_UNKNOWN and f.ifindex is None for f in eth)
    sll = [f for f in _frames("any_sll2.pcap") if f.ifindex == 7]
    assert [f.payload for f in sll] == [f.payload for f in eth]
    own = bytes.fromhex("020000000101")
    assert [f.direction == DIR_OUTBOUND for f in sll] == [f.src_mac == own for f in eth]


@needs_tshark
@pytest.mark.parametrize("name", ["any_sll2.pcap", "any_sll.pcap", "dumpcap_any.pcapng"])
def test_direction_and_ifindex_agree_with_tshark(name):
    out = subprocess.run(["tshark", "-r", str(DATA / name), "-T", "fields", "-e", "sll.pkttype", "-e", "sll.ifindex"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    frames = _frames(name)
    assert len(out) == len(frames)
    for f, line in zip(frames, out):
        pkttype, _, ifindex = line.partition("\t")
        assert f.direction == (DIR_OUTBOUND if int(pkttype) == 4 else DIR_INBOUND)
        assert f.ifindex == (int(ifindex) if ifindex else None)


def test_dumpcap_writes_no_direction_and_batches_per_interface():
    """dumpcap 4.0 on Linux: no epb_flags, if_name per interface, and the file is not in time
    order; ordered="auto" sees the two interfaces and sorts it."""
    frames = _frames("dumpcap.pcapng")
    assert all(f.direction == DIR_UNKNOWN for f in frames)
    assert {f.ifname for f in frames} == {"eth0", "eth1"}
    ts = [f.ts for f in frames]
    assert ts != sorted(ts)
    reader = read_frames(str(DATA / "dumpcap.pcapng"))
    assert reader.may_be_unordered()
    ordered = read_frames(str(DATA / "dumpcap.pcapng"), ordered="auto")
    assert isinstance(ordered, OrderedFrames) and not hasattr(ordered, "cursor")
    out = list(ordered)
    assert [f.ts for f in out] == sorted(ts)
    assert sorted(f.index for f in out) == list(range(len(frames)))
    assert ordered.stats.out_of_order > 0 and ordered.stats.late == 0
    # the forwarded ping's copy leaving eth1 now comes after its original entering eth0
    fwd = [f for f in out if f.ethertype == 0x0800 and f.payload[9] == 1 and f.payload[16:20] == bytes([10, 2, 0, 2])]
    assert [f.ifname for f in fwd[:2]] == ["eth0", "eth1"]


@pytest.mark.parametrize("name", ["eth0.pcap", "any_sll2.pcap", "dumpcap_any.pcapng"])
def test_single_handle_captures_stay_in_file_order(name):
    reader = read_frames(str(DATA / name), ordered="auto")
    assert reader.cursor is not None
    assert [f.index for f in reader] == list(range(len(_frames(name))))


# ---- synthetic pcapng: epb_flags ------------------------------------------------------------

def _opt(e: str, code: int, value: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(e: str, btype: int, body: bytes) -> bytes:
    n = 12 + len(body)
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def _pcapng(packets, e: str = "<", ifaces=(("eth0", 1),)) -> bytes:
    """A pcapng section; packets: (ifid, ts, data, options bytes or None)."""
    out = [_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))]
    for name, linktype in ifaces:
        out.append(_block(e, 1, struct.pack(e + "HHI", linktype, 0, 0) + _opt(e, 2, name.encode()) + _opt(e, 0, b"")))
    for ifid, ts, data, opts in packets:
        ticks = round(ts * 1e6)
        body = struct.pack(e + "IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data))
        body += data + b"\0" * (-len(data) % 4)
        if opts is not None:
            body += opts + _opt(e, 0, b"")
        out.append(_block(e, 6, body))
    return b"".join(out)


def _flags(e: str, value: int) -> bytes:
    return _opt(e, 2, struct.pack(e + "I", value))


ETH = bytes.fromhex("020000000101") + bytes.fromhex("020000000102") + b"\x08\x00"
PKT = ETH + build.udp_packet("10.1.0.2", "10.1.0.1", 1000, 53, b"x" * 5)


@pytest.mark.parametrize("e", ["<", ">"])
def test_epb_flags_direction(tmp_path, e):
    comment = _opt(e, 1, b"a comment first")
    packets = [(0, 1.0, PKT, _flags(e, 0x1)), (0, 1.1, PKT, _flags(e, 0x2)), (0, 1.2, PKT, None),
               (0, 1.3, PKT, comment + _flags(e, 0x6)), (0, 1.4, PKT, _flags(e, 0x3)),
               (0, 1.5, PKT, _flags(e, 0x0)), (0, 1.6, PKT[:41], _flags(e, 0x2))]
    path = tmp_path / "f.pcapng"
    path.write_bytes(_pcapng(packets, e))
    frames = list(read_frames(str(path)))
    assert [f.direction for f in frames] == [1, 2, 0, 2, 0, 0, 2]
    assert all(f.payload[:20] == PKT[14:34] for f in frames)


@pytest.mark.parametrize("e", ["<", ">"])
def test_auto_order_by_interfaces_declared(tmp_path, e):
    """ordered="auto" sorts a pcapng declaring several interfaces, in either byte order, and
    leaves a one-interface file to the reader (and its C lane)."""
    packets = [(0, 2.0, PKT, None), (1, 1.0, PKT, None), (0, 3.0, PKT, None)]
    path = tmp_path / "two.pcapng"
    path.write_bytes(_pcapng(packets, e, ifaces=(("eth0", 1), ("eth1", 1))))
    out = read_frames(str(path), ordered="auto")
    assert [f.index for f in out] == [1, 0, 2]
    one = tmp_path / "one.pcapng"
    one.write_bytes(_pcapng([(0, 2.0, PKT, None), (0, 1.0, PKT, None)], e))
    reader = read_frames(str(one), ordered="auto")
    assert reader.cursor is not None and [f.index for f in reader] == [0, 1]
    assert [f.index for f in read_frames(str(one), ordered=True)] == [1, 0]


def _sll2(pkt_type: int, ifindex: int, mac: bytes, ip: bytes) -> bytes:
    return struct.pack("!HHIHBB", 0x0800, 0, ifindex, 1, pkt_type, 6) + mac + b"\0\0" + ip


def test_sll2_in_pcapng_and_flags_over_packet_type(tmp_path):
    """A cooked frame in pcapng keeps its ifindex; an epb_flags direction wins over the packet type."""
    ip = PKT[14:]
    packets = [(0, 1.0, _sll2(4, 12, b"\x02" * 6, ip), None), (0, 1.1, _sll2(0, 13, b"\x04" * 6, ip), None),
               (0, 1.2, _sll2(0, 12, b"\x02" * 6, ip), _flags("<", 2)), (0, 1.3, _sll2(7, 12, b"\x02" * 6, ip), None)]
    path = tmp_path / "s.pcapng"
    path.write_bytes(_pcapng(packets, ifaces=(("any", 276),)))
    frames = list(read_frames(str(path)))
    assert [(f.direction, f.ifindex, f.ifname) for f in frames] == [(2, 12, "any"), (1, 13, "any"), (2, 12, "any"),
                                                                      (0, 12, "any")]
    assert frames[0].src_mac == b"\x02" * 6 and frames[0].payload == ip


# ---- the C lanes hand host-sent records back to Python --------------------------------------

def _workload():
    sys.path.insert(0, str(ROOT / "bench"))
    import workload
    return workload


class _Lane:
    """The accelerator, recording which record indices each serve call consumed."""

    def __init__(self, accel):
        self.FastEntry, self.rewrite, self._accel = accel.FastEntry, accel.rewrite, accel
        self.consumed: set[int] = set()
        self.served = 0

    def _note(self, index, out):
        self.consumed.update(range(index, out[1]))
        self.served += out[2]
        return out

    def serve_pcap(self, buf, off, index, *rest):
        return self._note(index, self._accel.serve_pcap(buf, off, index, *rest))

    def serve_pcapng(self, buf, off, index, *rest):
        return self._note(index, self._accel.serve_pcapng(buf, off, index, *rest))


def _tally(host: Path, path: Path) -> _Lane:
    from pathtrace.render.summary import SummaryCounter
    r = Replayer(create_namespace(load_host(str(host))), ReplayOptions(record=False, emit_frames=False))
    lane = _Lane(r.cache.accel)
    r.cache.accel = lane
    r.tally(read_frames(str(path)), SummaryCounter())
    return lane


def _udp_conversation(n: int):
    """A masqueraded UDP exchange through bench/workload's router, as raw Ethernet frames."""
    w = _workload()
    lan = build.mac_bytes(w.ROUTER_LAN_MAC) + build.mac_bytes(w.CLIENT_MAC) + b"\x08\x00"
    wan = build.mac_bytes(w.ROUTER_WAN_MAC) + build.mac_bytes(w.GATEWAY_MAC) + b"\x08\x00"
    query = (1, lan + build.udp_packet("192.168.1.7", "203.0.113.9", 5000, 53, b"q" * 20))
    answer = (0, wan + build.udp_packet("203.0.113.9", w.PUBLIC, 53, 5000, b"r" * 20))
    return [answer if i % 2 else query for i in range(n)]


def test_pcapng_lane_stops_at_outbound_epbs(tmp_path):
    pytest.importorskip("pathtrace._fastpath")
    w = _workload()
    host = tmp_path / "r.yaml"
    host.write_text(w.host_yaml(20))
    conv = _udp_conversation(400)
    outbound = set(range(200, 400, 7))
    for name, marks in (("plain", set()), ("flagged", outbound)):
        packets = [(ifid, 1000 + i * 0.001, data, _flags("<", 2 if i in marks else 1)) for i, (ifid, data) in
                   enumerate(conv)]
        path = tmp_path / f"{name}.pcapng"
        path.write_bytes(_pcapng(packets, ifaces=(("eth0", 1), ("eth1", 1))))
        lane = _tally(host, path)
        assert lane.served > 300
        if marks:
            assert not lane.consumed & marks
        else:
            assert lane.consumed & outbound          # the same records are served when inbound


def test_pcap_lane_leaves_cooked_records_to_python(tmp_path):
    pytest.importorskip("pathtrace._fastpath")
    from pathtrace.packet.pcapwriter import PcapWriter
    w = _workload()
    host = tmp_path / "r.yaml"
    host.write_text(w.host_yaml(20))
    path = tmp_path / "c.pcap"
    with PcapWriter(str(path), linktype=276) as pw:
        for i, (ifid, data) in enumerate(_udp_conversation(100)):
            pw.write(_sll2(0, 2 + ifid, data[6:12], data[14:]), 1000 + i * 0.001)
    lane = _tally(host, path)
    assert lane.consumed == set() and lane.served == 0


# ---- the reorder window ---------------------------------------------------------------------

def _f(index: int, ts: float) -> Frame:
    return Frame(index, ts, None, 1, None, None, None, (), 0, b"", 0, 0, None)


def test_time_ordered_is_stable_and_keeps_indices():
    frames = [_f(0, 2.0), _f(1, 1.0), _f(2, 2.0), _f(3, 1.0), _f(4, 0.5), _f(5, 3.0)]
    out = list(time_ordered(frames))
    assert [f.index for f in out] == [4, 1, 3, 0, 2, 5]


def test_time_ordered_window_bounds_and_late_frames():
    st = ReorderStats()
    frames = [_f(i, float(i)) for i in range(10)] + [_f(10, 0.5)]
    out = list(time_ordered(frames, window_frames=3, stats=st))
    assert st.max_held <= 4 and st.late == 1 and st.out_of_order == 1
    assert sorted(f.index for f in out) == list(range(11))
    st2 = ReorderStats()
    assert [f.index for f in time_ordered(frames, window_frames=100, window_seconds=100, stats=st2)] == [0, 10] + list(range(1, 10))
    assert st2.late == 0
    st3 = ReorderStats()
    list(time_ordered(frames, window_frames=100, window_seconds=3.0, stats=st3))   # 10.5 s late: beyond 3 s
    assert st3.late == 1 and st3.max_held <= 5


def _batched_pcapng(path: Path, n: int, batch: int) -> None:
    """n frames of a UDP flow per direction alternating in time, written in per-interface
    batches as dumpcap does (each batch: `batch` frames of one interface)."""
    conv = _udp_conversation(n)
    times = [1000 + i * 0.0001 for i in range(n)]
    per_if: dict[int, list] = {0: [], 1: []}
    for i, (ifid, data) in enumerate(conv):
        per_if[ifid].append((ifid, times[i], data, None))
    packets = []
    for k in range(0, n, batch):
        packets += per_if[0][k:k + batch] + per_if[1][k:k + batch]
    path.write_bytes(_pcapng(packets, ifaces=(("eth0", 1), ("eth1", 1))))


def test_out_of_order_50k_replays_with_bounded_memory(tmp_path):
    """50,000 frames in 100-frame per-interface batches: read in time order the window holds at
    most window_frames frames and the peak allocation does not grow with the file; the
    replay of the ordered stream forwards every frame (in file order half the replies would
    come before their requests)."""
    from pathtrace.render.summary import SummaryCounter
    path = tmp_path / "batched.pcapng"
    _batched_pcapng(path, 50_000, 100)

    def peak_reading(limit: int) -> tuple[int, ReorderStats]:
        frames = read_frames(str(path), ordered=True, window_frames=1000)
        last = 0.0
        tracemalloc.start()
        for n, f in enumerate(frames):
            assert f.ts >= last
            last = f.ts
            if n + 1 == limit:
                break
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        frames.close()
        return peak, frames.stats

    small, _ = peak_reading(5_000)
    peak, stats = peak_reading(50_000)
    assert stats.late == 0 and stats.out_of_order > 20_000 and stats.max_held <= 1001
    assert peak < small * 1.5 + (1 << 20)          # ten times the frames, not ten times the memory

    host = tmp_path / "r.yaml"
    host.write_text(_workload().host_yaml(20))
    net = create_namespace(load_host(str(host)))
    r = Replayer(net, ReplayOptions(record=False, emit_frames=False))
    counter = SummaryCounter()
    r.tally(read_frames(str(path), ordered=True, window_frames=1000), counter)
    assert counter.packets == 50_000 and dict(counter.verdicts) == {("FORWARD", ""): 50_000}
    net = create_namespace(load_host(str(host)))
    file_order = SummaryCounter()
    Replayer(net, ReplayOptions(record=False, emit_frames=False)).tally(read_frames(str(path)), file_order, 1000)
    assert file_order.packets == 1000 and file_order.verdicts[("FORWARD", "")] <= 600   # replies dropped


def test_ordered_option_is_checked():
    with pytest.raises(ValueError):
        read_frames(str(DATA / "eth0.pcap"), ordered="yes")


@pytest.mark.skipif(not (CORPUS / "pcaps").is_dir(), reason="shared corpus not present")
def test_corpus_reads_the_same_ordered_or_not():
    for path in sorted((CORPUS / "pcaps").glob("*")):
        plain = list(read_frames(str(path)))
        auto = list(read_frames(str(path), ordered="auto"))
        assert sorted(f.index for f in auto) == [f.index for f in plain]
        assert all(f.direction == DIR_UNKNOWN for f in plain if f.pkt_type is None), path.name


# ---- SLL2 ifindex -> host interface ---------------------------------------------------------

def test_ifindex_inferred_from_the_recorded_capture():
    seen = scan_ifindexes(read_frames(str(DATA / "any_sll2.pcap")))
    mapping, warnings = resolve_ifindex(load_host(str(HOST)), seen)
    assert mapping == IFINDEX and warnings == []


def test_ifindex_by_subnet_when_macs_do_not_match():
    host = load_host(str(HOST))
    for iface in host.interfaces:
        iface.mac = bytes.fromhex("0a0000000001") if iface.name == "eth0" else bytes.fromhex("0a0000000002")
    seen = scan_ifindexes(read_frames(str(DATA / "any_sll2.pcap")))
    assert resolve_ifindex(host, seen) == (IFINDEX, [])


def test_ifindex_from_host_file_and_option(tmp_path):
    text = HOST.read_text().replace("    addresses: [10.1.0.1/24]", "    addresses: [10.1.0.1/24]\n    ifindex: 9")
    (tmp_path / "h.yaml").write_text(text)
    host = load_host(str(tmp_path / "h.yaml"))
    assert host.interfaces[0].ifindex == 9 and host.interfaces[1].ifindex is None
    seen = scan_ifindexes(read_frames(str(DATA / "any_sll2.pcap")))
    mapping, warnings = resolve_ifindex(host, seen)
    assert mapping == {9: "eth0"}
    assert len(warnings) == 1 and "ifindex 7" in warnings[0] and "eth0" in warnings[0]
    assert resolve_ifindex(host, seen, "7=eth0,9=eth1") == ({7: "eth0", 9: "eth1"}, [])


@pytest.mark.parametrize("option,message", [
    ("2=eth0,3", "'3' is not INDEX=NAME"), ("x=eth0", "ifindex 'x' is not a number"),
    ("0=eth0", "out of range"), ("2=eth7", "no interface 'eth7'"), ("2=eth0,2=eth1", "given twice"),
])
def test_ifindex_option_errors(option, message):
    with pytest.raises(PathtraceError) as exc:
        parse_ifindex_option(option, ["eth0", "eth1"])
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("value,message", [("0", "out of range"), ("x", "must be a number")])
def test_host_file_ifindex_errors(tmp_path, value, message):
    text = HOST.read_text().replace("    addresses: [10.1.0.1/24]", f"    addresses: [10.1.0.1/24]\n    ifindex: {value}")
    (tmp_path / "h.yaml").write_text(text)
    with pytest.raises(HostFileError) as exc:
        load_host(str(tmp_path / "h.yaml"))
    assert message in str(exc.value) and str(exc.value).startswith(f"{tmp_path / 'h.yaml'}:8:")


def test_host_file_ifindex_twice(tmp_path):
    text = HOST.read_text().replace("/24]\n", "/24]\n    ifindex: 4\n")
    (tmp_path / "h.yaml").write_text(text)
    with pytest.raises(HostFileError, match="ifindex 4 already given to eth0"):
        load_host(str(tmp_path / "h.yaml"))


def test_ifindex_ambiguous_and_unmapped_warn():
    host = load_host(str(HOST))
    a, b, far = 0x0A010002, 0x0A020002, 0xC6336401
    seen = {4: IfindexSeen(5, addrs={a: 3, b: 3}), 5: IfindexSeen(2, addrs={far: 2}),
            6: IfindexSeen(4, addrs={0x7F000001: 4}), 8: IfindexSeen(10, addrs={a: 19, b: 1})}
    mapping, warnings = resolve_ifindex(host, seen)
    assert mapping == {6: "lo", 8: "eth0"}
    assert any(w.startswith("ifindex 4: ambiguous") for w in warnings)
    assert any(w.startswith("ifindex 5: no host interface matches") for w in warnings)
