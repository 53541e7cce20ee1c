"""One JSON object per input packet (documented in man/pathtrace.1)."""
from __future__ import annotations

import json
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
        **({"agreement": record.agreement} if record.agreement is not None else {}),
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
    tail = f',"agreement":{_dumps(record.agreement)}' if record.agreement is not None else ""
    out.write(f'{head[:-1]},"path":[{path}],"emitted":{emitted},"rules":{_dumps(record.rules)},'
              f'"warnings":{_dumps(record.warnings)}{tail}}}\n')
