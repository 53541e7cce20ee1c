"""Human-readable blocks: header, indented call path, verdict, frames that left."""
from __future__ import annotations

from typing import TextIO

from pathtrace.render.fields import detail_text, emitted_summary
from pathtrace.trace import PacketRecord


def write_text(record: PacketRecord, out: TextIO, verbose: bool = False) -> None:
    sent = record.agreement
    where = f"{record.ingress} out" if sent is not None else record.ingress
    out.write(f"#{record.index} {record.time:.6f} {where}  {record.packet}\n")
    for step in record.path:
        indent = "  " * (step.depth + 1)
        detail = step.detail
        misses = detail.get("misses") if step.fn in ("ipt_do_table", "nft_do_chain") else None
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
    if sent is not None:
        out.write(f"  ~ {agreement_text(sent)}\n")
        for d in sent.get("differences", ()):
            out.write(f"  ~ differs: {d}\n")
    for e in record.emitted:
        out.write(f"  <= {e.dev} [{e.kind}] {emitted_summary(e)}\n")
    for w in record.warnings:
        out.write(f"  ! {w}\n")
    out.write("\n")


def agreement_text(info: dict) -> str:
    """One line on how a frame the host sent compares with the model."""
    if info.get("predicted_by") is not None:
        n, how = info["predicted_by"], info.get("as")
        if how == "forward":
            return f"predicted: the model forwarded #{n}"
        if how == "released after ARP":
            return f"predicted: the model released it from the ARP queue when handling #{n}"
        return f"predicted: the model sent it while handling #{n}"
    return f"not predicted by the model ({info.get('origin', 'unknown')} frame)"
