"""One record as `replay` prints it, for the single-process loop and the --jobs workers alike."""
from __future__ import annotations

import io
from typing import Any

from pathtrace.capture.frame import Frame
from pathtrace.packet.decode import describe_frame
from pathtrace.render.jsonl import jsonl_line, write_jsonl
from pathtrace.render.text import write_text


def render_record(record: Any, frame: Frame, fmt: str, verbose: bool) -> str:
    """The text `replay` prints for one record (jsonl line or text block)."""
    if fmt == "jsonl" and record.flow is not None:
        line = jsonl_line(record, frame)
        if line is not None:
            return line
    record.packet = describe_frame(frame)
    buf = io.StringIO()
    if fmt == "jsonl":
        write_jsonl(record, buf)
    else:
        write_text(record, buf, verbose)
    return buf.getvalue()
