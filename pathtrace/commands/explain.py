"""`pathtrace explain`: why did this one packet go where it went?

Injects one packet (spelled on the command line, or taken from a capture after
replaying everything before it) and prints the recorded path as numbered phases,
every rule evaluated with why it did or did not match, the verdict in the
kernel's words and in plain words, and the smallest obvious change.
"""
from __future__ import annotations

import json
import sys
from typing import Any

import click

from pathtrace.commands.facts import deciding, facts, host_responses, rule_label
from pathtrace.commands.flowspec import FlowSpecError, from_parts
from pathtrace.commands.headers import Headers, ip_headers
from pathtrace.commands.phases import describe, group
from pathtrace.commands.reasons import plain, suggestions
from pathtrace.commands.session import Outcome, Session
from pathtrace.errors import PathtraceError
from pathtrace.inputs import check_arg, parse_int
from pathtrace.render.fields import emitted_summary


def explanation(outcome: Outcome, nf: Any, pkt: Headers | None, held: Headers | None = None) -> dict[str, Any]:
    """Everything explain shows, as plain data (the text and JSON renderers share it)."""
    rec = outcome.record
    decision = deciding(rec)
    f = facts(rec, held)
    phases = []
    for n, ph in enumerate(group(rec.path), 1):
        lines = _compact(ph.steps, nf)
        responses = [[("  " * (s.depth - 1)) + line for s in block for line in describe(s, nf)]
                     for block in ph.responses]
        phases.append({"n": n, "name": ph.name, "lines": lines, "host_response": responses,
                       "steps": [{"fn": s.fn, "depth": s.depth, **s.detail} for s in ph.steps]})
    return {
        "packet": rec.packet,
        "ingress": rec.ingress,
        "sent": rec.agreement,
        "setup": [{"packet": r.packet, "verdict": r.verdict, "reason": r.reason} for r in outcome.setup],
        "phases": phases,
        "verdict": rec.verdict,
        "reason": rec.reason,
        "reason_text": plain(rec.reason),
        "egress": rec.egress,
        "decided_by": None if decision is None else {k: decision.get(k) for k in
                                                     ("hook", "table", "chain", "rule", "text", "verdict")},
        "conntrack": f.ct_state,
        "after_nat": f.out.describe() if f.out else None,
        "host_sent": host_responses(rec),
        "emitted": [{"dev": e.dev, "kind": e.kind, "packet": emitted_summary(e)} for e in rec.emitted],
        "suggestions": suggestions(rec, decision, pkt),
        "warnings": outcome.warnings + rec.warnings,
    }


def _compact(steps: list, nf: Any) -> list[str]:
    """Runs of bare calls (no detail beyond the device) become one 'a -> b -> c' line."""
    lines: list[str] = []
    run: list[str] = []
    for s in steps:
        if set(s.detail) <= {"dev"} and s.fn != "kfree_skb_reason":
            run.append(s.fn)
            continue
        if run:
            lines.append(" -> ".join(run))
            run = []
        lines.extend(describe(s, nf))
    if run:
        lines.append(" -> ".join(run))
    return lines


def render_text(x: dict[str, Any]) -> str:
    sent = x.get("sent")
    out = [f"packet: {x['packet']}  ({'sent by the host on' if sent else 'in'} {x['ingress']})"]
    if sent:
        from pathtrace.render.text import agreement_text
        out.append(f"  {agreement_text(sent)}")
        out.extend(f"  differs: {d}" for d in sent.get("differences", ()))
    for s in x["setup"]:
        out.append(f"  setup: {s['packet']} -> {s['verdict']}{' (' + s['reason'] + ')' if s['reason'] else ''}")
    out.append("")
    for ph in x["phases"]:
        out.append(f"{ph['n']}. {ph['name']}")
        out.extend(f"     {line}" for line in ph["lines"])
        for block in ph["host_response"]:
            out.append("     host response:")
            out.extend(f"       {line}" for line in block)
    out.append("")
    verdict = x["verdict"]
    if x["reason"]:
        verdict += f" ({x['reason']}: {x['reason_text']})"
    if x["egress"]:
        verdict += f" out {x['egress']}"
    out.append(f"verdict: {verdict}")
    if x["decided_by"]:
        d = x["decided_by"]
        out.append(f"decided by: {rule_label(d)} -> {d['verdict']}: {d['text']}")
    if x["conntrack"]:
        out.append(f"conntrack: {x['conntrack']}")
    if x["after_nat"]:
        out.append(f"{'queued as' if x['verdict'] == 'QUEUED' else 'left as'}: {x['after_nat']}")
    out.extend(f"host sent: {s}" for s in x["host_sent"])
    out.extend(f"to change this: {s}" for s in x["suggestions"])
    out.extend(f"warning: {w}" for w in x["warnings"])
    return "\n".join(out) + "\n"


@click.command()
@click.argument("host", type=click.Path(dir_okay=False))
@click.argument("packet", nargs=-1)
@click.option("--in", "ingress", metavar="IFACE", help="Interface the packet arrives on.")
@click.option("--flags", help="TCP flags (S, SA, A, FA, R, ...).")
@click.option("--state", type=click.Choice(["new", "established"]), help="Conntrack state to set up first.")
@click.option("--mark", help="skb->mark (e.g. 0x1).")
@click.option("--ttl", metavar="N")
@click.option("--len", "length", metavar="N", help="IP total length (payload zero-padded).")
@click.option("--df", is_flag=True, default=None, help="Set Don't Fragment.")
@click.option("--type", "icmp_type", metavar="N", help="ICMP type.")
@click.option("--code", "icmp_code", metavar="N", help="ICMP code.")
@click.option("--pcap", type=click.Path(dir_okay=False), help="Take the packet from a capture.")
@click.option("--index", "index_text", metavar="N", help="With --pcap: 0-based packet index (earlier packets replayed first).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def explain(host: str, packet: tuple[str, ...], ingress: str | None, flags: str | None, state: str | None,
            mark: str | None, ttl: str | None, length: str | None, df: bool | None, icmp_type: str | None,
            icmp_code: str | None, pcap: str | None, index_text: str | None, fmt: str) -> None:
    """Explain one packet: PROTO SRC[:PORT] DST[:PORT], or --pcap FILE --index N."""
    from pathtrace.host.loader import load_host
    try:
        index = None if index_text is None else _index(index_text)
        session = Session(load_host(host))
        if pcap is not None:
            if packet or index is None:
                raise PathtraceError("--pcap needs --index N and no packet spelling")
            rec = session.replay_capture(pcap, {index}, ingress)[index]
            outcome, pkt = Outcome(rec), _capture_headers(pcap, index)
        else:
            if index is not None:
                raise PathtraceError("--index needs --pcap")
            spec = from_parts(list(packet), {"in": ingress, "flags": flags, "state": state, "mark": mark,
                                             "ttl": ttl, "len": length, "df": df, "type": icmp_type,
                                             "code": icmp_code})
            outcome = session.inject(spec)
            pkt = Headers(spec.proto, spec.src, spec.dst, spec.sport, spec.dport)
    except FlowSpecError as exc:
        click.echo(f"pathtrace explain: {exc}", err=True)
        sys.exit(2)
    except PathtraceError as exc:
        click.echo(f"pathtrace: {exc}", err=True)
        sys.exit(2)
    x = explanation(outcome, session.net.nf, pkt, session.held.get(outcome.record.index))
    if fmt == "json":
        click.echo(json.dumps(x, indent=2, default=str))
    else:
        click.echo(render_text(x), nl=False)


def _index(text: str) -> int:
    """--index: a packet number from 0 in ASCII digits."""
    try:
        index = parse_int(check_arg(text, "--index"), 10)
    except ValueError:
        raise PathtraceError(f"--index must be a packet number from 0, not {text!r}") from None
    if index < 0:
        raise PathtraceError(f"--index must be a packet number from 0, not {text!r}")
    return index


def _capture_headers(path: str, index: int) -> Headers | None:
    from pathtrace.capture import read_frames
    for frame in read_frames(path, ordered="auto"):
        if frame.index == index:
            return ip_headers(frame.payload) if frame.ethertype == 0x0800 else None
    return None

