"""Human-readable blocks: header, indented call path, verdict, frames that left."""
from __future__ import annotations

from typing import TextIO

from pathtrace.render.fields import detail_text, emitted_summary
from pathtrace.trace import PacketRecord


def write_text(record: PacketRecord, out: TextIO, verbose: bool = False) -> None:
    out.write(f"#{record.index} {record.time:.6f} {record.ingress}  {record.packet}\n")
    for step in record.path:
        indent = "  " * (step.depth + 1)
        detail = step.detail
        misses = detail.get("misses") if step.fn == "ipt_do_table" else None
        if misses is not None:
            detail = {k: v for k, v in detail.items() if k != "misses"}
        details = detail_text(detail)
        out.write(f"{indent}{step.fn}{'  ' + details if details else ''}\n")
        if verbose and misses:
            for miss in misses:
                out.write(f"{indent}    no match: {miss}\n")
    verdict = record.verdict
    if record.reason:
        verdict += f" ({record.reason})"
    if record.egress:
        verdict += f" -> {record.egress}"
    out.write(f"  => {verdict}\n")
    for e in record.emitted:
        out.write(f"  <= {e.dev} [{e.kind}] {emitted_summary(e)}\n")
    for w in record.warnings:
        out.write(f"  ! {w}\n")
    out.write("\n")
