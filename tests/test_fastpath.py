"""The C accelerator (pathtrace/_fastpath.c) against the Python closures it replaces
(flowcache._compile_python): the same answer and the same state afterwards, for random
window-tracking states and segments, including sequence wrap-around, SACK blocks, values
past 32 bits (handed to the Python closure) and bad checksums."""
from __future__ import annotations

import copy
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pathtrace.flowcache import _NO_DETAIL, FlowEntry, _compile, _compile_python
from pathtrace.net.netfilter.nf_conntrack_core import ConntrackTable, NfConn
from pathtrace.net.netfilter.nf_conntrack_proto_tcp import ESTABLISHED, TcpSeen, TcpState
from pathtrace.packet import build

fastpath = pytest.importorskip("pathtrace._fastpath")

SEQ = st.one_of(st.integers(0, 0xFFFFFFFF), st.sampled_from([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]))
SMALL = st.one_of(st.integers(0, 70000), st.sampled_from([0, 1, 65535, 66000, 66001]))


@st.composite
def seen_strategy(draw):
    """One direction's window data: unrelated random values, or those of a live connection
    (maxend a window past end, the window a few segments), where segments pass the tests."""
    if not draw(st.integers(0, 3)):
        return draw(st.builds(TcpSeen, td_end=SEQ, td_maxend=SEQ, td_maxwin=st.one_of(SMALL, SEQ), td_maxack=SEQ,
                              td_scale=st.integers(0, 14), flags=st.integers(0, 0xFF)))
    end = draw(SEQ)
    return TcpSeen(td_end=end, td_maxend=(end + draw(SMALL)) & 0xFFFFFFFF, td_maxwin=draw(SMALL),
                   td_maxack=(end - draw(SMALL)) & 0xFFFFFFFF, td_scale=draw(st.sampled_from([0, 0, 1, 7])),
                   flags=draw(st.sampled_from([0, 0x02, 0x10, 0x20, 0x32, 0x3F, 0x0A, 0x1A])))


def _state(sender: TcpSeen, receiver: TcpSeen, direction: int, retrans: int, last_win: int,
           unreplied: bool = False, liberal: bool = False) -> tuple:
    """unreplied: picked up mid-stream, no reply seen ([UNREPLIED]: the refresh is clamped to the
    unacknowledged timeout, set apart from max_retrans here); liberal: nf_conntrack_tcp_be_liberal."""
    st_ = TcpState(seen=[sender, receiver] if direction == 0 else [receiver, sender], state=ESTABLISHED,
                   retrans=retrans, last_win=last_win)
    table = ConntrackTable()
    table.sysctl["nf_conntrack_tcp_be_liberal"] = int(liberal)
    table.sysctl["nf_conntrack_tcp_timeout_max_retrans"] = 400
    table.sysctl["nf_conntrack_tcp_timeout_unacknowledged"] = 250
    ct = NfConn(orig=None, reply=None, status=0x188 if unreplied else 0x18E, timeout=2000.0, proto=st_, table=table)
    return ct, st_, table


def _entry(ct, st_, table, direction: int, tot_len: int, detail: bool) -> FlowEntry:
    return FlowEntry(ct=ct, ct_dir=direction, ct_sig=(ct.status, ct.mark, ct.labels, ESTABLISHED), tracker="tcp",
                     table=table, check_l4=True, hlen=20, tot_len=tot_len, proto=6, neigh=None, neigh_key=None,
                     neigh_sig=(), neigh_touch=False, counted=(), dev_deltas=(), replayer_deltas=(0, 0),
                     verdict="FORWARD", reason=None, egress="eth1", ingress="eth0", rules=[], warnings=[],
                     emitted=[], steps=[] if detail else None, tracker_step=-1, l2_out=b"", mangle=())


def _snapshot(ct, table) -> tuple:
    s = ct.proto
    return (ct.timeout, table.now, table.last_gc, s.state, s.last_dir, s.retrans, s.last_index, s.last_seq, s.last_ack,
            s.last_end, s.last_win,
            [(x.td_end, x.td_maxend, x.td_maxwin, x.td_maxack, x.td_scale, x.flags) for x in s.seen])


def _near(data, anchors: list[int]) -> int:
    """A sequence number: random, or within 2 of one of the in-window tests' bounds."""
    if not data.draw(st.integers(0, 3)):
        return data.draw(SEQ)
    return (data.draw(st.sampled_from(anchors)) + data.draw(st.integers(-2, 2))) & 0xFFFFFFFF


@settings(max_examples=1000, deadline=None)
@given(sender=seen_strategy(), receiver=seen_strategy(), direction=st.integers(0, 1), data=st.data(),
       window=st.integers(0, 65535), plen=st.sampled_from([0, 1, 100]), flags=st.sampled_from(["A", "PA", "AU"]),
       use_sack=st.booleans(), retrans=st.integers(0, 4), last_win=st.sampled_from([0, 1, 65535]),
       repeat=st.booleans(), corrupt=st.sampled_from([0] * 8 + [1, 2]), detail=st.booleans(),
       now=st.sampled_from([1000.0] * 6 + [1999.0, 2000.0, 2500.0]), unreplied=st.booleans(), liberal=st.booleans())
def test_tcp_fast_path_same_as_python(sender, receiver, direction, data, window, plen, flags, use_sack, retrans,
                                      last_win, repeat, corrupt, detail, now, unreplied, liberal):
    maxackwin = max(sender.td_maxwin, 66000)
    seq = _near(data, [sender.td_maxend + 1 - plen, sender.td_maxend - plen, sender.td_end - receiver.td_maxwin - plen,
                       sender.td_end])
    ack_bounds = [receiver.td_end, receiver.td_end - maxackwin, receiver.td_maxend - (window << sender.td_scale)]
    ack = _near(data, ack_bounds)
    sack = _near(data, ack_bounds) if use_sack else None
    opts = b"" if sack is None else b"\x01\x01\x05\x0a" + struct.pack("!II", (sack - 10) & 0xFFFFFFFF, sack)
    pkt = bytearray(build.tcp_packet("10.0.0.1", "10.0.0.2", 1000, 80, flags, seq=seq, ack=ack, window=window,
                                     payload=b"x" * plen, options=opts))
    if corrupt == 1:
        pkt[10] ^= 0xFF
    elif corrupt == 2:
        pkt[-1 if plen else 30] ^= 0x01
    pkt = bytes(pkt)
    results = []
    for accel in (None, fastpath):
        ct, st_, table = _state(copy.copy(sender), copy.copy(receiver), direction, retrans, last_win, unreplied,
                                liberal)
        if repeat:      # the previous segment was this one: a retransmission is counted
            st_.last_dir, st_.last_seq, st_.last_ack = direction, seq, ack
            st_.last_end, st_.last_win = (seq + plen) & 0xFFFFFFFF, window
        fast = _compile(_entry(ct, st_, table, direction, len(pkt), detail), {}, accel)
        assert isinstance(fast, fastpath.FastEntry) == (accel is not None)
        out = fast(pkt, now)
        results.append((out, _snapshot(ct, table)))
    assert results[0] == results[1]


def test_values_past_32_bits_go_to_the_python_closure():
    sender, receiver = TcpSeen(td_end=100, td_maxend=5000, td_maxwin=1 << 40), TcpSeen(td_end=50, td_maxend=9000,
                                                                                          td_maxwin=4000)
    ct, st_, table = _state(sender, receiver, 0, 0, 1)
    pkt = build.tcp_packet("10.0.0.1", "10.0.0.2", 1000, 80, "A", seq=100, ack=50, window=100)
    calls = []
    e = _entry(ct, st_, table, 0, len(pkt), True)
    slow = _compile_python(e, {})
    fast = _compile(e, {}, fastpath)

    def spy(p, now):
        calls.append(now)
        return slow(p, now)

    fe = fastpath.FastEntry(kind=2, hlen=20, tot_len=len(pkt), proto=6, check_l4=True, ct=ct, st=st_, table=table,
                            ct_sig=e.ct_sig, gc_interval=5.0, fixed=False, neigh=None, neigh_sig=(),
                            neigh_entries={}, neigh_key=None, assured=True, seen_reply=True, direction=0,
                            detail=True, sender=sender, receiver=receiver, sysctl=table.sysctl,
                            no_detail=_NO_DETAIL, slow=spy, touch=False)
    assert isinstance(fast, fastpath.FastEntry)
    out = fe(pkt, 1000.0)
    assert calls == [1000.0]
    established = table.sysctl["nf_conntrack_tcp_timeout_established"]
    assert out == {"state": "ESTABLISHED", "new_state": "ESTABLISHED", "timeout": established}
    assert sender.td_maxwin == 1 << 40          # the Python closure kept its value


def _run_both(sender: TcpSeen, receiver: TcpSeen, pkt: bytes, direction: int = 0) -> None:
    results = []
    for accel in (None, fastpath):
        ct, st_, table = _state(copy.copy(sender), copy.copy(receiver), direction, 0, 1)
        out = _compile(_entry(ct, st_, table, direction, len(pkt), True), {}, accel)(pkt, 1000.0)
        results.append((out, _snapshot(ct, table)))
    assert results[0] == results[1], (sender, receiver, pkt.hex())


@pytest.mark.parametrize("base_s,base_r", [(1000, 5000), (0xFFFFF000, 0xFFFFFF00), (0x7FFFFF00, 0xFFFFFFF0)])
@pytest.mark.parametrize("scale", [0, 3])
def test_window_bounds_exactly(base_s, base_r, scale):
    """Segments at, one below and one above every bound tcp_in_window tests or updates."""
    m = 0xFFFFFFFF
    sender = TcpSeen(td_end=base_s, td_maxend=(base_s + 3000) & m, td_maxwin=2000, td_maxack=(base_r - 100) & m,
                     td_scale=scale, flags=0x20)
    receiver = TcpSeen(td_end=base_r, td_maxend=(base_r + 1500) & m, td_maxwin=3000, td_maxack=(base_s - 10) & m,
                       td_scale=scale, flags=0x32)
    for window in (0, 100, 1500):
        win = window << scale
        for plen in (0, 100):
            seqs = {(b + d) & m for b in (sender.td_maxend + 1 - plen, sender.td_end - receiver.td_maxwin - plen,
                                          sender.td_end - plen, sender.td_maxend - plen) for d in (-1, 0, 1)}
            acks = {(b + d) & m for b in (receiver.td_end, receiver.td_end - 66000, receiver.td_maxend - 1 - win,
                                          sender.td_maxack) for d in (-1, 0, 1)}
            for seq in sorted(seqs):
                for ack in sorted(acks):
                    for sack in (None, receiver.td_end, (receiver.td_maxend - 1 - win) & m):
                        opts = b"" if sack is None else b"\x01\x01\x05\x0a" + struct.pack("!II", (sack - 5) & m, sack)
                        pkt = build.tcp_packet("10.0.0.1", "10.0.0.2", 1000, 80, "A", seq=seq, ack=ack,
                                               window=window, payload=b"y" * plen, options=opts)
                        _run_both(sender, receiver, pkt)


MANGLE_OP = st.one_of(
    st.tuples(st.just("set_addr"), st.sampled_from(["saddr", "daddr"]), st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.just("set_port"), st.sampled_from([0, 2, 4, 6]), st.integers(0, 0xFFFF)),
    st.tuples(st.just("set_ttl"), st.integers(0, 255)),
    st.tuples(st.just("set_tos"), st.integers(0, 255)),
)


@settings(max_examples=500, deadline=None)
@given(proto=st.sampled_from(["tcp", "udp", "udp0", "icmp"]), src=st.integers(0, 0xFFFFFFFF),
       dst=st.integers(0, 0xFFFFFFFF), sport=st.integers(0, 0xFFFF), dport=st.integers(0, 0xFFFF),
       payload=st.binary(max_size=40), pad=st.binary(max_size=6), mangle=st.lists(MANGLE_OP, max_size=6),
       ttl=st.integers(1, 255), tos=st.integers(0, 255), frag=st.sampled_from([0, 0, 0x4000, 0x2000, 0x0010]))
def test_rewrite_same_as_python(proto, src, dst, sport, dport, payload, pad, mangle, ttl, tos, frag):
    """NAT, TTL and TOS rewrites with incremental checksum updates, byte for byte."""
    from pathtrace.flowcache import rewrite
    from pathtrace.lib.inet import ntoa
    s, d = ntoa(src), ntoa(dst)
    if proto == "tcp":
        pkt = build.tcp_packet(s, d, sport, dport, "PA", payload=payload, ttl=ttl, tos=tos)
    elif proto == "icmp":
        pkt = build.icmp_packet(s, d, 8, 0, payload, id=sport, seq=dport, ttl=ttl, tos=tos)
    else:
        pkt = build.udp_packet(s, d, sport, dport, payload, udp_check=0 if proto == "udp0" else None, ttl=ttl, tos=tos)
    pkt = bytearray(pkt)
    pkt[6:8] = frag.to_bytes(2, "big")
    data = bytes(pkt) + pad
    assert fastpath.rewrite(data, 20, len(pkt), tuple(mangle)) == rewrite(data, 20, len(pkt), tuple(mangle))


def test_rewrite_udp_checksum_that_folds_to_zero_is_sent_as_ffff():
    """set_addr on UDP: a checksum that updates to 0 is written 0xFFFF (CSUM_MANGLED_0)."""
    from pathtrace.flowcache import rewrite
    from pathtrace.lib.checksum import csum_replace
    pkt = build.udp_packet("10.0.0.1", "10.0.0.2", 1000, 53, b"abc")
    old, check = struct.unpack_from("!I", pkt, 12)[0], struct.unpack_from("!H", pkt, 26)[0]
    new = next(old ^ low for low in range(1, 1 << 16) if csum_replace(check, old, old ^ low, 32) == 0)
    mangle = (("set_addr", "saddr", new),)
    out = fastpath.rewrite(pkt, 20, len(pkt), mangle)
    assert out == rewrite(pkt, 20, len(pkt), mangle)
    assert out[26:28] == b"\xff\xff"

