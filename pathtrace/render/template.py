"""Per-flow templates of `replay`'s output, for the records the replay cache serves.

Records the cache serves for one flow entry differ only in index, time, the TCP sequence
and acknowledgement numbers (in the input and emitted summaries), the detail of the
conntrack tracker's step and the emitted frame's bytes (FlowCache.replay).  A template is
the entry's output - a JSON line or a text block - rendered by the format's own writer
with markers in those places, cut at the markers.  It is used only if it gives the first
record's output exactly.  Per tracker detail (a flow has few: the timeout it refreshed to)
the template keeps one `flat`: literal text alternating with value numbers, 0 index,
1 time, 2 seq, 3 ack, 5 frame hex; the C accelerator fills flats the same way for the
packets it serves (_fastpath.serve_pcap / serve_pcapng).
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

    __slots__ = ("flats", "desc", "tcp", "hlen", "tracker", "l2_out", "mangle", "tot_len", "time_format",
                 "fmt", "proto", "marks")

    @classmethod
    def build(cls, record: PacketRecord, frame: Any, fmt: Format) -> "FlowTemplate | None":
        e = record.flow
        p = frame.payload
        t = cls()
        t.hlen = (p[0] & 0x0F) * 4
        t.tcp = p[9] == 6
        seq, ack = _SEQ_ACK(p, t.hlen + 4) if t.tcp else (0, 0)
        has_ack = t.tcp and bool(p[t.hlen + 13] & 0x10)
        desc = describe_frame(frame)
        marked_desc = _mark(desc, seq, ack, t.tcp, has_ack)
        emitted = [replace(out, frame=_Bytes(out.frame), summary=_mark(emitted_summary(out), seq, ack, t.tcp, has_ack))
                   for out in record.emitted]
        if marked_desc is None or any(x.summary is None for x in emitted) or len(emitted) > 1:
            return None
        t.fmt, t.time_format, t.tracker, t.flats = fmt, fmt.time_format, e.tracker_step, {}
        t.l2_out = record.emitted[0].frame[:14] if record.emitted else None
        t.mangle, t.tot_len = e.mangle, e.tot_len
        t.proto = replace(record, index=_MARK_INDEX, time=fmt.time_mark, packet=marked_desc, emitted=emitted,
                          path=list(record.path))
        t.marks = {str(_MARK_INDEX): 0, fmt.time_text(fmt.time_mark): 1, _MARK_SEQ: 2, _MARK_ACK: 3, _MARK_HEX: 5}
        t.desc = _split_marks(marked_desc, t.marks)
        record.packet = desc
        buf = io.StringIO()
        fmt.write(record, buf)
        return t if t.line(record, frame) == buf.getvalue() else None

    def line(self, record: PacketRecord, frame: Any) -> str:
        """This record's output (record.packet is set to its summary, as render_record does)."""
        seq, ack = _SEQ_ACK(frame.payload, self.hlen + 4) if self.tcp else (0, 0)
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
    text = buf.getvalue()
    for mark in (_MARK_SEQ, _MARK_ACK, _MARK_HEX):
        text = text.replace(_dumps(mark)[1:-1], mark)     # JSON escapes them
    flat = t.flats[tuple(detail.values())] = _split_marks(text, t.marks)
    return flat


def _split_marks(text: str, marks: dict[str, int]) -> tuple:
    """text cut at its markers: literal pieces alternating with value numbers."""
    pattern = re.compile("|".join(re.escape(m) for m in marks))
    flat: list = []
    pos = 0
    for m in pattern.finditer(text):
        flat += [text[pos:m.start()], marks[m.group()]]
        pos = m.end()
    flat.append(text[pos:])
    return tuple(flat)


def _mark(desc: str, seq: int, ack: int, tcp: bool, has_ack: bool) -> str | None:
    """desc with its sequence and acknowledgement numbers replaced by markers; None if not found."""
    if not tcp:
        return desc
    head, sep, rest = desc.partition(f" seq {seq}")
    if not sep:
        return None
    if has_ack:
        if not rest.startswith(f" ack {ack}"):
            return None
        rest = f" ack {_MARK_ACK}" + rest[len(f" ack {ack}"):]
    return f"{head} seq {_MARK_SEQ}{rest}"


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
