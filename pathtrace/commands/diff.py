"""`pathtrace diff OLD NEW CAPTURE`: what a ruleset change does to real traffic.

Both hosts replay the same capture in lockstep (records are compared and dropped
at once, so memory does not grow with the capture).  Changed packets are grouped
by flow and by the old/new outcome; sources of a group are summarised by the
smallest prefix covering them.  The deciding rule is compared by table, chain and
meaning (its columns, matches and target, whatever order the options were written in), so
inserting a rule above does not make every later rule "change", and neither does
iptables-save reordering a rule's options.  ARP and other non-IPv4 records are named
(`arp who-has 203.0.113.1 → 203.0.113.2`).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import click
from tabulate import tabulate

from pathtrace.commands.facts import Facts, facts, rule_label
from pathtrace.commands.headers import Headers, ip_headers
from pathtrace.errors import PathtraceError
from pathtrace.lib.inet import ntoa

PROTO = {6: "tcp", 17: "udp", 1: "icmp"}


@dataclass(frozen=True)
class Outcome:
    verdict: str
    reason: str | None
    egress: str | None
    nat: str | None
    rule: "RuleId | None"                    # the identity of the deciding rule
    label: str = field(default="", compare=False)

    def text(self) -> str:
        out = self.verdict + (f" ({self.reason})" if self.reason else "")
        if self.egress:
            out += f" out {self.egress}"
        if self.rule:
            out += f" by {self.label}"
        if self.nat:
            out += f" as {self.nat}"
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reason": self.reason, "egress": self.egress, "nat": self.nat,
                "rule": self.label or None, "text": self.rule[2] if self.rule else None}


@dataclass(frozen=True)
class RuleId:
    """The deciding rule: table, chain and what it means (render/iptables_list.rule_meaning), so a rule
    written with its options in another order is the same rule; its text is kept for display."""

    table: str
    chain: str
    meaning: Any
    text: str = field(default="", compare=False)

    def __getitem__(self, i: int) -> str:         # (table, chain, text), as the JSON output gives it
        return (self.table, self.chain, self.text)[i]


def outcome(f: Facts) -> Outcome:
    from pathtrace.render.iptables_list import rule_meaning
    d = f.decision
    rule = None
    if d:
        text = d.get("text") or ""
        rule = RuleId(d["table"], d["chain"], rule_meaning(text) if text.startswith("-A ") else text, text)
    return Outcome(f.verdict, f.reason, f.egress, f.out.describe() if f.out else None, rule, rule_label(d))


def changed_fields(a: Outcome, b: Outcome) -> list[str]:
    return [k for k in ("verdict", "reason", "egress", "nat", "rule") if getattr(a, k) != getattr(b, k)]


@dataclass
class Group:
    proto: str
    dst: str
    old: Outcome
    new: Outcome
    sources: set[int] = field(default_factory=set)
    indices: list[int] = field(default_factory=list)

    def source_text(self) -> str:
        return covering_prefix(self.sources)

    def line(self) -> str:
        n = len(self.indices)
        return (f"{n} packet{'s' if n != 1 else ''} of {self.proto} {self.source_text()} → {self.dst} "
                f"now {self.new.text()} (was {self.old.text()})")


def covering_prefix(addrs: Iterable[int]) -> str:
    """The smallest prefix containing every address ('10.0.0.0/8'); a single address as itself."""
    addrs = list(addrs)
    if not addrs:
        return "?"
    first = addrs[0]
    diff = 0
    for a in addrs:
        diff |= a ^ first
    plen = 32 - diff.bit_length()
    if plen == 32:
        return ntoa(first)
    mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0
    return f"{ntoa(first & mask)}/{plen}"


def flow_of(h: Headers | None, frame: Any = None) -> tuple[str, str]:
    if h is None:
        if frame is not None and frame.ethertype == 0x0806 and len(frame.payload) >= 28:
            op = {1: "who-has", 2: "reply"}.get(int.from_bytes(frame.payload[6:8], "big"), "op")
            return f"arp {op}", ntoa(int.from_bytes(frame.payload[24:28], "big"))
        if frame is not None and frame.ethertype:
            return {0x86DD: "ipv6"}.get(frame.ethertype, f"ethertype 0x{frame.ethertype:04x}"), "-"
        return "malformed", "-"
    name = PROTO.get(h.proto, f"proto {h.proto}")
    return name, (f"{ntoa(h.dst)}:{h.dport}" if h.proto in (6, 17) else ntoa(h.dst))


def lockstep(old_net: Any, new_net: Any, capture: str, ingress: str | None) -> Iterator[tuple[Any, Headers | None,
                                                                                              Outcome, Outcome]]:
    """(frame, input headers, old outcome, new outcome) for every frame of the capture."""
    from pathtrace.capture import read_frames
    from pathtrace.replay import Replayer, ReplayOptions
    ra = Replayer(old_net, ReplayOptions(ingress=ingress))
    rb = Replayer(new_net, ReplayOptions(ingress=ingress))
    for fa, fb in zip(read_frames(capture, ordered="auto"), read_frames(capture, ordered="auto")):
        h = ip_headers(fa.payload) if fa.ethertype == 0x0800 and not fa.error else None
        yield fa, h, outcome(facts(ra.process(fa))), outcome(facts(rb.process(fb)))


def summary_table(groups: list[Group]) -> str:
    rows: dict[tuple[str, str, str], int] = {}
    for g in groups:
        key = (_short(g.old), _short(g.new), ", ".join(changed_fields(g.old, g.new)))
        rows[key] = rows.get(key, 0) + len(g.indices)
    table = [(o, n, c, k) for (o, n, c), k in sorted(rows.items(), key=lambda kv: -kv[1])]
    return tabulate(table, headers=["old", "new", "changed", "packets"])


def _short(o: Outcome) -> str:
    return o.verdict + (f" ({o.reason})" if o.reason else "") + (f" {o.label}" if o.rule else "")


@click.command()
@click.argument("old", type=click.Path(dir_okay=False))
@click.argument("new", type=click.Path(dir_okay=False))
@click.argument("capture", type=click.Path(dir_okay=False))
@click.option("--in", "ingress", metavar="IFACE", help="Every frame enters on IFACE.")
@click.option("--format", "fmt", type=click.Choice(["text", "jsonl"]), default="text")
def diff(old: str, new: str, capture: str, ingress: str | None, fmt: str) -> None:
    """Replay CAPTURE through OLD and NEW hosts; report what changed (exit 1 if anything did)."""
    from pathtrace.host.loader import load_host
    from pathtrace.replay import create_namespace
    groups: dict[tuple, Group] = {}
    total = 0
    try:
        nets = [create_namespace(load_host(p)) for p in (old, new)]
        for net, path in zip(nets, (old, new)):
            if ingress and ingress not in net.devices:
                raise PathtraceError(f"--in {ingress}: no such interface in {path}")
        for frame, h, a, b in lockstep(nets[0], nets[1], capture, ingress):
            total += 1
            if a == b:
                continue
            proto, dst = flow_of(h, frame)
            g = groups.setdefault((proto, dst, a, b), Group(proto, dst, a, b))
            g.indices.append(frame.index)
            if h is not None:
                g.sources.add(h.src)
            elif proto.startswith("arp") and len(frame.payload) >= 28:
                g.sources.add(int.from_bytes(frame.payload[14:18], "big"))
    except PathtraceError as exc:
        click.echo(f"pathtrace: {exc}", err=True)
        sys.exit(2)
    ordered = sorted(groups.values(), key=lambda g: (-len(g.indices), g.indices[0]))
    if fmt == "jsonl":
        for g in ordered:
            click.echo(json.dumps({"packets": len(g.indices), "proto": g.proto, "src": g.source_text(), "dst": g.dst,
                                   "changed": changed_fields(g.old, g.new), "old": g.old.as_dict(),
                                   "new": g.new.as_dict(), "indices": g.indices}))
    else:
        for g in ordered:
            click.echo(g.line())
        changed = sum(len(g.indices) for g in ordered)
        if ordered:
            click.echo("")
            click.echo(summary_table(ordered))
        plural = "s" if len(ordered) != 1 else ""
        click.echo(f"\n{changed} of {total} packets changed in {len(ordered)} flow group{plural}")
    sys.exit(1 if groups else 0)
