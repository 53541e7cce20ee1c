"""Issue 14: the replay cache on traffic that never reaches a replied state - TCP picked up
mid-stream and one-way ([UNREPLIED], liberal window tracking), one-way UDP from many clients,
scans where every packet is a new flow - changes nothing but speed: every record, counter and
conntrack entry is the same with the cache (C accelerator and Python closures) and without."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pathtrace.capture import read_frames
from pathtrace.capture.linktypes import frame_from_ethernet

from test_flowcache import (
    EVENT, _conversation, _router, assert_same, assert_tally_same, workload,
)


def _reindexed(frames) -> list:
    return [frame_from_ethernet(f.dst_mac + f.src_mac + f.ethertype.to_bytes(2, "big") + f.payload, i, f.ts)
            for i, f in enumerate(frames)]


def _midstream(events, isn: tuple[int, int], replies: bool) -> list:
    """_conversation without its handshake (conntrack picks it up mid-stream); with replies=False only
    the client's segments, as `tcpdump -Q in` on the LAN side shows them."""
    frames = _conversation(events, isn=isn)[3:]
    if not replies:
        frames = [f for f in frames if f.dst_mac == _conversation([], isn=isn)[0].dst_mac]
    return _reindexed(frames)


def _router_timeouts(tmp_path_factory) -> Path:
    """The router with max_retrans 400 s and unacknowledged 250 s (both 300 by default): then each of
    tcp_timeout's shortenings and the [UNREPLIED] clamp gives its own expiry."""
    host = tmp_path_factory.getbasetemp() / "router-20-timeouts.yaml"
    if not host.exists():
        host.write_text(workload.host_yaml(20).replace(
            "  net.ipv4.ip_forward: 1\n", "  net.ipv4.ip_forward: 1\n"
            "  net.netfilter.nf_conntrack_tcp_timeout_max_retrans: 400\n"
            "  net.netfilter.nf_conntrack_tcp_timeout_unacknowledged: 250\n"))
    return host


ISN = st.sampled_from([0, 1, 5000, 0x7FFFFFFF, 0x80000000, 0xC0000000, 0xFFFFFF00, 0xFFFFFFFF])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(EVENT, min_size=1, max_size=40), ISN, ISN, st.booleans(), st.booleans(), st.booleans())
def test_random_midstream_tcp_same_with_cache(tmp_path_factory, events, c_isn, s_isn, replies, record, timeouts):
    """Random segments of a connection whose handshake the capture missed: acknowledgements both
    sides of receiver.td_end (0, never seen) so the window tests fail or pass, segments past the
    sender's td_maxend (never moved without replies), RSTs, FINs, bad checksums, long gaps."""
    frames = _midstream(events, (c_isn, s_isn), replies)
    if frames:
        host = _router_timeouts(tmp_path_factory) if timeouts else _router(tmp_path_factory)
        assert_same(host, frames, record=record)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(EVENT, min_size=1, max_size=40), ISN, ISN, st.sampled_from(["pcap", "pcapng"]))
def test_random_midstream_tcp_tally_same_from_pcap(tmp_path_factory, events, c_isn, s_isn, fmt):
    frames = _midstream(events, (c_isn, s_isn), replies=False)
    if frames:
        cap = Path(tmp_path_factory.mktemp("mid")) / f"m.{fmt}"
        assert_tally_same(_router(tmp_path_factory), frames, cap)


@pytest.mark.parametrize("ack", [5000, 0x90000000, 0xFFFFFFF0])
def test_steady_midstream_upload_is_served_from_the_cache(tmp_path_factory, tmp_path, ack):
    """One client's upload, one way: after the entry is created (first packet) and its path learned
    (second), every segment is served - in window or, liberal, not - past the sender's td_maxend too."""
    host = _router_timeouts(tmp_path_factory)
    events = [(0, "PA", 0, 0, 1000, 0.001, 0) for _ in range(300)]     # 300 kB: past 64 kB of window
    frames = _midstream(events, (1000, ack - 1), replies=False)
    r = assert_same(host, frames)
    assert r.cache.hits >= 290
    assert_tally_same(host, frames, tmp_path / "c.pcap", min_served=290 if r.cache.accel is not None else 0)


@pytest.fixture(scope="module")
def router300(tmp_path_factory) -> Path:
    host = tmp_path_factory.mktemp("r300") / "router.yaml"
    host.write_text(workload.host_yaml(300))
    return host


@pytest.mark.parametrize("record", [True, False])
@pytest.mark.parametrize("name,write,min_hits", [
    ("midstream", lambda p: workload.write_midstream(p, 1500, 30), 0.9),
    ("udp", lambda p: workload.write_udp(p, 1500, 30), 0.9),
    ("scan", lambda p: workload.write_scan(p, 600), 0.0),
])
def test_bench_oneway_workloads_same_with_cache(router300, tmp_path, name, write, min_hits, record):
    cap = tmp_path / f"{name}.pcap"
    write(cap)
    frames = list(read_frames(str(cap)))
    assert_same(router300, frames, record=record, min_hits=min_hits)
    if not record:
        assert_tally_same(router300, frames, cap)


# ---- ICMP queries: echo requests with and without replies ---------------------------------------

ICMP_EVENT = st.tuples(st.sampled_from([0, 0, 0, 1]),                     # 0: request from the LAN, 1: reply
                       st.sampled_from([0.001, 0.5, 29.0, 31.0, 200.0]),  # gap (the ICMP timeout is 30 s)
                       st.sampled_from([0, 0, 0, 0, 1, 2, 3]),            # corrupt: IP checksum, ICMP checksum, zero
                       st.sampled_from([0, 8, 56]),                        # data bytes
                       st.sampled_from([7, 7, 7, 8, 0]))                   # echo id


def _icmp_frames(events, t0: float = 1000.0) -> list:
    """A ping from the LAN client through the router (MASQUERADE keeps or changes the id); replies
    come back to the router's public address with the id the first request got there."""
    from test_flowcache import LAN_HEADER, WAN_HEADER
    from pathtrace.packet import build
    frames, t = [], t0
    for i, (direction, gap, corrupt, dlen, ident) in enumerate(events):
        t += gap
        data = bytes((i + k) & 0xFF for k in range(dlen))
        if direction == 0:
            pkt = bytearray(build.icmp_packet("192.168.1.7", "203.0.113.9", 8, 0, data, id=ident, seq=i))
            head = LAN_HEADER
        else:
            pkt = bytearray(build.icmp_packet("203.0.113.9", workload.PUBLIC, 0, 0, data, id=ident, seq=i))
            head = WAN_HEADER
        if corrupt == 1:
            pkt[10] ^= 0xFF
        elif corrupt == 2:
            pkt[-1 if dlen else 26] ^= 0x01
        elif corrupt == 3:        # an all-zero ICMP message (type 0 only): its sum is 0, which is wrong
            pkt[20:] = bytes(len(pkt) - 20)
        frames.append(frame_from_ethernet(head + bytes(pkt), i, t))
    return frames


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ICMP_EVENT, min_size=1, max_size=40), st.booleans())
def test_random_pings_same_with_cache(tmp_path_factory, events, record):
    assert_same(_router(tmp_path_factory), _icmp_frames(events), record=record)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ICMP_EVENT, min_size=1, max_size=40), st.sampled_from(["pcap", "pcapng"]))
def test_random_pings_tally_same_from_pcap(tmp_path_factory, events, fmt):
    cap = Path(tmp_path_factory.mktemp("ping")) / f"p.{fmt}"
    assert_tally_same(_router(tmp_path_factory), _icmp_frames(events), cap)


@pytest.mark.parametrize("replies", [False, True])
def test_steady_ping_is_served_from_the_cache(tmp_path_factory, replies):
    """Echo requests once a second, unanswered or answered: after the entry's first packets every
    one is served, although each has its own sequence number, data and checksum."""
    events = [(i & 1 if replies else 0, 1.0 if not i & 1 or not replies else 0.001, 0, 56, 7) for i in range(200)]
    r = assert_same(_router(tmp_path_factory), _icmp_frames(events))
    assert r.cache.hits >= 190


def test_all_zero_echo_reply_is_not_served(tmp_path_factory):
    """An echo reply whose ICMP message is all zeros (id 0, sequence 0, no data, checksum 0) sums to 0,
    which nf_ip_checksum finds wrong although 0 is 0 modulo 0xFFFF: the guard must send it to the model."""
    events = [(i & 1, 0.001, 0, 0, 0) for i in range(20)] + [(1, 0.001, 3, 0, 0)]
    frames = _icmp_frames(events)
    assert frames[-1].payload[20:] == bytes(8)
    assert_same(_router(tmp_path_factory), frames)


def test_ping_jsonl_same_as_uncached(tmp_path_factory, monkeypatch):
    """replay --format jsonl/text through the CLI (renderers' per-flow templates, the C lane): each echo's
    own sequence number in its summary, as without the cache."""
    from test_flowcache import _output_three_ways, _write_pcap
    cap = Path(tmp_path_factory.mktemp("pingcli")) / "p.pcap"
    _write_pcap(_icmp_frames([(0, 1.0, 0, 56, 7)] * 50), cap)
    host = _router(tmp_path_factory)
    for fmt in (("--format", "jsonl"), ("--format", "text")):
        _output_three_ways(monkeypatch, host, cap, fmt=fmt)


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_steady_ping_tally_is_served_by_the_c_lane(tmp_path_factory, tmp_path, fmt):
    """The C lanes build ICMP queries' keys as FlowCache.key does (type, code, id): unanswered echo
    requests are counted from the file's buffer, with the same summary and state as the model's."""
    pytest.importorskip("pathtrace._fastpath")
    frames = _icmp_frames([(0, 1.0, 0, 56, 7)] * 200)
    assert_tally_same(_router(tmp_path_factory), frames, tmp_path / f"p.{fmt}", min_served=190)
