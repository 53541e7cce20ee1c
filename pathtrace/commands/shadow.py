"""Shadowed rules: an earlier rule in the same chain matches every packet a later one could.

Rules are compared through their saved text (the compiled checks are closures),
over the fields whose containment is decidable: addresses, protocol, interfaces,
ports and conntrack states.  Anything else must be identical for a rule to cover
another, and stateful matches (limit, recent, ...) never cover: the same rule can
stop matching once its budget is spent.  Conservative by design: a reported
shadow is real, an unreported one may exist.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pathtrace.net.netfilter.iptables_restore import tokenize
from pathtrace.net.netfilter.x_tables import XtError
from pathtrace.net.netfilter.xt_util import parse_addr_mask, parse_port_range, parse_proto

STATEFUL = {"limit", "hashlimit", "recent", "statistic", "connlimit", "quota", "time", "connbytes", "nth"}
TERMINAL_EXT = {"REJECT", "DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP"}
_PORT_OPTS = {"--dport": "dport", "--destination-port": "dport", "--sport": "sport", "--source-port": "sport",
              "--dports": "dport", "--destination-ports": "dport", "--sports": "sport", "--source-ports": "sport"}
_STATE_OPTS = {"--ctstate", "--state"}

Ranges = tuple[tuple[int, int], ...]


@dataclass
class Shape:
    """The comparable part of a rule; `extra` holds everything else verbatim."""

    fields: dict[str, tuple[Any, bool]] = field(default_factory=dict)   # name -> (value, inverted)
    extra: list[tuple[str, ...]] = field(default_factory=list)
    modules: set[str] = field(default_factory=set)
    comparable: bool = True


def shape(text: str) -> Shape:
    """Split a rule's iptables-save text (`-A CHAIN ...`) into comparable fields and the rest."""
    toks = tokenize(text)[2:]
    s = Shape()
    module = ""
    inv = False
    i = 0
    while i < len(toks):
        t = toks[i]
        if t == "!":
            inv = True
            i += 1
            continue
        if t in ("-j", "-g"):
            break                                     # the target is compared separately
        arg = toks[i + 1] if i + 1 < len(toks) else ""
        if t in ("-m", "--match"):
            module = arg
            s.modules.add(arg)
            i += 2
            continue
        try:
            consumed = _field(s, t, arg, inv, module)
        except (XtError, ValueError):
            consumed = 0
        if not consumed:
            consumed = _extra(s, toks, i, module, inv)
        i += consumed
        inv = False
    return s


def _field(s: Shape, opt: str, arg: str, inv: bool, module: str) -> int:
    if opt in ("-s", "-d"):
        s.fields["src" if opt == "-s" else "dst"] = (parse_addr_mask(arg), inv)
    elif opt == "-p":
        proto = parse_proto(arg)
        if proto:
            s.fields["proto"] = (proto, inv)
    elif opt in ("-i", "-o"):
        s.fields["in" if opt == "-i" else "out"] = (arg, inv)
    elif opt in _PORT_OPTS and module in ("tcp", "udp", "multiport"):
        ranges = tuple(parse_port_range(p) for p in arg.split(","))
        s.fields[_PORT_OPTS[opt]] = (ranges, inv)
    elif opt in _STATE_OPTS and module in ("conntrack", "state"):
        s.fields["ctstate"] = (frozenset(arg.upper().split(",")), inv)
    else:
        return 0
    return 2


def _extra(s: Shape, toks: list[str], i: int, module: str, inv: bool) -> int:
    """An option we cannot compare: keep it with its arguments (up to the next option)."""
    j = i + 1
    while j < len(toks) and not toks[j].startswith("-") and toks[j] != "!":
        j += 1
    s.extra.append((module, "!" if inv else "", *toks[i:j]))
    return j - i


def covers(a: Shape, b: Shape) -> bool:
    """True when every packet matching b's conditions also matches a's."""
    if a.modules & STATEFUL:
        return False
    if a.extra and sorted(a.extra) != sorted(b.extra):
        return False
    for name, (want, inv) in a.fields.items():
        got = b.fields.get(name)
        if got is None:
            return False
        if inv or got[1]:
            if (want, inv) != got:
                return False
            continue
        if not _within(name, got[0], want):
            return False
    return True


def _within(name: str, narrow: Any, wide: Any) -> bool:
    if name in ("src", "dst"):
        (na, nm), (wa, wm) = narrow, wide
        return nm & wm == wm and na & wm == wa
    if name in ("in", "out"):
        if wide.endswith("+"):
            return narrow.rstrip("+").startswith(wide[:-1]) and len(narrow) >= len(wide) - 1
        return narrow == wide
    if name in ("sport", "dport"):
        return all(any(wlo <= lo and hi <= whi for wlo, whi in wide) for lo, hi in narrow)
    if name == "ctstate":
        return narrow <= wide
    return narrow == wide


def terminal(rule: Any) -> bool:
    """Does a matching rule end the chain for the packet (so later rules never see it)?"""
    t = rule.target
    if t.kind == "standard":
        return t.name in ("ACCEPT", "DROP", "RETURN", "QUEUE")
    if t.kind == "goto":
        return True
    return t.kind == "ext" and t.name in TERMINAL_EXT


def shadowed(nf: Any) -> list[dict[str, Any]]:
    """Every rule covered by an earlier terminal rule of its chain, with the covering rule."""
    found = []
    for tname, table in getattr(nf, "tables", {}).items():
        for chain in table.chains.values():
            earlier: list[tuple[Any, Shape]] = []
            for rule in chain.rules:
                mine = shape(rule.text)
                for prev, prev_shape in earlier:
                    if covers(prev_shape, mine):
                        found.append({"table": tname, "chain": chain.name, "rule": rule.num, "line": rule.line,
                                      "text": rule.text, "by_rule": prev.num, "by_line": prev.line,
                                      "by_text": prev.text})
                        break
                if terminal(rule):
                    earlier.append((rule, mine))
    return found


def unreferenced_chains(nf: Any) -> list[dict[str, Any]]:
    """User chains no rule jumps to: their rules can never run."""
    out = []
    for tname, table in getattr(nf, "tables", {}).items():
        targets = {r.target.chain for c in table.chains.values() for r in c.rules
                   if r.target.kind in ("jump", "goto")}
        for chain in table.chains.values():
            if not chain.builtin and chain.name not in targets:
                out.append({"table": tname, "chain": chain.name, "line": chain.line, "rules": len(chain.rules)})
    return out


# ---- nftables ---------------------------------------------------------------------------------
# Expression kinds that end a rule's evaluation for the packets it matched (nft_do_chain: a verdict
# or a terminal statement), and those whose outcome depends on state (never a cover).
NFT_TERMINAL = {"immediate", "reject", "nat", "masq", "redir", "queue"}
NFT_STATEFUL = {"limit", "quota", "dynset", "connlimit", "numgen", "ct count"}
NFT_MATCHES = ("payload+cmp", "meta+cmp", "lookup", "ct", "fib", "cmp", "range", "bitwise")


def _nft_matches(rule: Any) -> tuple[str, ...] | None:
    """The rule's match clauses as the text nft shows (None when its outcome depends on state)."""
    if any(e.name in NFT_STATEFUL for e in rule.exprs):
        return None
    words = rule.text.split()
    stop = {"counter", "log", "accept", "drop", "reject", "jump", "goto", "return", "queue", "dnat", "snat",
            "masquerade", "redirect", "notrack", "continue", "meta", "ct", "comment", "limit", "quota"}
    clauses: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        # a statement starts; `meta mark set` / `ct mark set` are statements, `meta l4proto tcp` is a match
        if w in stop and not (w in ("meta", "ct") and "set" not in words[i:i + 4]):
            break
        clauses.append(w)
        i += 1
    return tuple(clauses)


def _nft_terminal(rule: Any) -> bool:
    return any(e.name in NFT_TERMINAL and e.name != "immediate" for e in rule.exprs) or \
        any(e.name == "immediate" for e in rule.exprs) and rule.text.split()[-1] in ("accept", "drop")


def shadowed_nft(nft: Any) -> list[dict[str, Any]]:
    """nftables rules an earlier terminal rule of the same chain makes unreachable: one with no match
    at all, or with exactly the same match clauses (conservative: a reported shadow is real)."""
    found = []
    for table in getattr(nft, "tables", []) or []:
        for chain in table.chains.values():
            earlier: list[tuple[Any, tuple[str, ...]]] = []
            for rule in chain.rules:
                mine = _nft_matches(rule)
                if mine is not None:
                    for prev, prev_m in earlier:
                        if not prev_m or prev_m == mine:
                            found.append({"table": f"{table.family} {table.name}", "chain": chain.name,
                                          "rule": rule.handle, "line": rule.line, "text": rule.text,
                                          "by_rule": prev.handle, "by_line": prev.line, "by_text": prev.text})
                            break
                if mine is not None and _nft_terminal(rule):
                    earlier.append((rule, mine))
    return found
