"""Errors users see: one line naming the file, the line and what is wrong."""
from __future__ import annotations

import re

LONG_WORD = re.compile(r"\S{201,}")    # a quoted 5,000-character value is cut in its middle: one readable line


class PathtraceError(Exception):
    """An input problem reported as `FILE:LINE: message` with exit code 2."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    def __str__(self) -> str:
        where = self.file or ""
        if not where.isprintable():         # a newline or NUL in a name must not break the one line
            where = repr(where)
        if self.line is not None:
            where += f":{self.line}"
        message = LONG_WORD.sub(_cut, " ".join(self.message.splitlines()) or self.message)
        return f"{where}: {message}" if where else message


def _cut(m: re.Match) -> str:
    word = m.group()
    return f"{word[:60]}...({len(word) - 120} more)...{word[-60:]}"


class HostFileError(PathtraceError):
    """The host YAML (or a ruleset it names) is invalid."""


class CaptureError(PathtraceError):
    """The capture file cannot be read at all (per-packet problems are verdicts, not errors)."""
