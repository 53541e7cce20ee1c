"""The replay decision cache changes nothing but speed: every record, counter and
conntrack entry is the same with the cache on and off (issue 6's acceptance test)."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pathtrace.capture import read_frames
from pathtrace.capture.linktypes import frame_from_ethernet
from pathtrace.host.loader import load_host
from pathtrace.packet import build
from pathtrace.render.jsonl import record_to_dict
from pathtrace.replay import Replayer, ReplayOptions, create_namespace, replay_frame

from helpers import CORPUS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import workload  # noqa: E402


def replay_all(host_path: Path, frames, cache: bool, record: bool = True, accel: bool = True):
    """Every record and the final state; accel=False runs the cache's Python closures instead
    of the C accelerator (pathtrace/_fastpath.c)."""
    net = create_namespace(load_host(str(host_path)))
    r = Replayer(net, ReplayOptions(record=record, emit_frames=record, cache=cache))
    if not accel and r.cache is not None:
        r.cache.accel = None
    records = [record_to_dict(replay_frame(r, f)) for f in frames]
    r.flush()
    return records, final_state(net, r), r


def final_state(net, r) -> dict:
    return {
        "counters": net.nf.format_listing(counters=True) if net.nf is not None else "",
        "devices": [(d.name, d.rx_packets, d.rx_dropped, d.tx_packets, d.tx_bytes) for d in net.devices.values()],
        "conntrack": _conntrack(net),
        "neigh": sorted((k, n.state, n.lladdr, n.updated, n.hh_cached) for k, n in net.neigh.entries.items()),
        "replayer": (r.count, r.otherhost_drops, r.readdressed),
    }


def _conntrack(net) -> list:
    table = getattr(net.nf, "conntrack", None) if net.nf is not None else None
    if table is None:
        return []
    out = []
    for ct in table.entries():
        st_ = ct.proto
        seen = [(s.td_end, s.td_maxend, s.td_maxwin, s.td_maxack, s.flags) for s in getattr(st_, "seen", [])]
        out.append((str(ct.orig), str(ct.reply), ct.status, round(ct.timeout, 6), getattr(st_, "state", None),
                    getattr(st_, "retrans", None), seen))
    return out + [sorted(table.stats.items())]


def assert_same(host_path: Path, frames, record: bool = True, min_hits: float = 0.0):
    """The same records and state with the cache (C accelerator and Python closures) and without."""
    off, state_off, _ = replay_all(host_path, frames, cache=False, record=record)
    assert len(off) == len(frames)
    for accel in (True, False):
        on, state_on, r = replay_all(host_path, frames, cache=True, record=record, accel=accel)
        assert len(on) == len(frames)
        for a, b in zip(on, off):
            assert a == b, f"record {a['index']} differs with the cache (accel={accel})"
        assert state_on == state_off
        assert r.cache.hits >= min_hits * len(frames)
    return r


def _router(tmp_path_factory) -> Path:
    """bench/workload's NAT router with 20 rules, written once per session."""
    host = tmp_path_factory.getbasetemp() / "router-20.yaml"
    if not host.exists():
        host.write_text(workload.host_yaml(20))
    return host


@pytest.fixture(scope="module")
def bench_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    host = d / "router.yaml"
    host.write_text(workload.host_yaml(300))
    cap = d / "flows.pcap"
    workload.write_capture(cap, 3000, 40)
    return host, cap


@pytest.mark.parametrize("record", [True, False])
def test_bench_workload_same_with_cache(bench_files, record):
    host, cap = bench_files
    r = assert_same(host, list(read_frames(str(cap))), record=record, min_hits=0.9)
    assert "new conntrack entry" in r.cache.refused     # the first packets of each flow did run the model


@pytest.mark.parametrize("name,capture", [("web-server", "web-server.pcap"), ("home-router", "home-router.pcapng"),
                                          ("two-uplink", "two-uplink.pcapng")])
def test_samples_same_with_cache(name, capture):
    assert_same(ROOT / "rulesets" / f"{name}.yaml", list(read_frames(str(ROOT / "samples" / capture))))


CAPTURES = sorted(p for p in (CORPUS / "pcaps").glob("*") if p.suffix in (".pcap", ".pcapng", ".cap")) \
    if (CORPUS / "pcaps").is_dir() else []


@pytest.mark.skipif(not CAPTURES, reason="shared corpus not present")
def test_corpus_captures_same_with_cache():
    for cap in CAPTURES:
        try:
            frames = list(read_frames(str(cap)))[:3000]
        except Exception:
            continue
        assert_same(ROOT / "rulesets" / "home-router.yaml", frames)


def test_corpus_captures_tally_same_through_the_c_lane(monkeypatch):
    """The C lanes on real captures (several pcapng sections, byte orders, link types, VLANs,
    truncation): the same summary and state as without the cache, the whole of each file."""
    host = ROOT / "rulesets" / "home-router.yaml"
    for cap in CAPTURES:
        try:
            read_frames(str(cap)).close()
        except Exception:
            continue
        off = _tally_from_pcap(host, None, cap, cache=False, accel=False)[:2]
        assert _tally_from_pcap(host, None, cap, cache=True, accel=True)[:2] == off, cap.name


# Ethernet headers of frames from the LAN client and from the WAN gateway to bench/workload's router
LAN_HEADER = build.mac_bytes(workload.ROUTER_LAN_MAC) + build.mac_bytes(workload.CLIENT_MAC) + b"\x08\x00"
WAN_HEADER = build.mac_bytes(workload.ROUTER_WAN_MAC) + build.mac_bytes(workload.GATEWAY_MAC) + b"\x08\x00"


# ---- guards: whatever could change the path sends the packet through the model -----------------------

def _conversation(events, t0=1000.0, options: bool = False, isn: tuple[int, int] = (1000, 5000),
                  client: str = "192.168.1.7", server: str = "203.0.113.9", sport: int = 40000):
    """Frames of one masqueraded TCP connection through bench/workload's router; `events`
    is a list of (direction, flags, seq_delta, ack_delta, payload_len, gap, corrupt[, sack]).
    options=True negotiates SACK and window scaling; an event's `sack` (None: no option)
    then adds a SACK block whose right edge is that far past the acknowledged sequence."""
    c_isn, s_isn = isn
    lan, wan = LAN_HEADER, WAN_HEADER
    syn_opts = b"\x04\x02\x01\x03\x03\x02" + b"\x00\x00" if options else b""   # SACK_PERM, NOP, WS 2
    frames = [lan + build.tcp_packet(client, server, sport, 443, "S", seq=c_isn, window=65535, options=syn_opts),
              wan + build.tcp_packet(server, workload.PUBLIC, 443, sport, "SA", seq=s_isn, ack=c_isn + 1,
                                     window=65535, options=syn_opts),
              lan + build.tcp_packet(client, server, sport, 443, "A", seq=c_isn + 1, ack=s_isn + 1, window=65535)]
    times = [t0, t0 + 0.001, t0 + 0.002]
    cs, ss = c_isn + 1, s_isn + 1
    t = t0 + 0.002
    for direction, flags, dseq, dack, plen, gap, corrupt, *sack in events:
        t += gap
        ack = ((ss if direction == 0 else cs) + dack) & 0xFFFFFFFF
        opts = b""
        if options and sack and sack[0] is not None:
            opts = b"\x01\x01\x05\x0a" + struct.pack("!II", (ack + 1) & 0xFFFFFFFF, (ack + sack[0]) & 0xFFFFFFFF)
        if direction == 0:
            pkt = bytearray(build.tcp_packet(client, server, sport, 443, flags, seq=(cs + dseq) & 0xFFFFFFFF,
                                             ack=ack, window=65535, payload=b"c" * plen, options=opts))
            frame = lan
            if dseq == 0:
                cs += plen
        else:
            pkt = bytearray(build.tcp_packet(server, workload.PUBLIC, 443, sport, flags, seq=(ss + dseq) & 0xFFFFFFFF,
                                             ack=ack, window=65535, payload=b"s" * plen, options=opts))
            frame = wan
            if dseq == 0:
                ss += plen
        if corrupt == 1:
            pkt[10] ^= 0xFF                      # IP header checksum
        elif corrupt == 2:
            pkt[-1 if plen else 36] ^= 0x01      # TCP checksum / payload
        frames.append(frame + bytes(pkt))
        times.append(t)
    return [frame_from_ethernet(f, i, ts) for i, (f, ts) in enumerate(zip(frames, times))]


EVENT_FIELDS = (st.integers(0, 1), st.sampled_from(["A", "PA", "PA", "PA", "FA", "RA", "R", "SA", "PAU"]),
                  st.sampled_from([0, 0, 0, 0, -100, 70000, 1 << 31]), st.sampled_from([0, 0, 0, -50, 90000]),
                  st.sampled_from([0, 10, 100]), st.sampled_from([0.001, 0.001, 0.5, 400.0, 500000.0]),
                  st.sampled_from([0, 0, 0, 0, 0, 1, 2]))
EVENT = st.tuples(*EVENT_FIELDS)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(EVENT, min_size=1, max_size=40))
def test_random_conversations_same_with_cache(tmp_path_factory, events):
    host = _router(tmp_path_factory)
    assert_same(host, _conversation(events))


def _write_pcap(frames, path: Path) -> None:
    """A classic pcap, or for a .pcapng path a pcapng with the router's interface names."""
    raw = [(f.dst_mac + f.src_mac + f.ethertype.to_bytes(2, "big") + f.payload, f.ts) for f in frames]
    if path.suffix == ".pcapng":
        sys.path.insert(0, str(ROOT / "samples"))
        from make_samples import PcapngWriter
        w = PcapngWriter(str(path), ["eth0", "eth1"])
        lan = build.mac_bytes(workload.ROUTER_LAN_MAC)
        for data, ts in raw:
            w.write(data, ts, "eth1" if data[:6] == lan else "eth0")
        w.close()
        return
    from pathtrace.packet.pcapwriter import PcapWriter
    with PcapWriter(str(path)) as w:
        for data, ts in raw:
            w.write(data, ts)


def _tally_from_pcap(host_path: Path, frames, path: Path, cache: bool, accel: bool):
    """--summary's replay (Replayer.tally) of `frames` written to a classic pcap file."""
    from pathtrace.render.summary import SummaryCounter
    if not path.exists():
        _write_pcap(frames, path)
    net = create_namespace(load_host(str(host_path)))
    r = Replayer(net, ReplayOptions(record=False, emit_frames=False, cache=cache))
    if not accel and r.cache is not None:
        r.cache.accel = None
    lane = _CountingLane(r.cache.accel) if r.cache is not None and r.cache.accel is not None else None
    if lane is not None:
        r.cache.accel = lane
    counter = SummaryCounter()
    r.tally(read_frames(str(path)), counter)
    return counter.render(net, []), final_state(net, r), lane


class _CountingLane:
    """The C accelerator module, counting the records its lanes served."""

    def __init__(self, accel):
        self.FastEntry = accel.FastEntry
        self.rewrite = accel.rewrite
        self._accel = accel
        self.served = 0

    def serve_pcap(self, *args):
        out = self._accel.serve_pcap(*args)
        self.served += out[2]
        return out

    def serve_pcapng(self, *args):
        out = self._accel.serve_pcapng(*args)
        self.served += out[2]
        return out


def assert_tally_same(host_path: Path, frames, path: Path, min_served: int = 0) -> None:
    """Summaries and state from a pcap: the C lane (serve_pcap), the Python closures, no cache."""
    off = _tally_from_pcap(host_path, frames, path, cache=False, accel=False)[:2]
    assert _tally_from_pcap(host_path, frames, path, cache=True, accel=False)[:2] == off
    *c_lane, lane = _tally_from_pcap(host_path, frames, path, cache=True, accel=True)
    assert c_lane == list(off)
    assert lane is None or lane.served >= min_served


SACK_EVENT = st.tuples(*EVENT_FIELDS, st.sampled_from([None, None, 0, 1, 40, 200000, 1 << 31]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(SACK_EVENT, min_size=1, max_size=40), st.booleans(), st.sampled_from(["pcap", "pcapng"]))
def test_random_conversations_tally_same_from_pcap(tmp_path_factory, events, options, fmt):
    """The C lane reads records straight from the capture's buffer: same counts and state,
    with and without SACK blocks and window scaling, from a pcap and from a pcapng."""
    host = _router(tmp_path_factory)
    cap = Path(tmp_path_factory.mktemp("conv")) / f"c.{fmt}"
    assert_tally_same(host, _conversation(events, options=options), cap)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(SACK_EVENT, min_size=1, max_size=40))
def test_random_sack_conversations_same_with_cache(tmp_path_factory, events):
    host = _router(tmp_path_factory)
    assert_same(host, _conversation(events, options=True))


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_steady_conversation_tally_is_served_by_the_c_lane(tmp_path, fmt):
    pytest.importorskip("pathtrace._fastpath")
    host = tmp_path / "r.yaml"
    host.write_text(workload.host_yaml(20))
    events = [(i & 1, "PA", 0, 0, 100, 0.001 if i != 150 else 9.0, 0) for i in range(300)]
    assert_tally_same(host, _conversation(events), tmp_path / f"c.{fmt}", min_served=280)


def test_steady_sack_conversation_is_served_from_the_cache(tmp_path):
    """Every segment acknowledges 50 bytes short and SACKs past them (tcp_sack's right edge
    moves the window): served from the cache, the same state as the model's."""
    host = tmp_path / "r.yaml"
    host.write_text(workload.host_yaml(20))
    frames = _conversation([(i & 1, "PA", 0, -50, 100, 0.001, 0, 40) for i in range(200)], options=True)
    r = assert_same(host, frames)
    assert r.cache.hits >= 190
    assert_tally_same(host, frames, tmp_path / "c.pcap", min_served=190 if r.cache.accel is not None else 0)


def test_steady_conversation_is_served_from_the_cache(tmp_path):
    host = tmp_path / "r.yaml"
    host.write_text(workload.host_yaml(20))
    events = [(i & 1, "PA", 0, 0, 100, 0.001, 0) for i in range(200)]
    r = assert_same(host, _conversation(events))
    assert r.cache.hits >= 190


def test_neighbour_change_and_expiry_are_seen(tmp_path):
    """An ARP reply changing the gateway's address and a conntrack timeout mid-flow."""
    host = tmp_path / "r.yaml"
    host.write_text(workload.host_yaml(20).replace(f"lladdr {workload.GATEWAY_MAC} permanent",
                                                   f"lladdr {workload.GATEWAY_MAC} reachable"))
    frames = _conversation([(i & 1, "PA", 0, 0, 10, 0.001 if i != 30 else 500000.0, 0) for i in range(60)])
    arp = build.ether(workload.ROUTER_WAN_MAC, "02:00:00:00:00:aa", 0x0806,
                      build.arp("reply", "02:00:00:00:00:aa", "198.51.100.254", workload.ROUTER_WAN_MAC,
                                workload.PUBLIC))
    frames.insert(20, frame_from_ethernet(arp, 20, frames[19].ts + 0.0005))
    for i, f in enumerate(frames):
        f.index = i
    assert_same(host, frames)


def test_parallel_flow_key_is_the_same_both_ways_through_nat(tmp_path):
    from pathtrace.parallel import ShardPlan, flow_key
    host = tmp_path / "r.yaml"
    host.write_text(workload.host_yaml(20))
    plan = ShardPlan.for_net(create_namespace(load_host(str(host))))
    out = build.tcp_packet("192.168.1.7", "203.0.113.9", 40000, 443, "S")
    back = build.tcp_packet("203.0.113.9", workload.PUBLIC, 443, 61000, "SA")
    quoted = build.icmp_error_packet("203.0.113.1", workload.PUBLIC, 11, 0,
                                     build.tcp_packet(workload.PUBLIC, "203.0.113.9", 61000, 443, "A"))
    other = build.tcp_packet("192.168.1.7", "203.0.113.10", 40000, 443, "S")
    assert flow_key(out, plan) == flow_key(back, plan) == flow_key(quoted, plan) != flow_key(other, plan)
    assert struct.unpack("!IH", flow_key(out, plan)[1:7])[1] == 443


# ---- replay --jobs ------------------------------------------------------------------------------------

def _cli(*args: str) -> tuple[int, str, str]:
    from click.testing import CliRunner

    from pathtrace.cli import main
    res = CliRunner().invoke(main, ["replay", *args, "--no-progress"])
    return res.exit_code, res.stdout, res.stderr


@pytest.mark.parametrize("fmt", [["--format", "jsonl"], ["--format", "text"], ["--summary", "--counters"]])
def test_jobs_output_identical(bench_files, fmt):
    host, cap = bench_files
    one = _cli(str(host), str(cap), *fmt)
    two = _cli(str(host), str(cap), *fmt, "--jobs", "2")
    assert one[0] == two[0] == 0
    assert one[1] == two[1]
    assert "one process" not in two[2]          # the split was used, not the fallback


def test_jobs_fall_back_when_flows_share_state():
    host, cap = ROOT / "rulesets" / "home-router.yaml", ROOT / "samples" / "home-router.pcapng"
    one = _cli(str(host), str(cap), "--format", "jsonl")
    three = _cli(str(host), str(cap), "--format", "jsonl", "--jobs", "3")
    assert one[1] == three[1]
    assert "one process" in three[2]


def test_summary_tally_same_as_records(bench_files):
    """--summary counts cached packets per flow entry; the tables equal those of the uncached run."""
    host, cap = bench_files
    cached = _cli(str(host), str(cap), "--summary", "--counters")
    uncached = _cli(str(host), str(cap), "--summary", "--counters", "--no-cache")
    limited = _cli(str(host), str(cap), "--summary", "--limit", "1234")
    assert cached[0] == uncached[0] == 0
    assert cached[1] == uncached[1]
    assert limited[1].startswith("1234 packets")


UDP_EVENT = st.tuples(st.integers(0, 1), st.sampled_from([0.001, 0.5, 1.5, 2.5, 31.0, 125.0]),
                      st.sampled_from([0, 0, 0, 1]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(UDP_EVENT, min_size=1, max_size=40))
def test_random_udp_streams_same_with_cache(tmp_path_factory, events):
    """UDP through MASQUERADE: unreplied, replied, becoming a stream after 2 s, expiring."""
    host = _router(tmp_path_factory)
    assert_same(host, _udp_frames(events))


def _udp_frames(events, t0: float = 1000.0) -> list:
    """A DNS-like UDP exchange through the router; events are (direction, gap, zero checksum)."""
    lan, wan = LAN_HEADER, WAN_HEADER
    frames, t = [], t0
    for i, (direction, gap, zero_csum) in enumerate(events):
        t += gap
        if direction == 0:
            pkt = build.udp_packet("192.168.1.7", "203.0.113.9", 5353, 53, b"q" * 20,
                                   udp_check=0 if zero_csum else None)
            frames.append(frame_from_ethernet(lan + pkt, i, t))
        else:
            pkt = build.udp_packet("203.0.113.9", workload.PUBLIC, 53, 5353, b"r" * 20,
                                   udp_check=0 if zero_csum else None)
            frames.append(frame_from_ethernet(wan + pkt, i, t))
    return frames


def test_steady_udp_stream_is_served_from_the_cache(tmp_path):
    host = tmp_path / "r.yaml"
    host.write_text(workload.host_yaml(20))
    lan, wan = LAN_HEADER, WAN_HEADER
    frames = []
    for i in range(300):      # 0.02 s apart: the flow becomes a stream (ASSURED) after 2 s
        if i % 2 == 0:
            data = lan + build.udp_packet("192.168.1.7", "203.0.113.9", 5353, 53, b"q" * 20)
        else:
            data = wan + build.udp_packet("203.0.113.9", workload.PUBLIC, 53, 5353, b"r" * 20)
        frames.append(frame_from_ethernet(data, i, 1000.0 + 0.02 * i))
    r = assert_same(host, frames)
    assert r.cache.hits >= 250


def test_jsonl_writer_equals_plain_json_dumps():
    """The step-caching JSON lines writer produces exactly json.dumps(record_to_dict(record))."""
    import io
    import json

    from pathtrace.packet.decode import describe_frame
    from pathtrace.render.jsonl import write_jsonl
    for name, capture in [("web-server", "web-server.pcap"), ("home-router", "home-router.pcapng")]:
        r = Replayer(create_namespace(load_host(str(ROOT / "rulesets" / f"{name}.yaml"))))
        for frame in read_frames(str(ROOT / "samples" / capture)):
            rec = r.process(frame)
            rec.packet = describe_frame(frame)
            for _ in range(2):           # second time from the steps' cached texts
                buf = io.StringIO()
                write_jsonl(rec, buf)
                assert buf.getvalue() == json.dumps(record_to_dict(rec), separators=(",", ":"), default=str) + "\n"


def _output_three_ways(monkeypatch, host, cap, *extra: str, fmt: tuple[str, ...] = ("--format", "jsonl")) -> str:
    """replay's per-packet output: with the C lane and templates, with the Python closures, without the cache."""
    c_lane = _cli(str(host), str(cap), *fmt, *extra)
    monkeypatch.setenv("PATHTRACE_PURE_PYTHON", "1")
    python = _cli(str(host), str(cap), *fmt, *extra)
    monkeypatch.delenv("PATHTRACE_PURE_PYTHON")
    uncached = _cli(str(host), str(cap), *fmt, "--no-cache", *extra)
    assert c_lane[0] == python[0] == uncached[0] == 0
    for name, out in (("C lane", c_lane[1]), ("Python closures", python[1])):
        same = out == uncached[1]           # not `assert a == b`: pytest would diff megabytes
        assert same, f"{name}: first different line {_first_difference(out, uncached[1])}"
    return c_lane[1]


def _first_difference(a: str, b: str) -> str:
    for i, (x, y) in enumerate(zip(a.splitlines(), b.splitlines())):
        if x != y:
            return f"{i}:\n{x[:300]}\n{y[:300]}"
    return f"(line counts {len(a.splitlines())} and {len(b.splitlines())})"


FORMATS = [("--format", "jsonl"), ("--format", "text"), ("--format", "text", "--verbose")]


def test_jsonl_from_flow_templates_same_as_uncached(bench_files, monkeypatch):
    """Cached records' lines come from per-flow templates (in C on a pcap): byte for byte the same."""
    host, cap = bench_files
    out = _output_three_ways(monkeypatch, host, cap)
    assert len(out.splitlines()) == 3000
    limited = _output_three_ways(monkeypatch, host, cap, "--limit", "1234")
    assert len(limited.splitlines()) == 1234


@pytest.mark.parametrize("fmt", FORMATS[1:])
def test_text_from_flow_templates_same_as_uncached(bench_files, monkeypatch, fmt):
    host, cap = bench_files
    out = _output_three_ways(monkeypatch, host, cap, fmt=fmt)
    assert out.count("\n#") == 2999


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name,capture", [("web-server", "web-server.pcap"), ("home-router", "home-router.pcapng"),
                                          ("two-uplink", "two-uplink.pcapng")])
def test_jsonl_samples_same_as_uncached(name, capture, monkeypatch, fmt):
    _output_three_ways(monkeypatch, ROOT / "rulesets" / f"{name}.yaml", ROOT / "samples" / capture, fmt=fmt)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(SACK_EVENT, min_size=1, max_size=30), st.booleans(), st.lists(UDP_EVENT, max_size=10),
       st.sampled_from(["pcap", "pcapng"]), st.sampled_from(FORMATS))
def test_random_conversations_jsonl_same_as_uncached(tmp_path_factory, monkeypatch, events, options, udp, fmt,
                                                     output):
    """TCP (with and without SACK) and UDP conversations from a pcap or pcapng: every JSON line
    and text block the same."""
    host = _router(tmp_path_factory)
    frames = _conversation(events, options=options) + _udp_frames(udp, t0=frames_end(events))
    for i, f in enumerate(frames):
        f.index = i
    cap = Path(tmp_path_factory.mktemp("jsonl")) / f"c.{fmt}"
    _write_pcap(frames, cap)
    _output_three_ways(monkeypatch, host, cap, fmt=output)


def frames_end(events) -> float:
    return 1000.002 + sum(e[5] for e in events)


def test_accelerator_is_built_in_ci():
    """CI machines have a compiler: the speed figures depend on the extension being there."""
    import importlib.util
    import os
    if os.environ.get("CI") != "true":
        pytest.skip("only checked in CI")
    assert importlib.util.find_spec("pathtrace._fastpath") is not None


def test_jobs_report_a_corrupt_capture_as_one_process_does(bench_files, tmp_path):
    """A worker's CaptureError ends the replay with the same one-line error and exit code 2."""
    host, cap = bench_files
    data = bytearray(cap.read_bytes())
    off = 24
    for _ in range(500):
        off += 16 + struct.unpack_from("<I", data, off + 8)[0]
    struct.pack_into("<I", data, off + 8, 0x7FFFFFFF)
    bad = tmp_path / "corrupt.pcap"
    bad.write_bytes(bytes(data))
    one = _cli(str(host), str(bad), "--summary")
    two = _cli(str(host), str(bad), "--summary", "--jobs", "2")
    assert one[0] == two[0] == 2
    assert one[2] == two[2] and one[2].count("\n") == 1 and "corrupt pcap record 500" in one[2]
