"""`pathtrace lint`: shadowed rules, unreferenced chains, and (after a replay) rules never hit.

Coverage sums the rule counters of every namespace a run used (check builds one
per case), keyed by table/chain/rule, so "never hit" means never hit by anything.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import click

from pathtrace.commands.shadow import shadowed, unreferenced_chains
from pathtrace.errors import PathtraceError


@dataclass
class Coverage:
    """Rule hit counts summed over namespaces."""

    hits: dict[tuple[str, str, int], dict[str, Any]] = field(default_factory=dict)

    def add(self, nf: Any) -> None:
        if nf is None or not hasattr(nf, "rule_counters"):
            return
        for c in nf.rule_counters():
            key = (c["table"], c["chain"], c["rule"])
            entry = self.hits.setdefault(key, {**c, "pkts": 0})
            entry["pkts"] += c["pkts"]

    def unhit(self) -> list[dict[str, Any]]:
        return [c for c in self.hits.values() if c["rule"] and not c["pkts"]]

    def summary(self) -> tuple[int, int]:
        rules = [c for c in self.hits.values() if c["rule"]]
        return sum(1 for c in rules if c["pkts"]), len(rules)


def render(findings: dict[str, Any]) -> str:
    out = []
    for s in findings["shadowed"]:
        out.append(f"{s['table']}/{s['chain']} rule {s['rule']} (line {s['line']}) can never match: "
                   f"rule {s['by_rule']} (line {s['by_line']}) matches every packet it could\n"
                   f"    {s['text']}\n    shadowed by: {s['by_text']}")
    for c in findings["unreferenced"]:
        out.append(f"{c['table']}/{c['chain']} (line {c['line']}): no rule jumps to this chain; "
                   f"its {c['rules']} rules never run")
    if findings.get("coverage") is not None:
        cov = findings["coverage"]
        out.append(f"coverage: {cov['hit']} of {cov['rules']} rules hit")
        out.extend(f"  never hit: {u['table']}/{u['chain']} rule {u['rule']} (line {u['line']}): {u['text']}"
                   for u in cov["unhit"])
    if not findings["shadowed"] and not findings["unreferenced"]:
        out.append("no shadowed rules")
    return "\n".join(out) + "\n"


def lint_findings(nf: Any, coverage: Coverage | None = None) -> dict[str, Any]:
    from pathtrace.commands.shadow import shadowed_nft
    found = (shadowed(nf) + shadowed_nft(nf.nft)) if nf else []
    findings: dict[str, Any] = {"shadowed": found,
                                "unreferenced": unreferenced_chains(nf) if nf else [], "coverage": None}
    if coverage is not None:
        hit, total = coverage.summary()
        findings["coverage"] = {"hit": hit, "rules": total, "unhit": coverage.unhit()}
    return findings


@click.command()
@click.argument("host", type=click.Path(dir_okay=False))
@click.option("--pcap", type=click.Path(dir_okay=False), help="Replay a capture and report rules it never hit.")
@click.option("--in", "ingress", metavar="IFACE", help="With --pcap: every frame enters here.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.option("--fail-on-unhit", is_flag=True,
              help="With --pcap: rules the capture never hit are findings too (exit 1), for coverage gates in CI.")
def lint(host: str, pcap: str | None, ingress: str | None, fmt: str, fail_on_unhit: bool) -> None:
    """Report shadowed rules and unreferenced chains (exit 1 when there are any; 0 when there are
    none; 2 for bad input).  Rules a --pcap never hit are reported, and count only with
    --fail-on-unhit: a capture that does not exercise a rule is not a defect of the ruleset."""
    from pathtrace.host.loader import load_host
    from pathtrace.replay import Replayer, ReplayOptions, create_namespace
    try:
        net = create_namespace(load_host(host))
        coverage = None
        if pcap is not None:
            from pathtrace.capture import read_frames
            if ingress and ingress not in net.devices:
                raise PathtraceError(f"--in {ingress}: no such interface")
            replayer = Replayer(net, ReplayOptions(ingress=ingress, record=False, emit_frames=False))
            for _ in replayer.run(read_frames(pcap, ordered="auto")):
                pass
            coverage = Coverage()
            coverage.add(net.nf)
    except PathtraceError as exc:
        click.echo(f"pathtrace: {exc}", err=True)
        sys.exit(2)
    findings = lint_findings(net.nf, coverage)
    if fmt == "json":
        click.echo(json.dumps(findings, indent=2))
    else:
        click.echo(render(findings), nl=False)
    unhit = bool(fail_on_unhit and findings.get("coverage") and findings["coverage"].get("unhit"))
    sys.exit(1 if findings["shadowed"] or findings["unreferenced"] or unhit else 0)
