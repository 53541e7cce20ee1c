"""One record as `replay` prints it, for the single-process loop and the --jobs workers alike."""
from __future__ import annotations

import io
from typing import Any

from pathtrace.capture.frame import Frame
from pathtrace.packet.decode import describe_frame
from pathtrace.render.jsonl import write_jsonl
from pathtrace.render.template import JSONL, TEXT, TEXT_VERBOSE, Format, templated
from pathtrace.render.text import write_text


def template_format(fmt: str, verbose: bool) -> Format:
    """The per-flow template format of `replay --format fmt` (render/template.py)."""
    return JSONL if fmt == "jsonl" else TEXT_VERBOSE if verbose else TEXT


def render_record(record: Any, frame: Frame, fmt: str, verbose: bool) -> str:
    """The text `replay` prints for one record (jsonl line or text block)."""
    if record.flow is not None:
        out = templated(record, frame, template_format(fmt, verbose))
        if out is not None:
            return out
    record.packet = describe_frame(frame)
    buf = io.StringIO()
    if fmt == "jsonl":
        write_jsonl(record, buf)
    else:
        write_text(record, buf, verbose)
    return buf.getvalue()
