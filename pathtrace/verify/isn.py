"""Re-basing a capture's TCP conversations on the sequence numbers the live kernel chose.

A capture's peer acknowledges the ISN (and echoes the TSval) that the capturing host
chose; the lab's kernel picks its own, so a peer ACK replayed unchanged is out of window
(and, since 6.12, its TSecr is outside the SYN-ACK's TSvals: tcp_check_req tsecr_reject).
Every field of a peer segment that names the host's sequence or timestamp space (ack,
SACK blocks, TSecr) is shifted by (kernel value - capture value), learned per connection
from the kernel's first SYN/SYN-ACK and from the capture's host SYN/SYN-ACK or else the
peer's first ACK.  The TCP checksum is updated incrementally (RFC 1624), so a segment
with a bad checksum keeps exactly the same error.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

Key = tuple[bytes, int, bytes, int]   # host address, host port, peer address, peer port

TH_SYN, TH_ACK = 0x02, 0x10
TCPOPT_EOL, TCPOPT_NOP, TCPOPT_SACK, TCPOPT_TIMESTAMP = 0, 1, 5, 8


@dataclass(slots=True)
class Segment:
    """Where the TCP header of an Ethernet frame is, for an unfragmented IPv4 TCP packet."""

    ip: int
    tcp: int
    end: int      # end of the TCP options

    def fields(self, frame: bytes) -> tuple[bytes, int, bytes, int, int, int, int]:
        """src, sport, dst, dport, seq, ack, flags."""
        sport, dport, seq, ack = struct.unpack_from("!HHII", frame, self.tcp)
        return (frame[self.ip + 12:self.ip + 16], sport, frame[self.ip + 16:self.ip + 20], dport, seq, ack,
                frame[self.tcp + 13])


def locate(frame: bytes) -> Segment | None:
    off, etype = 12, b""
    while off + 2 <= len(frame):
        etype = frame[off:off + 2]
        if etype not in (b"\x81\x00", b"\x88\xa8"):
            break
        off += 4
    ip = off + 2
    if etype != b"\x08\x00" or len(frame) < ip + 20 or frame[ip] >> 4 != 4 or frame[ip + 9] != 6:
        return None
    if struct.unpack_from("!H", frame, ip + 6)[0] & 0x3FFF:   # a fragment: the TCP header is not whole
        return None
    tcp = ip + (frame[ip] & 0xF) * 4
    if len(frame) < tcp + 20:
        return None
    end = tcp + (frame[tcp + 12] >> 4) * 4
    return Segment(ip, tcp, min(end, len(frame))) if end >= tcp + 20 else None


def options(frame: bytes, seg: Segment) -> list[tuple[int, int, int]]:
    """(kind, offset of the value, length of the value) of each TCP option."""
    out, pos = [], seg.tcp + 20
    while pos < seg.end:
        kind = frame[pos]
        if kind == TCPOPT_EOL:
            break
        if kind == TCPOPT_NOP:
            pos += 1
            continue
        if pos + 1 >= seg.end or frame[pos + 1] < 2 or pos + frame[pos + 1] > seg.end:
            break
        out.append((kind, pos + 2, frame[pos + 1] - 2))
        pos += frame[pos + 1]
    return out


def tsval_tsecr(frame: bytes, seg: Segment) -> tuple[int, int] | None:
    for kind, off, size in options(frame, seg):
        if kind == TCPOPT_TIMESTAMP and size == 8:
            return struct.unpack_from("!II", frame, off)
    return None


def _csum_replace(frame: bytearray, csum_at: int, old: bytes, new: bytes) -> None:
    """RFC 1624 eqn. 3, 16 bits at a time: HC' = ~(~HC + ~m + m')."""
    total = ~struct.unpack_from("!H", frame, csum_at)[0] & 0xFFFF
    for i in range(0, len(old), 2):
        m, m2 = struct.unpack_from("!H", old, i)[0], struct.unpack_from("!H", new, i)[0]
        total += (~m & 0xFFFF) + m2
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    struct.pack_into("!H", frame, csum_at, ~total & 0xFFFF)


def _add32(frame: bytearray, at: int, delta: int, tcp: int) -> None:
    """Add `delta` to the 32-bit field at `at`; the checksum words are aligned on the TCP header."""
    lo = at - ((at - tcp) & 1)
    hi = lo + (6 if lo != at else 4)
    old = bytes(frame[lo:hi]).ljust(hi - lo, b"\0")
    struct.pack_into("!I", frame, at, (struct.unpack_from("!I", frame, at)[0] + delta) & 0xFFFFFFFF)
    _csum_replace(frame, tcp + 16, old, bytes(frame[lo:hi]).ljust(hi - lo, b"\0"))


@dataclass
class SeqShift:
    """Per-connection ISN and TSval, as the capture had them and as the kernel chose them."""

    host_macs: set[bytes]
    capture_isn: dict[Key, int] = field(default_factory=dict)
    capture_tsval: dict[Key, int] = field(default_factory=dict)
    kernel_isn: dict[Key, int] = field(default_factory=dict)
    kernel_tsval: dict[Key, int] = field(default_factory=dict)

    def learn_capture(self, frames: list[bytes]) -> None:
        """The host's ISN of each connection: its SYN/SYN-ACK in the capture, else the peer's first ACK - 1."""
        for data in frames:
            seg = locate(data)
            if seg is None:
                continue
            src, sport, dst, dport, seq, ack, flags = seg.fields(data)
            ts = tsval_tsecr(data, seg)
            if data[6:12] in self.host_macs:
                key = (src, sport, dst, dport)
                if flags & TH_SYN and key not in self.capture_isn:
                    self.capture_isn[key] = seq
                    if ts:
                        self.capture_tsval[key] = ts[0]
            else:
                key = (dst, dport, src, sport)
                if flags & TH_ACK and key not in self.capture_isn:
                    self.capture_isn[key] = (ack - 1) & 0xFFFFFFFF
                    if ts and ts[1]:
                        self.capture_tsval[key] = ts[1]

    def learn_kernel(self, frames: list[bytes]) -> None:
        """The kernel's own first SYN or SYN-ACK of a connection gives its ISN and TSval."""
        for data in frames:
            seg = locate(data)
            if seg is None:
                continue
            src, sport, dst, dport, seq, _, flags = seg.fields(data)
            key = (src, sport, dst, dport)
            if flags & TH_SYN and key not in self.kernel_isn:
                self.kernel_isn[key] = seq
                ts = tsval_tsecr(data, seg)
                if ts:
                    self.kernel_tsval[key] = ts[0]

    def rewrite(self, wire: bytes) -> bytes:
        """A peer segment with ack, SACK blocks and TSecr moved into the kernel's spaces."""
        seg = locate(wire)
        if seg is None:
            return wire
        src, sport, dst, dport, _, _, flags = seg.fields(wire)
        key = (dst, dport, src, sport)
        frame = bytearray(wire)
        if key in self.kernel_isn and key in self.capture_isn:
            delta = (self.kernel_isn[key] - self.capture_isn[key]) & 0xFFFFFFFF
            if delta and flags & TH_ACK:
                _add32(frame, seg.tcp + 8, delta, seg.tcp)
            if delta:
                for kind, off, size in options(wire, seg):
                    if kind == TCPOPT_SACK:
                        for at in range(off, off + size - size % 8, 4):
                            _add32(frame, at, delta, seg.tcp)
        if key in self.kernel_tsval and key in self.capture_tsval:
            delta = (self.kernel_tsval[key] - self.capture_tsval[key]) & 0xFFFFFFFF
            for kind, off, size in options(wire, seg):
                if kind == TCPOPT_TIMESTAMP and size == 8 and struct.unpack_from("!I", wire, off + 4)[0] and delta:
                    _add32(frame, off + 4, delta, seg.tcp)
        return bytes(frame)
