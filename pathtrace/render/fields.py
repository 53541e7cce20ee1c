"""Shared formatting of one record's parts, so text and JSON show the same facts."""
from __future__ import annotations

from typing import Any

from pathtrace.packet.decode import describe_ether
from pathtrace.trace import Emitted


def detail_text(detail: dict[str, Any]) -> str:
    parts = []
    for key, value in detail.items():
        if value == "" or (value is None and key != "found"):
            continue
        if value is None:
            value = "none"
        if isinstance(value, bool):
            parts.append(key if value else f"!{key}")
        elif isinstance(value, str) and " " in value:
            parts.append(f"{key}='{value}'")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def emitted_summary(e: Emitted) -> str:
    if not e.summary:
        e.summary = describe_ether(e.frame) if e.frame else ""
    return e.summary
