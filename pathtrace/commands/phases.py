"""Group a record's path into the phases a firewall packet tracer shows.

The model records real kernel functions in execution order; operators think in
phases (driver rx, header checks, PRE_ROUTING, route lookup, ...).  Phases are cut
where the kind of step changes; steps of packets the host generated on the way
(depth > 0) are kept under the phase that caused them as a "host response".
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pathtrace.render.fields import detail_text
from pathtrace.trace import Step

_DRIVER_RX = {"eth_type_trans", "napi_gro_receive", "__netif_receive_skb_core", "process_backlog",
              "__netif_receive_skb", "__netif_receive_skb_one_core", "skb_vlan_untag", "vlan_do_receive",
              "__netif_rx", "ipv6_rcv", "arp_rcv"}
_IP_RCV = {"ip_rcv", "ip_rcv_core"}
_ROUTE = {"ip_rcv_finish", "ip_route_input_noref", "ip_route_input_slow", "fib_lookup", "fib_validate_source",
          "ip_handle_martian_source", "dst_input", "ip_options_compile", "ip_rcv_options", "ip_error"}
_LOCAL = {"ip_local_deliver", "ip_local_deliver_finish", "ip_protocol_deliver_rcu", "ip_defrag"}
_FORWARD = {"ip_forward"}
_OUTPUT = {"ip_forward_finish", "dst_output", "ip_output", "ip_finish_output", "__ip_finish_output", "ip_fragment",
           "ip_do_fragment", "ip_local_out", "__ip_local_out", "ip_route_me_harder"}
_NEIGH = {"ip_finish_output2", "__skb_queue_tail", "arp_solicit", "arp_send"}
_QDISC = {"__dev_queue_xmit", "sch_direct_xmit"}
_TX = {"dev_hard_start_xmit"}
_STAY = {"kfree_skb_reason", "consume_skb"}
_L4_PREFIXES = ("tcp_", "__tcp", "udp_", "__udp", "icmp_", "__inet", "inet_", "raw_", "ping_")
_MISS = re.compile(r"^(?P<chain>\S+)#(?P<num>\d+): (?P<why>.*)$")


@dataclass
class Phase:
    name: str
    steps: list[Step] = field(default_factory=list)
    responses: list[list[Step]] = field(default_factory=list)    # nested steps, one list per generated packet
    lines: list[str] = field(default_factory=list)


def classify(step: Step) -> str | None:
    """Phase name for a depth-0 step; None keeps the current phase (netfilter internals, drops)."""
    fn = step.fn
    if fn == "nf_hook_slow":
        return str(step.detail.get("hook", "netfilter"))
    if fn in _STAY or _is_netfilter(fn):
        return None
    for names, phase in ((_DRIVER_RX, "driver rx"), (_IP_RCV, "ip_rcv checks"), (_ROUTE, "route lookup"),
                         (_LOCAL, "local delivery"), (_FORWARD, "forward"), (_OUTPUT, "output"),
                         (_NEIGH, "neighbour"), (_QDISC, "qdisc"), (_TX, "driver tx")):
        if fn in names:
            return phase
    if fn.startswith(("neigh_", "__neigh")):
        return "neighbour"
    if fn.startswith(_L4_PREFIXES) or fn == "deliver_to_socket":
        return "local delivery"
    return None


def _is_netfilter(fn: str) -> bool:
    return (fn.startswith(("nf_", "ipv4_conntrack", "ipt_", "xt_", "__nf_", "ipv4_confirm", "nf_nat"))
            or fn.endswith("_tg") or fn.endswith("_mt"))


def group(path: list[Step]) -> list[Phase]:
    """Cut the path into phases; nested steps go under the phase that was running."""
    phases: list[Phase] = [Phase("driver rx")]
    nested: list[Step] | None = None
    for step in path:
        if step.depth > 0:
            if nested is None:
                nested = []
                phases[-1].responses.append(nested)
            nested.append(step)
            continue
        nested = None
        name = classify(step)
        if name is not None and name != phases[-1].name:
            if phases[-1].steps or phases[-1].responses:
                phases.append(Phase(name))
            else:
                phases[-1].name = name
        phases[-1].steps.append(step)
    return [p for p in phases if p.steps or p.responses]


def describe(step: Step, nf: Any = None) -> list[str]:
    """Readable lines for one step; the rule walk of ipt_do_table gets one line per rule."""
    d = step.detail
    fn = step.fn
    if fn in ("ipt_do_table", "nft_do_chain") and "chain" in d:
        return _table_lines(d, nf)
    if fn == "fib_lookup":
        if d.get("route"):
            return [f"route lookup: table {d.get('table')} (policy rule '{d.get('rule')}') chose "
                    f"'{d.get('route')}' [{d.get('type')}]" + (f" -> {d['error']}" if d.get("error") else "")]
        return [f"route lookup: no route matches ({d.get('error')})"]
    if fn == "ip_route_input_slow" and "result" in d:
        target = {"ip_local_deliver": "deliver locally", "ip_forward": f"forward out {d.get('out')}",
                  "ip_error": f"error {d.get('error')}"}.get(str(d.get("input")), str(d.get("input")))
        return [f"input route: {d.get('result')} -> {target}"]
    if fn == "fib_validate_source":
        return [f"source validation (rp_filter={d.get('rp_filter')}): {d.get('result')}"]
    if fn == "nf_conntrack_in":
        extra = f" {d['tuple']}" if d.get("tuple") else ""
        why = f" ({d['reason']})" if d.get("reason") else ""
        return [f"conntrack: {d.get('state')}{extra}{why}"]
    if fn == "kfree_skb_reason":
        rest = {k: v for k, v in d.items() if k != "reason"}
        return [f"DROPPED: {d.get('reason')}" + (f"  {detail_text(rest)}" if rest else "")]
    text = detail_text(d)
    return [f"{fn}{'  ' + text if text else ''}"]


def _table_lines(d: dict[str, Any], nf: Any) -> list[str]:
    """table/chain header, each rule that did not match with why, then the deciding rule."""
    table, chain = d.get("table"), d.get("chain")
    lines = [f"table {table}, hook {d.get('hook')}: {d.get('path') or chain}"]
    seen: dict[tuple[str, int], str] = {}
    for miss in d.get("misses") or []:
        m = _MISS.match(str(miss))
        if m:
            seen[(m["chain"], int(m["num"]))] = m["why"]
    decided = int(d.get("rule") or 0)
    rules = _chain_rules(nf, table, chain)
    path = str(d.get("path") or chain)
    if d.get("trail") is not None:
        lines += _trail_lines(d.get("misses") or [], d["trail"])
    elif rules is not None and " -> " not in path:
        upto = decided if decided else len(rules) + 1
        for r in rules:
            if r.num >= upto:
                break
            why = seen.get((chain, r.num))
            lines.append(f"  {chain}#{r.num}: no match ({why})" if why is not None
                         else f"  {chain}#{r.num}: matched, target {r.target.name or '(none)'} continues: {r.text}")
    else:
        for (c, n), why in seen.items():
            lines.append(f"  {c}#{n}: no match ({why})")
    verdict = d.get("verdict")
    if decided:
        lines.append(f"  {chain}#{decided}: MATCH -> {verdict}: {d.get('text')}")
    else:
        lines.append(f"  {chain} policy -> {verdict}: {d.get('text')}")
    if d.get("note"):
        lines.append(f"  note: {d['note']}")
    return lines


def _trail_lines(misses: list, trail: list[dict]) -> list[str]:
    """Every rule on the way, in the order ipt_do_table met them: the ones that did not match with
    why, and the ones that matched without deciding (jumps, gotos, returns, LOG, MARK, ...) with the
    chain stack then."""
    def miss(m: Any) -> str:
        got = _MISS.match(str(m))
        return f"  {got['chain']}#{got['num']}: no match ({got['why']})" if got else f"  {m}"
    out: list[str] = []
    j = 0
    for ev in trail:
        while j < min(ev["at"], len(misses)):
            out.append(miss(misses[j]))
            j += 1
        stack = " > ".join(ev["stack"])
        kind = ev["event"]
        if kind == "jump":
            out.append(f"  {ev['rule']}: matched, jump to {ev['target']} [{stack}]: {ev['text']}")
        elif kind == "goto":
            out.append(f"  {ev['rule']}: matched, goto {ev['target']} [{stack}]: {ev['text']}")
        elif kind == "return":
            out.append(f"  {ev['rule']}: matched, RETURN to {ev['target']} [{stack}]: {ev['text']}")
        elif kind == "end":
            out.append(f"  {ev['rule']}: end of chain, back to {ev['target']} [{stack}]")
        else:
            out.append(f"  {ev['rule']}: matched, target {ev['target'] or '(none)'} continues [{stack}]: {ev['text']}")
    out += [miss(m) for m in misses[j:]]
    return out


def _chain_rules(nf: Any, table: Any, chain: Any) -> list | None:
    try:
        return list(nf.tables[table].chains[chain].rules)
    except (AttributeError, KeyError, TypeError):
        return None
