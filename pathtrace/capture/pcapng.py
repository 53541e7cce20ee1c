"""pcapng block walker (own parser: dpkt's reader keeps only the first section's
interfaces, and files with several SHBs, byte orders or link types are common
from dumpcap and mergecap).

Only packet blocks (EPB 6, SPB 3, obsolete PB 2) become Frames; every other block
is skipped by its length.  Each SHB starts a new section with its own byte order
and interface list, as the spec requires.
"""
from __future__ import annotations

import struct
from typing import Any, BinaryIO, Iterator

from pathtrace.errors import CaptureError
from pathtrace.capture.frame import DIR_UNKNOWN, Frame, sll_direction
from pathtrace.capture.linktypes import LINKTYPE_LINUX_SLL2, VLAN_TPIDS, L2Parser, parser_for, sll2_ifindex

SHB = 0x0A0D0D0A
IDB = 0x00000001
PB = 0x00000002
SPB = 0x00000003
EPB = 0x00000006
_PACKET_BLOCKS = (PB, SPB, EPB)

OPT_ENDOFOPT = 0
IF_NAME = 2
IF_TSRESOL = 9
IF_TSOFFSET = 14
EPB_FLAGS = 2          # epb_flags: bits 0-1 direction (01 inbound, 10 outbound), 2-4 reception type

BOM_LE = b"\x4d\x3c\x2b\x1a"
BOM_BE = b"\x1a\x2b\x3c\x4d"
CHUNK = 1 << 20
MAX_BLOCK = 64 << 20  # larger lengths are corruption, not packets (Wireshark caps at 16 MiB)

_NO_VLAN: tuple[int, ...] = ()


class Interface:
    """What a packet needs from its IDB: link type, name, and how to scale timestamps."""

    __slots__ = ("linktype", "parse", "name", "divisor", "offset", "snaplen")

    def __init__(self, linktype: int, name: str | None, divisor: float, offset: int, snaplen: int):
        self.linktype = linktype
        self.parse: L2Parser = parser_for(linktype)
        self.name = name
        self.divisor = divisor
        self.offset = offset
        self.snaplen = snaplen


def section_endian(bom: bytes) -> str | None:
    return "<" if bom == BOM_LE else ">" if bom == BOM_BE else None


def parse_options(buf: bytes, pos: int, end: int, e: str) -> dict[int, bytes]:
    """TLV options (first occurrence of each code); stops quietly at anything malformed."""
    opts: dict[int, bytes] = {}
    while pos + 4 <= end:
        code, length = struct.unpack_from(e + "HH", buf, pos)
        if code == OPT_ENDOFOPT:
            break
        pos += 4
        if pos + length > end:
            break
        opts.setdefault(code, buf[pos:pos + length])
        pos += (length + 3) & ~3
    return opts


def parse_idb(buf: bytes, pos: int, end: int, e: str) -> Interface:
    if end - pos < 8:
        return Interface(-1, None, 1e6, 0, 0)
    linktype, _reserved, snaplen = struct.unpack_from(e + "HHI", buf, pos)
    opts = parse_options(buf, pos + 8, end, e)
    name = None
    if IF_NAME in opts:
        name = opts[IF_NAME].rstrip(b"\0").decode("utf-8", "replace")
    divisor = 1e6
    if IF_TSRESOL in opts and opts[IF_TSRESOL]:
        r = opts[IF_TSRESOL][0]
        divisor = float(2 ** (r & 0x7F)) if r & 0x80 else float(10 ** r)
    offset = 0
    if len(opts.get(IF_TSOFFSET, b"")) == 8:
        offset = struct.unpack(e + "q", opts[IF_TSOFFSET])[0]
    return Interface(linktype, name, divisor, offset, snaplen)


def epb_direction(buf: bytes, pos: int, end: int, e: str) -> int:
    """The direction bits of an EPB's epb_flags option in buf[pos:end] (its options), 0 without one.

    Value 3 is invalid in the spec and read as unknown."""
    flags = parse_options(buf, pos, end, e).get(EPB_FLAGS)
    if flags is None or len(flags) != 4:
        return DIR_UNKNOWN
    bits = struct.unpack(e + "I", flags)[0] & 3
    return bits if bits != 3 else DIR_UNKNOWN


def _frame(index: int, ts: float, iface: Interface | None, buf: bytes, start: int, end: int,
           wirelen: int, error: str | None, direction: int = DIR_UNKNOWN) -> Frame:
    """Build a Frame from the packet bytes buf[start:end]; `error` overrides the L2 one, and
    the EPB flags' `direction`, when known, the one of an SLL/SLL2 packet type."""
    if iface is None or iface.linktype < 0:
        return Frame(index, ts, None, -1, None, None, None, _NO_VLAN, 0, b"", wirelen,
                     end - start, error or "malformed interface description block", direction)
    dst, src, pkt_type, vlan, etype, payload, l2err = iface.parse(buf, start, end)
    ifindex = sll2_ifindex(buf, start, end) if iface.linktype == LINKTYPE_LINUX_SLL2 else None
    return Frame(index, ts, iface.name, iface.linktype, dst, src, pkt_type, vlan, etype, payload,
                 wirelen, end - start, error or l2err, direction or sll_direction(pkt_type), ifindex)


class PcapngCursor:
    """A pcapng stream's packets, block by block from a chunk buffer.

    `next_frame` gives them one at a time as Frames; `serve` lets the replay cache's C lane
    (_fastpath.serve_pcapng) consume Enhanced Packet Blocks straight from the buffer
    instead, with the current section's byte order and interfaces."""

    def __init__(self, f: BinaryIO, path: str, buf: bytes):
        self._read = getattr(f, "read1", f.read)  # what is there now: a live pipe is not held back
        self.path = path
        self.buf = buf
        self.off = 0
        self.index = 0
        self.last_ts = 0.0
        self.ifaces: list[Interface] = []
        self._lane_ifaces: tuple | None = None
        self._consumed = 0  # file offset of buf[0], for error messages
        self.malformed = 0  # packet blocks too short for their header (replayed as malformed records)
        self.first_malformed: int | None = None
        self._eof = False
        self._done = False
        self._section("<")

    def _section(self, e: str) -> None:
        self.little = e == "<"
        self._e = e
        self._u32 = struct.Struct(e + "I").unpack_from
        self._hdr = struct.Struct(e + "II").unpack_from
        self._epb = struct.Struct(e + "IIIII").unpack_from
        self._pb = struct.Struct(e + "HHIIII").unpack_from
        self.ifaces = []
        self._lane_ifaces = None

    def lane_ifaces(self) -> tuple:
        """The section's interfaces as serve_pcapng takes them: (linktype, divisor, offset, name)."""
        if self._lane_ifaces is None:
            self._lane_ifaces = tuple((i.linktype, i.divisor, i.offset, (i.name or "").encode()) for i in self.ifaces)
        return self._lane_ifaces

    def serve(self, accel: Any, count: int, *lane: Any, mega: Any = None) -> tuple[int, int, bytes | None]:
        """Let the C lane serve packet blocks from here (_fastpath.serve_pcapng; `lane`: the
        cache's entries, clock, template type, step text and foreign keys; `mega`: the megaflow
        cache's MegaLane or None); returns (served, consumed, lines) and moves past what it
        consumed."""
        if self._done:
            return 0, 0, None
        off, index, served, text, last_ts = accel.serve_pcapng(self.buf, self.off, self.index, count, self.little,
                                                               self.lane_ifaces(), self.last_ts, *lane, mega)
        consumed = index - self.index
        self.off, self.index, self.last_ts = off, index, last_ts
        return served, consumed, text

    def interfaces_ahead(self) -> int:
        """How many interfaces the stream declares before its first packet (dumpcap writes all its
        IDBs first), looking only at what one buffer read brings; consumes nothing."""
        if len(self.buf) - self.off < CHUNK and not self._eof:
            self._more(0)
        buf, pos, count = self.buf, self.off, len(self.ifaces)
        e = self._e
        while pos + 12 <= len(buf):
            if buf[pos:pos + 4] == b"\x0a\x0d\x0d\x0a":     # a section header: its byte order from here
                e = section_endian(buf[pos + 8:pos + 12]) or e
            btype, blen = struct.unpack_from(e + "II", buf, pos)
            if btype in _PACKET_BLOCKS or blen < 12 or blen & 3:
                break
            if btype == IDB:
                count += 1
            pos += blen
        return count

    def _more(self, need: int) -> bool:
        more = self._read(max(CHUNK, need))
        self._eof = not more
        self._consumed += self.off
        self.buf = self.buf[self.off:] + more
        self.off = 0
        return bool(more)

    def next_frame(self) -> Frame | None:
        """The next packet as a Frame; None at the end of the stream."""
        while not self._done:
            buf, off = self.buf, self.off
            avail = len(buf) - off
            if avail < 12:
                if self._eof or not self._more(0):
                    return None  # clean end, or a partial block header we cannot use
                continue
            if buf[off:off + 4] == b"\x0a\x0d\x0d\x0a":
                e = section_endian(buf[off + 8:off + 12])
                if e is None:
                    raise CaptureError(f"corrupt pcapng section header at byte {self._consumed + off}",
                                       file=self.path)
                self._section(e)
            btype, blen = self._hdr(buf, off)
            if blen < 12 or blen & 3 or blen > MAX_BLOCK:
                raise CaptureError(f"corrupt pcapng block at byte {self._consumed + off} (length {blen})",
                                   file=self.path)
            truncated = False
            if blen > avail:
                if not self._eof and self._more(blen - avail):
                    continue
                buf, off = self.buf, self.off
                if btype not in _PACKET_BLOCKS:
                    self._done = True
                    return None
                truncated = True
            frame = self._block(btype, blen, buf, off, truncated)
            if truncated:
                self._done = True
            else:
                self.off = off + blen
            if frame is not None:
                return frame
        return None

    def _malformed(self, index: int, off: int, blen: int, need: int) -> Frame:
        """A packet block, not at the end of the file, too short for its own header: one record (a frame
        with `error`, as the kernel never sees such a frame) and the replay goes on with the next block."""
        self.index = index + 1
        self.malformed += 1
        if self.first_malformed is None:
            self.first_malformed = self._consumed + off
        return Frame(index, self.last_ts, None, -1, None, None, None, _NO_VLAN, 0, b"", 0, 0,
                     f"malformed pcapng packet block at byte {self._consumed + off} (length {blen}: "
                     f"too short for its {need}-byte packet header)")

    def _block(self, btype: int, blen: int, buf: bytes, off: int, truncated: bool) -> Frame | None:
        """The packet of the block at buf[off:], None for other blocks (an IDB is taken in)."""
        body = off + 8
        bend = off + blen - 4 if not truncated else len(buf)
        index = self.index
        if btype == EPB or btype == PB:
            if bend - body < 20:
                if truncated:
                    self._done = True
                    return None  # the file ends inside the packet header: nothing to report
                return self._malformed(index, off, blen, 20)
            if btype == EPB:
                ifid, hi, lo, caplen, wirelen = self._epb(buf, body)
            else:
                ifid, _drops, hi, lo, caplen, wirelen = self._pb(buf, body)
            iface = self.ifaces[ifid] if ifid < len(self.ifaces) else None
            ticks = (hi << 32) | lo
            ts = ticks / iface.divisor + iface.offset if iface is not None else ticks / 1e6
            start = body + 20
            end = start + caplen
            error = None
            if end > bend:
                error = (f"truncated record ({bend - start} of {caplen} bytes)" if truncated
                         else f"captured length {caplen} exceeds its block")
                end = bend
            elif iface is None:
                error = f"packet refers to undefined interface {ifid}"
            self.last_ts = ts
            self.index = index + 1
            direction = DIR_UNKNOWN
            if btype == EPB:
                opts = start + ((caplen + 3) & ~3)
                if opts + 4 <= bend:
                    direction = epb_direction(buf, opts, bend, self._e)
            if error is None and iface.linktype == 1 and caplen >= 14:
                # Inlined parse_ethernet for the common untagged case (the hot path).
                etype = (buf[start + 12] << 8) | buf[start + 13]
                if etype >= 0x600 and etype not in VLAN_TPIDS:
                    return Frame(index, ts, iface.name, 1, buf[start:start + 6], buf[start + 6:start + 12],
                                 None, _NO_VLAN, etype, buf[start + 14:end], wirelen, caplen, None, direction)
            return _frame(index, ts, iface, buf, start, end, wirelen, error, direction)
        if btype == SPB:
            if bend - body < 4:
                if truncated:
                    self._done = True
                    return None
                return self._malformed(index, off, blen, 4)
            wirelen = self._u32(buf, body)[0]
            iface = self.ifaces[0] if self.ifaces else None
            start = body + 4
            caplen = wirelen
            if iface is not None and iface.snaplen:
                caplen = min(caplen, iface.snaplen)
            end = start + caplen
            error = None
            if end > bend:
                error = (f"truncated record ({bend - start} of {caplen} bytes)" if truncated
                         else f"packet length {caplen} exceeds its simple packet block")
                end = bend
            if iface is None:
                error = error or "simple packet block before any interface description"
            self.index = index + 1
            # An SPB has no timestamp: keep the previous packet's so replay time stays monotonic.
            return _frame(index, self.last_ts, iface, buf, start, end, wirelen, error)
        if btype == IDB:
            self.ifaces.append(parse_idb(buf, body, bend, self._e))
            self._lane_ifaces = None
        return None


def pcapng_frames(f: BinaryIO, path: str, buf: bytes) -> Iterator[Frame]:
    """Frames of a pcapng stream; `buf` holds bytes already read from the start of f."""
    return iter(PcapngCursor(f, path, buf).next_frame, None)


def count_pcapng(f: BinaryIO, path: str, size: int) -> int:
    """Count what pcapng_frames would yield by seeking from block header to block header."""
    count = 0
    e = "<"
    pos = f.tell()
    while True:
        head = f.read(12)
        if len(head) < 12:
            return count
        if head[:4] == b"\x0a\x0d\x0d\x0a":
            e = section_endian(head[8:12])
            if e is None:
                raise CaptureError(f"corrupt pcapng section header at byte {pos}", file=path)
        btype, blen = struct.unpack(e + "II", head[:8])
        if blen < 12 or blen & 3 or blen > MAX_BLOCK:
            raise CaptureError(f"corrupt pcapng block at byte {pos} (length {blen})", file=path)
        if pos + blen > size:  # truncated last block: a frame only if its packet header is there
            if btype in _PACKET_BLOCKS and size - pos >= (12 if btype == SPB else 28):
                count += 1
            return count
        if btype in _PACKET_BLOCKS:
            count += 1
        pos += blen
        f.seek(pos)
