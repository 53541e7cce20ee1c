"""verify's TCP re-basing on the kernel's ISN and TSval, and the capture's own host frames."""
from __future__ import annotations

import struct

from pathtrace.packet import build as b
from pathtrace.verify.isn import SeqShift, locate, tsval_tsecr
from pathtrace.verify.runner import frame_from_ether, plan

HOST_MAC, PEER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:0a"
HOST, PEER = "10.0.0.1", "10.0.0.9"


def _ts(val: int, ecr: int) -> bytes:
    return bytes([1, 1, 8, 10]) + struct.pack("!II", val, ecr)


def _sack(*edges: int) -> bytes:
    # one NOP first so the SACK values sit at odd offsets from the TCP header
    return bytes([1, 1, 1, 5, 2 + 4 * len(edges)]) + b"".join(struct.pack("!I", e) for e in edges)


def _frame(src: str, dst: str, sport: int, dport: int, flags: str, seq: int, ack: int, options: bytes,
           smac: str, dmac: str, tcp_check: int | None = None) -> bytes:
    pkt = b.tcp_packet(src, dst, sport, dport, flags, seq=seq, ack=ack, options=options, tcp_check=tcp_check)
    return b.ether(dmac, smac, b.ETH_P_IP, pkt)


def _peer(flags: str, ack: int, options: bytes = b"", tcp_check: int | None = None) -> bytes:
    return _frame(PEER, HOST, 40000, 80, flags, 500, ack, options, PEER_MAC, HOST_MAC, tcp_check)


def _host(flags: str, seq: int, options: bytes = b"") -> bytes:
    return _frame(HOST, PEER, 80, 40000, flags, seq, 501, options, HOST_MAC, PEER_MAC)


def _checksum_ok(frame: bytes) -> bool:
    ip = frame[14:]
    seg = ip[20:]
    fresh = b.tcp(*struct.unpack("!HH", seg[:4]), flags=seg[13], seq=struct.unpack("!I", seg[4:8])[0],
                  ack=struct.unpack("!I", seg[8:12])[0], window=struct.unpack("!H", seg[14:16])[0],
                  options=seg[20:(seg[12] >> 4) * 4], payload=seg[(seg[12] >> 4) * 4:], src=HOST if ip[12:16] ==
                  bytes([10, 0, 0, 1]) else PEER, dst=PEER if ip[12:16] == bytes([10, 0, 0, 1]) else HOST)
    return fresh[16:18] == seg[16:18]


def _shift(capture: list[bytes], kernel_synack: bytes) -> SeqShift:
    shift = SeqShift({bytes.fromhex(HOST_MAC.replace(":", ""))})
    shift.learn_capture(capture)
    shift.learn_kernel([kernel_synack])
    return shift


def test_ack_sack_and_tsecr_move_by_the_kernels_offsets_with_a_valid_checksum() -> None:
    ack = _peer("A", 1001 + 50, _sack(1001 + 10, 1001 + 20) + _ts(7, 3000))
    shift = _shift([_peer("S", 0), _peer("A", 1001, _ts(6, 3000)), ack], _host("SA", 90000, _ts(123456, 7)))
    out = shift.rewrite(ack)
    seg = locate(out)
    assert seg is not None
    assert seg.fields(out)[5] == 90001 + 50            # ack re-based on the kernel's ISN 90000
    sack = out[seg.tcp + 20 + 5:seg.tcp + 20 + 13]
    assert struct.unpack("!II", sack) == (90001 + 10, 90001 + 20)
    assert tsval_tsecr(out, seg) == (7, 123456)        # TSecr now one of the kernel's TSvals
    assert _checksum_ok(ack) and _checksum_ok(out)


def test_capture_synack_is_preferred_over_the_peers_ack() -> None:
    synack = _host("SA", 5000, _ts(777, 1))
    ack = _peer("A", 5001, _ts(2, 777))
    shift = _shift([_peer("S", 0), synack, ack], _host("SA", 6000, _ts(900, 2)))
    out = shift.rewrite(ack)
    seg = locate(out)
    assert seg is not None and seg.fields(out)[5] == 6001 and tsval_tsecr(out, seg) == (2, 900)


def test_bad_checksum_stays_bad_by_the_same_amount() -> None:
    good = _peer("A", 1001)
    bad = _peer("A", 1001, tcp_check=struct.unpack("!H", good[14 + 20 + 16:14 + 20 + 18])[0] ^ 0x00FF)
    shift = _shift([_peer("S", 0), good], _host("SA", 42))
    assert _checksum_ok(shift.rewrite(good))
    assert not _checksum_ok(shift.rewrite(bad))


def test_other_connections_and_unknown_kernel_isn_are_left_alone() -> None:
    ack = _peer("A", 1001)
    shift = _shift([_peer("S", 0), ack], _frame(HOST, PEER, 80, 40001, "SA", 5, 0, b"", HOST_MAC, PEER_MAC))
    assert shift.rewrite(ack) == ack


def test_host_frames_in_the_capture_are_expected_output_not_injections(tmp_path) -> None:
    from pathtrace.host.loader import load_host
    path = tmp_path / "h.yaml"
    path.write_text(f"name: h\ninterfaces:\n  - {{name: eth0, mac: \"{HOST_MAC}\", addresses: [{HOST}/24]}}\n")
    frames = [frame_from_ether(d, n, float(n)) for n, d in
              enumerate([_host("S", 1), _peer("S", 0), _host("SA", 77), _peer("A", 78)])]
    injections = plan(load_host(str(path)), frames)
    assert [i.index for i in injections] == [1, 3]
    assert [dev for dev, _ in injections[0].expected] == ["eth0", "eth0"]   # the early SYN joins the first
    assert injections[0].expected_summaries()[1].endswith("TCP 80>40000 SA")
    assert injections[1].expected == []
