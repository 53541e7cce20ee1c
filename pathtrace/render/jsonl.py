"""One JSON object per input packet (documented in man/pathtrace.1)."""
from __future__ import annotations

import json
from typing import Any, TextIO

from pathtrace.render.fields import emitted_summary
from pathtrace.trace import PacketRecord


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


def write_jsonl(record: PacketRecord, out: TextIO) -> None:
    out.write(json.dumps(record_to_dict(record), separators=(",", ":"), default=str))
    out.write("\n")
