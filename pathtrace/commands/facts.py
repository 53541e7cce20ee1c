"""The comparable outcome of one packet: what check asserts and diff compares.

Derived from a PacketRecord only (steps at depth 0 are the packet itself; deeper
ones belong to packets the host generated on the way, such as a SYN-ACK whose
OUTPUT-chain decision must not be taken for the input packet's).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pathtrace.commands.headers import Headers
from pathtrace.commands.session import emitted_at_depth, forwarded_headers
from pathtrace.render.fields import emitted_summary
from pathtrace.trace import PacketRecord


@dataclass
class Facts:
    verdict: str
    reason: str | None
    egress: str | None
    decision: dict[str, Any] | None         # the netfilter rule that decided (table/chain/rule/text/verdict)
    out: Headers | None                      # the packet as it left (after NAT)
    ct_state: str | None                     # conntrack's view: NEW, ESTABLISHED, RELATED, INVALID, UNTRACKED
    sends: list[str] = field(default_factory=list)   # one-line summaries of every frame that left

    def rule_label(self) -> str:
        return rule_label(self.decision)


def rule_label(d: dict[str, Any] | None) -> str:
    """'filter/INPUT rule 7' or 'filter/INPUT policy'."""
    if not d:
        return "no rule"
    where = f"{d['table']}/{d['chain']}"
    return f"{where} policy" if not d.get("rule") else f"{where} rule {d['rule']}"


def decisions(record: PacketRecord) -> list[dict[str, Any]]:
    """Netfilter decisions about the input packet itself, in order."""
    steps = [s.detail for s in record.path
             if s.fn in ("ipt_do_table", "nft_do_chain") and s.depth == 0 and "chain" in s.detail]
    if steps or record.path:
        return [{k: d.get(k) for k in ("hook", "table", "chain", "rule", "text", "verdict", "misses")}
                for d in steps]
    return list(record.rules)        # steps were off: every decision (generated packets included)


def deciding(record: PacketRecord) -> dict[str, Any] | None:
    """The first non-ACCEPT decision, else the filter table's last ACCEPT, else the last decision."""
    ds = decisions(record)
    for d in ds:
        if d.get("verdict") not in ("ACCEPT", "CONTINUE"):
            return d
    filters = [d for d in ds if d.get("table") == "filter"]
    if filters:
        return filters[-1]
    return ds[-1] if ds else None


def ct_state(record: PacketRecord) -> str | None:
    state = None
    for s in record.path:
        if s.depth != 0:
            continue
        if s.fn in ("nf_conntrack_in", "nf_conntrack_inet_error") and state is None:
            state = str(s.detail.get("state"))
        elif s.fn == "notrack_tg" or (s.fn == "xt_ct_target_v1" and s.detail.get("notrack")):
            state = "UNTRACKED"
    return state


def facts(record: PacketRecord, held: Headers | None = None) -> Facts:
    """`held`: the packet as it waits in an arp_queue (QUEUED verdicts have no emitted frame yet)."""
    return Facts(verdict=record.verdict, reason=record.reason, egress=record.egress, decision=deciding(record),
                 out=forwarded_headers(record) or held, ct_state=ct_state(record),
                 sends=[f"{e.dev} {emitted_summary(e)}" for e in record.emitted])


def host_responses(record: PacketRecord) -> list[str]:
    return [f"{e.dev} {emitted_summary(e)}" for e in emitted_at_depth(record, 1)]
