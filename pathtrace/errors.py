"""Errors users see: one line naming the file, the line and what is wrong."""
from __future__ import annotations


class PathtraceError(Exception):
    """An input problem reported as `FILE:LINE: message` with exit code 2."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    def __str__(self) -> str:
        where = self.file or ""
        if self.line is not None:
            where += f":{self.line}"
        return f"{where}: {self.message}" if where else self.message


class HostFileError(PathtraceError):
    """The host YAML (or a ruleset it names) is invalid."""


class CaptureError(PathtraceError):
    """The capture file cannot be read at all (per-packet problems are verdicts, not errors)."""
