"""Streaming capture reader: pcap (all magics, both byte orders) and pcapng.

Files are read in 1 MiB chunks and records parsed in place with struct, so memory
stays flat and only each packet's payload is copied.  dpkt is not used on this
path: its per-record objects cost several times the whole parse, and its pcapng
reader keeps only the first section's interfaces.

Truncation policy: a final record whose header is complete but whose data is cut
short yields one Frame with `error` set ("truncated record (N of M bytes)") and
whatever link-layer fields could be parsed; a final record header that is itself
incomplete is dropped silently.  Either way iteration then ends without raising.
Corruption that makes the next record impossible to find raises CaptureError.
"""
from __future__ import annotations

import gzip
import os
import struct
import sys
import zlib
from typing import Any, BinaryIO, Iterator

from pathtrace.errors import CaptureError
from pathtrace.capture.frame import Frame, sll_direction
from pathtrace.capture.linktypes import (
    LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, VLAN_TPIDS, parser_for, sll2_ifindex,
)
from pathtrace.capture.pcapng import CHUNK, PcapngCursor, count_pcapng, section_endian
from pathtrace.capture.reorder import WINDOW_FRAMES, WINDOW_SECONDS, OrderedFrames

__all__ = ["Frame", "FrameReader", "read_frames", "count_frames"]

_NO_VLAN: tuple[int, ...] = ()
MAX_RECORD = 64 << 20  # caplen beyond this is a corrupt header, not a packet
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"

# magic as read big-endian -> (timestamp divisor, record header size)
_PCAP_MAGICS = {
    0xA1B2C3D4: (1e6, 16),   # classic, microseconds
    0xA1B23C4D: (1e9, 16),   # nanosecond
    0xA1B2CD34: (1e6, 24),   # Kuznetzov's patched libpcap: 8 extra bytes per record
}


def _open(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    try:
        f: BinaryIO = open(path, "rb")
    except OSError as exc:
        raise CaptureError(f"cannot open capture: {exc.strerror or exc}", file=path) from None
    except ValueError:                          # a NUL in the name (a YAML "\0" escape)
        raise CaptureError("cannot open capture: NUL character in its name", file=repr(path)) from None
    if not f.seekable():  # a pipe or FIFO: cannot peek for gzip, read it as it is
        return f
    gz = f.read(2) == GZIP_MAGIC
    f.seek(0)
    if gz:
        f.close()
        return gzip.open(path, "rb")  # type: ignore[return-value]  # owns its file
    return f


def _read_exact(f: BinaryIO, n: int, path: str) -> bytes:
    try:
        data = f.read(n)
        while len(data) < n:
            more = f.read(n - len(data))
            if not more:
                break
            data += more
    except (OSError, EOFError, zlib.error) as exc:
        raise CaptureError(f"cannot read capture: {exc}", file=path) from None
    return data


def _sniff(f: BinaryIO, path: str) -> tuple[str, bytes, tuple]:
    """Identify the format; returns (kind, bytes read so far, format details)."""
    head = _read_exact(f, 24, path)
    if not head:
        raise CaptureError("empty file, not a capture", file=path)
    if head[:4] == PCAPNG_MAGIC:
        if len(head) < 12 or section_endian(head[8:12]) is None:
            raise CaptureError("truncated or corrupt pcapng section header", file=path)
        return "pcapng", head, ()
    if len(head) >= 4:
        for endian in (">", "<"):
            info = _PCAP_MAGICS.get(struct.unpack(endian + "I", head[:4])[0])
            if info is None:
                continue
            if len(head) < 24:
                raise CaptureError(f"truncated pcap file header ({len(head)} of 24 bytes)", file=path)
            _major, _minor, _zone, _sigfigs, _snaplen, linktype = struct.unpack(endian + "HHiIII", head[4:24])
            return "pcap", head[24:], (endian, info[0], info[1], linktype & 0xFFFF)
    raise CaptureError(f"not a pcap or pcapng file (starts with {head[:4].hex()})", file=path)


class PcapCursor:
    """A classic pcap file's records, parsed in place from a chunk buffer.

    `next_frame` gives them one at a time as Frames; `serve` lets the replay cache's C lane
    (_fastpath.serve_pcap) consume records straight from the buffer instead."""

    def __init__(self, f: BinaryIO, buf: bytes, endian: str, divisor: float, hlen: int, linktype: int, path: str):
        self._read = getattr(f, "read1", f.read)  # what is there now: a live pipe is not held back
        self._unpack_from = struct.Struct(endian + "IIII").unpack_from
        self._parse = parser_for(linktype)
        self.little = endian == "<"
        self.divisor = divisor
        self.hlen = hlen
        self.linktype = linktype
        self.ether = linktype == LINKTYPE_ETHERNET
        self.path = path
        self.buf = buf
        self.off = 0
        self.index = 0
        self._eof = False
        self._done = False

    def serve(self, accel: Any, count: int, *lane: Any, mega: Any = None) -> tuple[int, int, bytes | None]:
        """Let the C lane serve records from here (_fastpath.serve_pcap; `lane`: the cache's
        entries, clock, template type, step text and foreign keys; `mega`: the megaflow cache's
        MegaLane or None); returns (served, consumed, lines) and moves past what it consumed."""
        if self._done or not self.ether:     # the lane takes Ethernet only; cooked SLL/SLL2 records
                                             # carry a direction that Python must look at
            return 0, 0, None
        off, index, served, text = accel.serve_pcap(self.buf, self.off, self.index, count, self.little,
                                                    self.divisor, self.hlen, *lane, mega)
        consumed = index - self.index
        self.off, self.index = off, index
        return served, consumed, text

    def _more(self, need: int) -> bool:
        """Keep the unread part of the buffer and read at least `need` more bytes' worth."""
        more = self._read(max(CHUNK, need))
        self._eof = not more
        self.buf = self.buf[self.off:] + more
        self.off = 0
        return bool(more)

    def next_frame(self) -> Frame | None:
        """The next record as a Frame; None at the end of the file."""
        hlen = self.hlen
        while not self._done:
            buf, off = self.buf, self.off
            if len(buf) - off < hlen:
                if self._eof or not self._more(0):
                    return None
                continue
            sec, frac, caplen, wirelen = self._unpack_from(buf, off)
            index = self.index
            if caplen > MAX_RECORD:
                raise CaptureError(f"corrupt pcap record {index}: captured length {caplen}", file=self.path)
            start = off + hlen
            end = start + caplen
            ts = sec + frac / self.divisor
            if end > len(buf):
                if not self._eof and self._more(end - len(buf)):
                    continue
                self._done = True
                end = len(buf)
                dst, src, pkt_type, vlan, etype, payload, _err = self._parse(buf, start, end)
                return Frame(index, ts, None, self.linktype, dst, src, pkt_type, vlan, etype, payload, wirelen,
                             end - start, f"truncated record ({end - start} of {caplen} bytes)",
                             sll_direction(pkt_type), self._ifindex(buf, start, end))
            self.off = end
            self.index = index + 1
            if self.ether and caplen >= 14:
                # Inlined parse_ethernet for the common untagged case (the hot path).
                etype = (buf[start + 12] << 8) | buf[start + 13]
                if etype >= 0x600 and etype not in VLAN_TPIDS:
                    return Frame(index, ts, None, 1, buf[start:start + 6], buf[start + 6:start + 12], None,
                                 _NO_VLAN, etype, buf[start + 14:end], wirelen, caplen, None)
            dst, src, pkt_type, vlan, etype, payload, err = self._parse(buf, start, end)
            return Frame(index, ts, None, self.linktype, dst, src, pkt_type, vlan, etype, payload, wirelen,
                         caplen, err, sll_direction(pkt_type), self._ifindex(buf, start, end))
        return None

    def _ifindex(self, buf: bytes, start: int, end: int) -> int | None:
        return sll2_ifindex(buf, start, end) if self.linktype == LINKTYPE_LINUX_SLL2 else None


class FrameReader:
    """Iterator over a capture's frames that owns (and closes) the open file.

    The header is checked on construction, so a bad file fails before iteration.
    """

    def __init__(self, path: str):
        self.path = path
        self._f: BinaryIO | None = None
        self._f = _open(path)
        try:
            kind, buf, info = _sniff(self._f, path)
        except BaseException:
            self.close()
            raise
        self.format = kind
        self.cursor: PcapCursor | PcapngCursor | None = None     # the record position, for raw readers
        if kind == "pcapng":
            self.linktype: int | None = None  # per interface
            self.cursor = PcapngCursor(self._f, path, buf)
            gen = iter(self.cursor.next_frame, None)
        else:
            endian, divisor, hlen, self.linktype = info
            self.cursor = PcapCursor(self._f, buf, endian, divisor, hlen, self.linktype, path)
            gen = iter(self.cursor.next_frame, None)
        self._gen = self._guard(gen)

    def may_be_unordered(self) -> bool:
        """Whether the file may not be in time order: a pcapng declaring several interfaces
        before its first packet (dumpcap -i A -i B writes per-interface batches).  A pcap or
        single-interface pcapng comes from one capture handle, in time order.  Call before
        reading frames."""
        return isinstance(self.cursor, PcapngCursor) and self.cursor.interfaces_ahead() > 1

    def _guard(self, gen: Iterator[Frame]) -> Iterator[Frame]:
        """Turn I/O failures mid-file into CaptureError and close the file at the end."""
        try:
            yield from gen
        except (OSError, EOFError, zlib.error) as exc:
            raise CaptureError(f"cannot read capture: {exc}", file=self.path) from None
        finally:
            self.close()

    def __iter__(self) -> Iterator[Frame]:
        return self._gen

    def __next__(self) -> Frame:
        return next(self._gen)

    def close(self) -> None:
        f = self._f
        if f is not None and f is not getattr(sys.stdin, "buffer", None):
            f.close()
        self._f = None

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self._gen.close()
        self.close()

    def __del__(self) -> None:
        self.close()


def read_frames(path: str, ordered: bool | str = False, window_frames: int = WINDOW_FRAMES,
                window_seconds: float = WINDOW_SECONDS) -> "FrameReader | OrderedFrames":
    """Stream the frames of a pcap/pcapng file ("-" for stdin, .gz transparently).

    ordered=False: file order, a FrameReader (with `.cursor` for the C lanes).
    ordered=True: timestamp order through a bounded window (capture/reorder.py), an
    OrderedFrames without `.cursor`; ordered="auto": that only when the file may be out of
    order (FrameReader.may_be_unordered: a pcapng with several interfaces), else file order.
    Raises CaptureError at once if the file is missing or not a capture.
    """
    reader = FrameReader(path)
    if ordered == "auto":
        ordered = reader.may_be_unordered()
    elif not isinstance(ordered, bool):
        raise ValueError(f"ordered must be True, False or 'auto', not {ordered!r}")
    if not ordered:
        return reader
    return OrderedFrames(reader, window_frames, window_seconds)


def count_frames(path: str) -> int | None:
    """How many frames read_frames(path) will yield, by seeking over record headers.

    None when that cannot be done cheaply (stdin, gzip).  Raises CaptureError as
    read_frames does.
    """
    if path == "-":
        return None
    f = _open(path)
    try:
        if isinstance(f, gzip.GzipFile) or not f.seekable():
            return None
        kind, buf, info = _sniff(f, path)
        size = os.fstat(f.fileno()).st_size
        if kind == "pcapng":
            f.seek(0)
            return count_pcapng(f, path, size)
        hlen = info[2]
        unpack = struct.Struct(info[0] + "I").unpack
        pos = 24
        count = 0
        while pos + hlen <= size:
            f.seek(pos + 8)
            caplen = unpack(f.read(4))[0]
            if caplen > MAX_RECORD:
                raise CaptureError(f"corrupt pcap record {count}: captured length {caplen}", file=path)
            count += 1
            pos += hlen + caplen
        return count
    finally:
        f.close()
