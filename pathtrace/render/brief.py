"""`--format brief`: one line per packet, as tcpdump and pwru print them, and tcpdump's time stamps.

    #3 12:00:01.250000 eth0 IP 198.51.100.23.51514 > 203.0.113.10.80: TCP [S] ... => DROP (NETFILTER_DROP) filter/INPUT #4 '-A INPUT -j DROP'

The line gives the index in the capture, the time, the ingress interface, the packet, the verdict and
its drop reason, the rule that decided (table/chain, rule number and text) and the egress interface.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

# tcpdump's -t options, by how many t's: none, epoch, delta from the previous, date and time, delta
# from the first.  0 (no option) is pathtrace's default: epoch seconds, as tcpdump -tt.
TIME_FORMATS = {0: "epoch", 1: "none", 2: "epoch", 3: "delta", 4: "date", 5: "since-first"}

_COLORS = {"DROP": "\033[31m", "FORWARD": "\033[32m", "LOCAL_DELIVER": "\033[32m", "TRANSMIT": "\033[32m",
           "SENT": "\033[36m", "QUEUED": "\033[33m", "HELD": "\033[33m", "FRAG_QUEUED": "\033[33m",
           "STOLEN": "\033[33m"}
_RESET = "\033[0m"


@dataclass
class Clock:
    """Formats record times as tcpdump's -t, -tt, -ttt, -tttt and -ttttt do (times in UTC)."""

    style: str = "epoch"
    first: float | None = None
    last: float | None = None

    def text(self, ts: float) -> str:
        if self.first is None:
            self.first = ts
        prev, self.last = self.last, ts
        if self.style == "none":
            return ""
        if self.style == "delta":
            return f"{(ts - prev) if prev is not None else 0.0:.6f}"
        if self.style == "since-first":
            return f"{ts - self.first:.6f}"
        if self.style == "date":
            return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + f".{int(round(ts % 1 * 1e6)) % 1000000:06d}"
        return f"{ts:.6f}"


_HEADER_TIME = re.compile(r"^(#\d+) (\d+\.\d+) ")


def retime_text(block: str, clock: Clock) -> str:
    """A text block with its header's epoch time in the clock's style (the rest unchanged)."""
    if clock.style == "epoch":
        return block
    m = _HEADER_TIME.match(block)
    if not m:
        return block
    stamp = clock.text(float(m.group(2)))
    return f"{m.group(1)} {stamp + ' ' if stamp else ''}{block[m.end():]}"


def deciding_rule(record: Any) -> dict | None:
    """The netfilter rule that decided: the one that dropped or rejected a dropped packet, else the
    last rule (not a chain policy) that accepted it on its way."""
    rules = record.rules or []
    if record.agreement is None:         # a received frame: OUTPUT rules belong to what the host answered
        rules = [r for r in rules if r.get("hook") != "LOCAL_OUT"]
    if record.verdict == "DROP":
        return next((r for r in reversed(rules) if r.get("verdict") in ("DROP", "REJECT")), None)
    return next((r for r in reversed(rules) if not str(r.get("text", "")).startswith("-P ")), None)


def rule_words(rule: dict) -> str:
    """'filter/INPUT #5 '-A INPUT ...'' for a rule, 'filter/INPUT policy DROP' for a chain's policy."""
    where = f"{rule.get('table')}/{rule.get('chain')}"
    text = str(rule.get("text", ""))
    if not rule.get("rule") or text.startswith("-P "):
        return f"{where} policy {text.split()[-1] if text else ''}".rstrip()
    return f"{where} #{rule.get('rule')} {text!r}"


def colored(verdict: str, on: bool) -> str:
    color = _COLORS.get(verdict.split(" ")[0]) if on else None
    return f"{color}{verdict}{_RESET}" if color else verdict


def brief_line(record: Any, clock: Clock, color: bool = False) -> str:
    stamp = clock.text(record.time)
    where = f"{record.ingress} out" if record.agreement is not None else (record.ingress or "-")
    verdict = record.verdict + (f" ({record.reason})" if record.reason else "")
    parts = [f"#{record.index}"] + ([stamp] if stamp else []) + [where, record.packet, "=>", colored(verdict, color)]
    rule = deciding_rule(record)
    if rule is not None:
        parts.append(rule_words(rule))
    if record.egress:
        parts.append(f"-> {record.egress}")
    return " ".join(parts) + "\n"


@dataclass
class BriefWriter:
    """Keeps the clock across records (delta styles need the previous time)."""

    clock: Clock = field(default_factory=Clock)
    color: bool = False

    def line(self, record: Any) -> str:
        return brief_line(record, self.clock, self.color)


_VERDICT_LINE = re.compile(r"^(  => )(\S+)", re.M)


def color_text(block: str) -> str:
    """A text block with its verdict line coloured."""
    return _VERDICT_LINE.sub(lambda m: m.group(1) + colored(m.group(2), True), block)
