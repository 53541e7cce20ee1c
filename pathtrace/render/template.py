"""Per-flow templates of `replay`'s output, for the records the replay cache serves.

Records the cache serves for one flow entry differ only in index, time, the TCP sequence
and acknowledgement numbers or the ICMP echo sequence number (in the input and emitted
summaries), the detail of the conntrack tracker's step and the emitted frame's bytes
(FlowCache.replay).  A template is
the entry's output - a JSON line or a text block - rendered by the format's own writer
with markers in those places, cut at the markers.  It is used only if it gives the first
record's output exactly.  Per tracker detail (a flow has few: the timeout it refreshed to)
the template keeps one `flat`: literal text alternating with value numbers, 0 index,
1 time, 2 seq (TCP's, or an echo's), 3 ack, 5 frame hex; the C accelerator fills flats the
same way for the packets it serves (_fastpath.serve_pcap / serve_pcapng), and writes them to
the output's file descriptor itself when given one (DirectLines).
"""
from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass, replace
from typing import Any, Callable, TextIO

from pathtrace.packet.decode import describe_frame
from pathtrace.render.fields import emitted_summary
from pathtrace.render.jsonl import _dumps, write_jsonl
from pathtrace.render.text import write_text
from pathtrace.trace import PacketRecord, Step

_MARK_INDEX = -731_048_591_247_113
_MARK_SEQ, _MARK_ACK, _MARK_HEX = "\ue000", "\ue001", "\ue002"
_SEQ_ACK = struct.Struct("!II").unpack_from
_U16 = struct.Struct("!H").unpack_from
# FlowTemplate.numbers: which per-packet numbers a flow's summaries show (read by _fastpath too)
NO_NUMBERS, TCP_SEQ_ACK, ECHO_SEQ = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Format:
    """An output format as templates need it: its writer, and how it prints the time."""

    write: Callable[[PacketRecord, TextIO], None]
    time_format: str                # "r": repr (JSON); "f": six decimals (text); as _fastpath formats it
    time_mark: float                # a time whose printed form is found nowhere else in the output

    def time_text(self, t: float) -> str:
        return repr(t) if self.time_format == "r" else f"{t:.6f}"


JSONL = Format(write_jsonl, "r", 1.0000000000000002e-299)
TEXT = Format(lambda record, out: write_text(record, out, False), "f", 8765432109.876543)
TEXT_VERBOSE = Format(lambda record, out: write_text(record, out, True), "f", 8765432109.876543)


class _Bytes(bytes):
    """An emitted frame whose hex() is a marker: where the template splices each packet's frame."""

    def hex(self, *args: Any) -> str:  # type: ignore[override]
        return _MARK_HEX


class FlowTemplate:
    """One flow entry's output with the per-packet parts cut out (see the module docstring)."""

    __slots__ = ("flats", "desc", "numbers", "hlen", "tracker", "l2_out", "mangle", "tot_len", "time_format",
                 "fmt", "proto", "marks")

    @classmethod
    def build(cls, record: PacketRecord, frame: Any, fmt: Format) -> "FlowTemplate | None":
        e = record.flow
        p = frame.payload
        t = cls()
        t.hlen = hlen = (p[0] & 0x0F) * 4
        t.numbers = _numbers(p, hlen)
        seq, ack = _numbers_of(t, p)
        has_ack = t.numbers == TCP_SEQ_ACK and bool(p[hlen + 13] & 0x10)
        desc = describe_frame(frame)
        marked_desc = _mark(desc, seq, ack, t.numbers, has_ack)
        emitted = [replace(out, frame=_Bytes(out.frame), summary=_mark(emitted_summary(out), seq, ack, t.numbers,
                                                                       has_ack))
                   for out in record.emitted]
        if marked_desc is None or any(x.summary is None for x in emitted) or len(emitted) > 1:
            return None
        t.fmt, t.time_format, t.tracker, t.flats = fmt, fmt.time_format, e.tracker_step, {}
        t.l2_out = record.emitted[0].frame[:14] if record.emitted else None
        t.mangle, t.tot_len = e.mangle, e.tot_len
        t.proto = replace(record, index=_MARK_INDEX, time=fmt.time_mark, packet=marked_desc, emitted=emitted,
                          path=list(record.path))
        t.marks = {str(_MARK_INDEX): 0, fmt.time_text(fmt.time_mark): 1, **_CHAR_MARKS}
        t.desc = _split_marks(marked_desc, t.marks)
        record.packet = desc
        buf = io.StringIO()
        fmt.write(record, buf)
        return t if t.line(record, frame) == buf.getvalue() else None

    def line(self, record: PacketRecord, frame: Any) -> str:
        """This record's output (record.packet is set to its summary, as render_record does)."""
        seq, ack = _numbers_of(self, frame.payload)
        detail = record.path[self.tracker].detail if self.tracker >= 0 else {}
        flat = self.flats.get(tuple(detail.values())) or flat_for(self, detail)
        emitted = record.emitted
        values = (str(record.index), self.fmt.time_text(record.time), str(seq), str(ack), "",
                  emitted[0].frame.hex() if emitted else "")
        record.packet = "".join([x if x.__class__ is str else values[x] for x in self.desc])
        return "".join([x if x.__class__ is str else values[x] for x in flat])


def flat_for(t: FlowTemplate, detail: dict) -> tuple:
    """The template's flat for this tracker detail, rendered once and kept (the C lane calls
    this for a detail it has not seen)."""
    proto = t.proto
    if t.tracker >= 0:
        path = list(proto.path)
        s = path[t.tracker]
        path[t.tracker] = Step(s.fn, s.depth, detail)
        proto = replace(proto, path=path)
    buf = io.StringIO()
    t.fmt.write(proto, buf)
    flat = t.flats[tuple(detail.values())] = _split_marks(buf.getvalue(), t.marks)
    return flat


def _split_marks(text: str, marks: dict[str, int]) -> tuple:
    """text cut at its markers: literal pieces alternating with value numbers (str.find per
    marker: a flat's text is tens of kilobytes with a handful of markers)."""
    found: list[tuple[int, int, int]] = []
    for mark, value in marks.items():
        at = text.find(mark)
        while at >= 0:
            found.append((at, -len(mark), value))
            at = text.find(mark, at + len(mark))
    found.sort()
    flat: list = []
    pos = 0
    for at, neg_len, value in found:
        if at < pos:        # inside a longer marker found at the same place or before
            continue
        flat += [text[pos:at], value]
        pos = at - neg_len
    flat.append(text[pos:])
    return tuple(flat)


def _numbers(p: bytes, hlen: int) -> int:
    """Which per-packet numbers the summaries of this IPv4 packet's flow show (FlowCache.key
    leaves them out): TCP's sequence and acknowledgement, an ICMP echo's sequence, or none."""
    if p[9] == 6:
        return TCP_SEQ_ACK
    if p[9] == 1 and len(p) >= hlen + 8 and p[hlen] in (0, 8):
        return ECHO_SEQ
    return NO_NUMBERS


def _numbers_of(t: "FlowTemplate", p: bytes) -> tuple[int, int]:
    """This packet's (seq, ack) as its template's summaries show them."""
    if t.numbers == TCP_SEQ_ACK:
        return _SEQ_ACK(p, t.hlen + 4)
    if t.numbers == ECHO_SEQ:
        return _U16(p, t.hlen + 6)[0], 0
    return 0, 0


def _mark(desc: str, seq: int, ack: int, numbers: int, has_ack: bool) -> str | None:
    """desc with its sequence (and TCP's acknowledgement) numbers replaced by markers; None if not
    found exactly once (an echo's: `seq N`, as packet/decode.py _icmp writes it)."""
    if numbers == NO_NUMBERS:
        return desc
    head, sep, rest = desc.partition(f" seq {seq}")
    if not sep or (rest[:1].isdigit()) or f" seq {seq}" in rest:
        return None
    if numbers == ECHO_SEQ:
        return f"{head} seq {_MARK_SEQ}{rest}"
    if has_ack:
        if not rest.startswith(f" ack {ack}"):
            return None
        rest = f" ack {_MARK_ACK}" + rest[len(f" ack {ack}"):]
    return f"{head} seq {_MARK_SEQ}{rest}"


# the one-character markers, and as JSON writes them (escaped)
_CHAR_MARKS = {m: v for mark, v in ((_MARK_SEQ, 2), (_MARK_ACK, 3), (_MARK_HEX, 5))
               for m in (mark, _dumps(mark)[1:-1])}

_NOT_TEMPLATED = object()


def templated(record: PacketRecord, frame: Any, fmt: Format) -> str | None:
    """The output of a record the replay cache served, from its entry's template; None when
    the record is not from the cache or its entry has no template."""
    e = record.flow
    if e is None:
        return None
    t = e.render
    if t is None:
        t = e.render = FlowTemplate.build(record, frame, fmt) or _NOT_TEMPLATED
    if t is _NOT_TEMPLATED or t.fmt is not fmt:
        return None
    return t.line(record, frame)


@dataclass(frozen=True, slots=True)
class DirectLines:
    """flat_for for the C lane, with the file descriptor the lane writes its lines to itself
    (writev of the flats' own texts: no copy into a Python bytes object).  `flush` empties the
    output's Python buffers first, so lines keep their order with those Python writes."""

    fd: int
    flush: Callable[[], Any]

    def __call__(self, t: FlowTemplate, detail: dict) -> tuple:
        return flat_for(t, detail)


def lane_flat_for(out: Any) -> Callable[[FlowTemplate, dict], tuple]:
    """The flat_for to give the C lane (replay.LineLane) for output stream `out`: DirectLines when
    `out` is a file with a descriptor, else flat_for (lines come back as bytes)."""
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):      # io.UnsupportedOperation is an OSError
        return flat_for
    return DirectLines(fd, out.flush) if isinstance(fd, int) and fd >= 0 else flat_for
