"""One JSON object per input packet (documented in man/pathtrace.1)."""
from __future__ import annotations

import io
import json
import re
import struct
from typing import Any, TextIO

from pathtrace.render.fields import emitted_summary
from pathtrace.trace import PacketRecord, Step


def record_to_dict(record: PacketRecord) -> dict[str, Any]:
    return {
        "index": record.index,
        "time": record.time,
        "ingress": record.ingress,
        "packet": record.packet,
        "verdict": record.verdict,
        "reason": record.reason,
        "egress": record.egress,
        "path": [{"fn": s.fn, "depth": s.depth, **s.detail} for s in record.path],
        "emitted": [{"dev": e.dev, "kind": e.kind, "frame": e.frame.hex(), "packet": emitted_summary(e)}
                    for e in record.emitted],
        "rules": record.rules,
        "warnings": record.warnings,
    }


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def _make_dumps():
    """JSONEncoder.encode builds its C encoder on every call; build it once (same output)."""
    from json import encoder as enc
    if enc.c_make_encoder is None:  # pragma: no cover - pure-Python json
        return _ENCODER.encode
    c_encode = enc.c_make_encoder(None, str, enc.encode_basestring_ascii, None, ":", ",", False, False, True)
    return lambda value: "".join(c_encode(value, 0))


_dumps = _make_dumps()


def _step_json(step: Step) -> str:
    """A step's JSON, kept on the step: the replay cache hands the same steps to every
    packet of a flow, so they are encoded once."""
    text = step.json
    if text is None:
        text = step.json = _dumps({"fn": step.fn, "depth": step.depth, **step.detail})
    return text


def write_jsonl(record: PacketRecord, out: TextIO) -> None:
    """The line json.dumps(record_to_dict(record)) gives, built from cached step texts."""
    head = _dumps({"index": record.index, "time": record.time, "ingress": record.ingress, "packet": record.packet,
                   "verdict": record.verdict, "reason": record.reason, "egress": record.egress})
    path = ",".join([s.json or _step_json(s) for s in record.path])
    emitted = _dumps([{"dev": e.dev, "kind": e.kind, "frame": e.frame.hex(), "packet": emitted_summary(e)}
                      for e in record.emitted])
    out.write(f'{head[:-1]},"path":[{path}],"emitted":{emitted},"rules":{_dumps(record.rules)},'
              f'"warnings":{_dumps(record.warnings)}}}\n')


# ---- JSON lines for records the replay cache served: one template per flow entry -----------------

class _Bytes(bytes):
    """An emitted frame whose hex() is a marker: where the template splices each packet's frame."""

    def hex(self, *args: Any) -> str:  # type: ignore[override]
        return _MARK_HEX


_MARK_INDEX, _MARK_TIME = -731_048_591_247_113, 1.0000000000000002e-299
_MARK_SEQ, _MARK_ACK, _MARK_HEX, _MARK_STEP = "\ue000", "\ue001", "\ue002", "\ue003"
_SEQ_ACK = struct.Struct("!II").unpack_from


class FlowTemplate:
    """The JSON line of a cached flow entry's records with the per-packet parts cut out.

    Records the replay cache serves for one entry differ only in index, time, TCP sequence
    and acknowledgement numbers (in the input and emitted summaries), the tracker step's
    detail and the emitted frame's bytes (FlowCache.replay).  The template is made by
    rendering the first such record with markers in those places through write_jsonl
    itself, and is used only if it gives that record's line exactly.  `flat` alternates
    literal text and value numbers (0 index, 1 time, 2 seq, 3 ack, 4 tracker step, 5 frame
    hex); the C accelerator's serve_pcap fills it the same way for the packets it serves."""

    __slots__ = ("flat", "desc", "tcp", "hlen", "tracker", "steps", "step_fn", "step_depth", "l2_out", "mangle",
                 "tot_len")

    @classmethod
    def build(cls, record: PacketRecord, frame: Any) -> "FlowTemplate | None":
        from dataclasses import replace

        from pathtrace.packet.decode import describe_frame
        e = record.flow
        p = frame.payload
        hlen = (p[0] & 0x0F) * 4
        tcp = p[9] == 6
        seq, ack = _SEQ_ACK(p, hlen + 4) if tcp else (0, 0)
        has_ack = tcp and bool(p[hlen + 13] & 0x10)
        desc = describe_frame(frame)
        marked_desc = _mark(desc, seq, ack, tcp, has_ack)
        emitted = []
        for out in record.emitted:
            edesc = emitted_summary(out)
            emitted.append(replace(out, frame=_Bytes(out.frame), summary=_mark(edesc, seq, ack, tcp, has_ack)))
        if marked_desc is None or any(x.summary is None for x in emitted) or len(emitted) > 1:
            return None
        t = cls()
        t.tcp, t.hlen, t.tracker, t.steps = tcp, hlen, e.tracker_step, {}
        t.l2_out = record.emitted[0].frame[:14] if record.emitted else None
        t.mangle, t.tot_len = e.mangle, e.tot_len
        path = list(record.path)
        if 0 <= t.tracker < len(path):
            s = path[t.tracker]
            t.step_fn, t.step_depth = s.fn, s.depth
            path[t.tracker] = Step(s.fn, s.depth, s.detail, _MARK_STEP)
        marked = replace(record, index=_MARK_INDEX, time=_MARK_TIME, packet=marked_desc, path=path, emitted=emitted)
        buf = io.StringIO()
        write_jsonl(marked, buf)
        text = buf.getvalue()
        for mark in (_MARK_SEQ, _MARK_ACK, _MARK_HEX, _MARK_STEP):
            text = text.replace(_dumps(mark)[1:-1], mark)
        t.flat = _split_marks(text)
        t.desc = _split_marks(marked_desc)
        record.packet = desc
        buf = io.StringIO()
        write_jsonl(record, buf)
        return t if t.line(record, frame) == buf.getvalue() else None

    def line(self, record: PacketRecord, frame: Any) -> str:
        """This record's JSON line (record.packet is set to its summary, as render_record does)."""
        seq, ack = _SEQ_ACK(frame.payload, self.hlen + 4) if self.tcp else (0, 0)
        step = ""
        if self.tracker >= 0:
            detail = record.path[self.tracker].detail
            step = self.steps.get(tuple(detail.values())) or step_text(self, detail)
        emitted = record.emitted
        values = (str(record.index), repr(record.time), str(seq), str(ack), step,
                  emitted[0].frame.hex() if emitted else "")
        record.packet = "".join([x if x.__class__ is str else values[x] for x in self.desc])
        return "".join([x if x.__class__ is str else values[x] for x in self.flat])


def step_text(t: FlowTemplate, detail: dict) -> str:
    """The tracker step's JSON for this detail (kept on the template: a flow has few)."""
    text = t.steps[tuple(detail.values())] = _dumps({"fn": t.step_fn, "depth": t.step_depth, **detail})
    return text


_MARKS = {str(_MARK_INDEX): 0, repr(_MARK_TIME): 1, _MARK_SEQ: 2, _MARK_ACK: 3, _MARK_STEP: 4, _MARK_HEX: 5}
_MARK_RE = re.compile("|".join(re.escape(m) for m in _MARKS))


def _split_marks(text: str) -> tuple:
    """text cut at its markers: literal pieces alternating with value numbers."""
    flat: list = []
    pos = 0
    for m in _MARK_RE.finditer(text):
        flat += [text[pos:m.start()], _MARKS[m.group()]]
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


def jsonl_line(record: PacketRecord, frame: Any) -> str | None:
    """The JSON line of a record the replay cache served, from its entry's template; None
    when the record is not from the cache or its entry has no template."""
    e = record.flow
    if e is None:
        return None
    t = e.render
    if t is None:
        t = e.render = FlowTemplate.build(record, frame) or _NOT_TEMPLATED
    if t is _NOT_TEMPLATED:
        return None
    return t.line(record, frame)
