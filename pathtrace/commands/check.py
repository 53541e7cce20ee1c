"""`pathtrace check HOST EXPECT`: a firewall's unit tests, for CI.

Each case runs in a fresh namespace (cases must not leak conntrack state into each
other); the steps of one case share it, so a conversation is tested in order.
Exit 0 all passed, 1 any failed, 2 bad input.
"""
from __future__ import annotations

import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import click

from pathtrace.commands.expectfile import Case, CheckStep, ExpectFileError, load_expectations
from pathtrace.commands.facts import Facts, facts, rule_label
from pathtrace.commands.flowspec import FlowSpecError
from pathtrace.commands.lint import Coverage, lint_findings, render as render_lint
from pathtrace.commands.session import Session
from pathtrace.errors import PathtraceError
from pathtrace.host.model import HostConfig


@dataclass
class Mismatch:
    key: str
    expected: str
    actual: str


@dataclass
class StepResult:
    step: CheckStep
    packet: str
    mismatches: list[Mismatch]
    error: str | None = None
    outcome: str = ""           # what the model did: verdict (reason), the deciding rule, egress


def outcome_text(f: Facts) -> str:
    """The whole actual outcome of a packet, shown with every failure whatever key failed."""
    text = f.verdict + (f" ({f.reason})" if f.reason else "")
    d = f.decision
    if d:
        text += f", decided by {rule_label(d)}" + (f" '{d.get('text')}'" if d.get("text") else "")
    if f.egress:
        text += f", egress {f.egress}"
    return text


@dataclass
class CaseResult:
    case: Case
    steps: list[StepResult] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.error is None and all(not s.mismatches and s.error is None for s in self.steps)


def compare(values: dict[str, Any], f: Facts) -> list[Mismatch]:
    """Every expectation that the facts do not meet, with both sides as text."""
    out: list[Mismatch] = []
    d = f.decision or {}

    def need(key: str, ok: bool, expected: Any, actual: Any) -> None:
        if not ok:
            out.append(Mismatch(key, str(expected), str(actual)))

    for key, want in values.items():
        if key == "verdict":
            need(key, f.verdict == want, want, f.verdict)
        elif key == "reason":
            need(key, f.reason == want, want, f.reason)
        elif key == "egress":
            need(key, f.egress == want, want, f.egress)
        elif key in ("table", "chain"):
            need(key, d.get(key) == want, want, d.get(key))
        elif key == "rule":
            need(key, _rule_ok(want, d), _rule_text(want), f"{rule_label(f.decision)}"
                 + (f" ({d.get('text')})" if d else ""))
        elif key == "ct":
            got = f.ct_state or "none"
            ok = got == want.upper() or (got.startswith(want.upper() + "_") and "_" not in want)
            need(key, ok, want, got)
        elif key == "nat":
            for side, endpoint in want.items():
                got = f.out.endpoint(side) if f.out else "(no packet left the host)"
                ok = f.out is not None and (got == endpoint or got.split(":")[0] == endpoint)
                need(f"nat.{side}", ok, endpoint, got)
        elif key == "sends":
            for pattern in want:
                need("sends", any(pattern in s for s in f.sends), pattern, "; ".join(f.sends) or "nothing")
    return out


def _rule_ok(want: dict[str, Any], d: dict[str, Any]) -> bool:
    if not d:
        return False
    if "text" in want:
        return want["text"] in str(d.get("text"))
    for key, field_ in (("table", "table"), ("chain", "chain")):
        if key in want and want[key] != d.get(field_):
            return False
    return want.get("num") is None or want["num"] == (d.get("rule") or 0)


def _rule_text(want: dict[str, Any]) -> str:
    if "text" in want:
        return f"rule text containing {want['text']!r}"
    where = f"{want['table']}/{want['chain']} " if "table" in want else ""
    return where + ("policy" if want.get("num") == 0 else f"rule {want.get('num')}")


def validate_cases(host: HostConfig, cases: list[Case], path: str) -> None:
    """Bad input in the expectations, found before any case runs (exit 2, not a failed case): an
    interface the host lacks, a capture that cannot be read, an index past its end."""
    from pathtrace.capture import count_frames, read_frames
    devices = {i.name for i in host.interfaces} | {"lo"}
    for case in cases:
        for dev, line in [(case.ingress, case.line)] + [(s.packet.ingress, s.line) for s in case.steps if s.packet]:
            if dev is not None and dev not in devices:
                raise ExpectFileError(f"in: {dev}: no such interface in {host.path} (have "
                                      f"{', '.join(sorted(devices))})", path, line)
        if case.pcap is None:
            continue
        try:
            total = count_frames(case.pcap)
            if total is None:
                total = sum(1 for _ in read_frames(case.pcap))
        except PathtraceError as exc:
            raise ExpectFileError(f"pcap: {exc}", path, case.line) from None
        for s in case.steps:
            if s.index is not None and s.index >= total:
                raise ExpectFileError(f"index {s.index}: {case.pcap} has {total} packets (indices from 0)",
                                      path, s.line)


def run_case(host: HostConfig, case: Case, coverage: Coverage | None) -> CaseResult:
    result = CaseResult(case)
    start = time.monotonic()
    try:
        session = Session(host)
        if case.pcap is not None:
            records = session.replay_capture(case.pcap, {s.index for s in case.steps}, case.ingress)
            for s in case.steps:
                rec = records[s.index]
                got = facts(rec, session.held.get(rec.index))
                result.steps.append(StepResult(s, f"#{s.index} {rec.packet}", compare(s.expect.values, got),
                                               outcome=outcome_text(got)))
        else:
            for s in case.steps:
                spec = s.packet if s.packet.ingress or not case.ingress else _with_ingress(s.packet, case.ingress)
                outcome = session.inject(spec)
                got = facts(outcome.record, session.held.get(outcome.record.index))
                mism = compare(s.expect.values, got)
                result.steps.append(StepResult(s, spec.describe(), mism,
                                               "; ".join(outcome.warnings) if mism and outcome.warnings else None,
                                               outcome=outcome_text(got)))
        if coverage is not None:
            session.replayer.flush()
            coverage.add(session.net.nf)
    except (PathtraceError, FlowSpecError) as exc:
        result.error = str(exc)
    except Exception as exc:  # a model bug fails this case, not the run
        result.error = f"model error: {type(exc).__name__}: {exc}"
    result.seconds = time.monotonic() - start
    return result


def _with_ingress(spec: Any, dev: str) -> Any:
    from dataclasses import replace
    return replace(spec, ingress=dev)


def render_result(r: CaseResult, path: str) -> str:
    head = f"{'PASS' if r.passed else 'FAIL'}  {r.case.name}  ({path}:{r.case.line})"
    lines = [head]
    if r.error:
        lines.append(f"      error: {r.error}")
    for n, s in enumerate(r.steps, 1):
        if not s.mismatches and not s.error:
            continue
        label = f"step {n}" + (f" {s.step.name}" if s.step.name else "") if len(r.steps) > 1 else "packet"
        lines.append(f"      {label}: {s.packet}  ({path}:{s.step.line})")
        width = max((len(m.key) for m in s.mismatches), default=0)
        for m in s.mismatches:
            lines.append(f"        - {m.key + ':':<{width + 1}} expected {m.expected}")
            lines.append(f"        + {'':<{width + 1}} actual   {m.actual}")
        if s.mismatches and s.outcome:
            lines.append(f"        = outcome: {s.outcome}")
        if s.error:
            lines.append(f"        note: {s.error}")
    return "\n".join(lines) + "\n"


def junit(results: list[CaseResult], suite: str, host_name: str) -> ET.ElementTree:
    failures = sum(1 for r in results if not r.passed and r.error is None)
    errors = sum(1 for r in results if r.error is not None)
    root = ET.Element("testsuites")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)), failures=str(failures),
                       errors=str(errors), time=f"{sum(r.seconds for r in results):.3f}")
    for r in results:
        tc = ET.SubElement(ts, "testcase", classname=host_name, name=r.case.name, time=f"{r.seconds:.3f}")
        if r.error is not None:
            ET.SubElement(tc, "error", message=r.error).text = r.error
        elif not r.passed:
            text = render_result(r, suite)
            first = next(m for s in r.steps for m in s.mismatches)
            ET.SubElement(tc, "failure", message=f"{first.key}: expected {first.expected}, got {first.actual}"
                          ).text = text
    return ET.ElementTree(root)


@click.command()
@click.argument("host", type=click.Path(dir_okay=False))
@click.argument("expect", type=click.Path(dir_okay=False))
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), help="Write JUnit XML here.")
@click.option("--coverage", is_flag=True, help="Report rules no case hit, and shadowed rules.")
@click.option("-q", "--quiet", is_flag=True, help="Print failures and the summary only.")
def check(host: str, expect: str, junit_path: str | None, coverage: bool, quiet: bool) -> None:
    """Run the cases of EXPECT (YAML) against HOST; exit 1 when any fails."""
    from pathtrace.host.loader import load_host
    from pathtrace.replay import create_namespace
    try:
        cfg = load_host(host)
        base_nf = create_namespace(cfg).nf
        cases = load_expectations(expect)
        validate_cases(cfg, cases, expect)
        report = _open_report(junit_path)
    except (PathtraceError, ExpectFileError) as exc:
        click.echo(f"pathtrace: {exc}", err=True)
        sys.exit(2)
    cov = Coverage() if coverage else None
    results = []
    for case in cases:
        r = run_case(cfg, case, cov)
        results.append(r)
        if not (quiet and r.passed):
            click.echo(render_result(r, expect), nl=False)
    failed = sum(1 for r in results if not r.passed)
    click.echo(f"{len(results) - failed} passed, {failed} failed ({len(results)} cases)")
    if cov is not None:
        click.echo(render_lint(lint_findings(base_nf, cov)), nl=False)
    if report is not None:
        with report:
            junit(results, expect, cfg.name).write(report, encoding="utf-8", xml_declaration=True)
    sys.exit(1 if failed else 0)


def _open_report(path: str | None):
    """The --junit file, opened before the cases run: a path that cannot be written is bad input."""
    if path is None:
        return None
    try:
        return open(path, "wb")
    except OSError as exc:
        raise PathtraceError(f"--junit {path}: cannot write: {exc.strerror or exc}") from None
