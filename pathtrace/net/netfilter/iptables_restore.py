"""Load iptables-save / `iptables -S` text into x_tables Tables (iptables-restore + translate_table).

What the real tools refuse is refused here with the same reason and the line; what
the model does not implement is refused by name (never skipped).  After a table's
COMMIT the kernel-side checks of translate_table run: undefined jump targets,
chain loops (mark_source_chains -> ELOOP) and hook/table restrictions of every
match and target (xt_check_match / xt_check_target) for the hooks reaching a chain.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from pathtrace.errors import HostFileError
from pathtrace.net.netfilter import xt_registry
from pathtrace.net.netfilter.x_tables import (
    CHAIN_HOOKS, HOOK_CHAINS, NF_ACCEPT, NF_DROP, NF_QUEUE, TABLE_HOOKS, XT_RETURN, Chain,
    ExtSpec, Opt, Rule, RuleCtx, Table, XtError, XtMatch, XtTarget,
)
from pathtrace.lib.inet import ntoa
from pathtrace.net.netfilter.xt_util import PROTO_BY_NUM, parse_addr_mask, parse_proto

STANDARD_TARGETS = {"ACCEPT": NF_ACCEPT, "DROP": NF_DROP, "RETURN": XT_RETURN, "QUEUE": NF_QUEUE}
_COUNTERS = re.compile(r"^\[(\d+):(\d+)\]$")
_TABLE_HINT = re.compile(r"^#\s*table\s*[:=]\s*(\w+)", re.I)
IFNAMSIZ = 16
XT_EXTENSION_MAXNAMELEN = 29
NFT_JUMP_STACK_SIZE = 16        # include/net/netfilter/nf_tables.h: nft_chain_validate's level limit


@dataclass(slots=True)
class _PendingRule:
    chain: str
    line: int
    tokens: list[str]


@dataclass(slots=True)
class _TableText:
    name: str
    line: int
    chains: dict[str, Chain] = field(default_factory=dict)
    rules: list[_PendingRule] = field(default_factory=list)


class RulesetParser:
    """One ruleset text -> {table name: Table}."""

    def __init__(self, text: str, path: str = "", first_line: int = 1, host: Any = None):
        self.text = text
        self.path = path
        self.first = first_line
        self.host = host

    # ---- errors ---------------------------------------------------------------------
    def err(self, msg: str, lineno: int) -> HostFileError:
        return HostFileError(msg, self.path or None, lineno + self.first - 1)

    # ---- top level ---------------------------------------------------------------------
    def parse(self) -> dict[str, Table]:
        lines = self.text.splitlines()
        if any(l.lstrip().startswith("*") for l in lines):
            return self._split_save(lines)
        texts = self._split_listing(lines)
        return {t.name: self._build_table(t) for t in texts.values()}

    def _split_save(self, lines: list[str]) -> dict[str, Table]:
        """iptables-restore: each '*table' ... COMMIT block is checked and committed on its own, so an
        error in any block is reported, and a later block of the same table replaces the earlier one
        (the table is flushed first; iptables-legacy keeps the built-in chains' policies, iptables-nft
        starts from ACCEPT, as iptables 1.8.9 does on 6.18)."""
        tables: dict[str, Table] = {}
        cur: _TableText | None = None
        for n, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("*"):
                if cur is not None:
                    raise self.err(f"table '{line[1:]}' starts before COMMIT of table '{cur.name}'", n)
                cur = self._new_table(line[1:].strip(), n)
                if cur.name in tables and getattr(self.host, "iptables_backend", "nft") == "legacy":
                    for name, chain in tables[cur.name].chains.items():
                        if chain.builtin:
                            cur.chains[name].policy = chain.policy
                continue
            if cur is None:
                raise self.err(f"line outside a table (expected '*table'): {line!r}", n)
            if line == "COMMIT":
                tables[cur.name] = self._build_table(cur)
                cur = None
                continue
            if line.startswith(":"):
                self._declare(cur, line[1:].split(), n)
                continue
            self._command(cur, tokenize(line, self, n), n)
        if cur is not None:
            raise self.err(f"COMMIT expected for table '{cur.name}' at end of input", len(lines))
        return tables

    def _split_listing(self, lines: list[str]) -> dict[str, _TableText]:
        name = "filter"
        base = os.path.basename(self.path)
        m = re.search(r"\.(raw|mangle|nat|filter|security)\.iptables-S$", base)
        if m:
            name = m.group(1)
        tables: dict[str, _TableText] = {}
        cur: _TableText | None = None
        for n, raw in enumerate(lines, 1):
            line = raw.strip()
            hint = _TABLE_HINT.match(line)
            if hint:
                name = hint.group(1).lower()
                cur = tables.get(name) or self._new_table(name, n)
                tables[name] = cur
                continue
            if not line or line.startswith("#"):
                continue
            if cur is None:
                cur = self._new_table(name, n)
                tables[name] = cur
            self._command(cur, tokenize(line, self, n), n)
        return tables

    def _new_table(self, name: str, n: int) -> _TableText:
        if name not in TABLE_HOOKS:
            raise self.err(f"can't initialize iptables table '{name}': Table does not exist", n)
        t = _TableText(name, n)
        for hook in TABLE_HOOKS[name]:
            cname = HOOK_CHAINS[hook]
            t.chains[cname] = Chain(cname, True, NF_ACCEPT, line=n)
        return t

    def _declare(self, t: _TableText, parts: list[str], n: int) -> None:
        if not parts:
            raise self.err("empty chain declaration", n)
        name = parts[0]
        policy = parts[1] if len(parts) > 1 else "-"
        if name in t.chains and t.chains[name].builtin:
            self._set_policy(t, name, policy, n)
            return
        if name in CHAIN_HOOKS:
            raise self.err(f"built-in chain {name} does not exist in table '{t.name}'", n)
        if policy != "-":
            raise self.err(f"user-defined chain {name} cannot have a policy ({policy})", n)
        self._new_chain(t, name, n)

    def _new_chain(self, t: _TableText, name: str, n: int) -> None:
        if len(name) > XT_EXTENSION_MAXNAMELEN - 1:
            raise self.err(f"chain name '{name}' too long (must be under {XT_EXTENSION_MAXNAMELEN} chars)", n)
        if name in STANDARD_TARGETS or xt_registry.target(name) is not None:
            raise self.err(f"chain name '{name}' clashes with a target name", n)
        if name.startswith("-") or name.startswith("!"):
            raise self.err(f"invalid chain name '{name}'", n)
        if name in t.chains:
            raise self.err(f"chain '{name}' already exists", n)
        t.chains[name] = Chain(name, False, line=n)

    def _set_policy(self, t: _TableText, chain: str, policy: str, n: int) -> None:
        c = t.chains.get(chain)
        if c is None or not c.builtin:
            raise self.err(f"can't set policy '{policy}' on '{chain}': only built-in chains have policies"
                           if c else f"bad built-in chain name '{chain}' for table '{t.name}'", n)
        if policy not in ("ACCEPT", "DROP"):
            raise self.err(f"bad policy name '{policy}' (only ACCEPT or DROP)", n)
        c.policy = STANDARD_TARGETS[policy]
        c.line = n

    def _command(self, t: _TableText, toks: list[str], n: int) -> None:
        if toks and _COUNTERS.match(toks[0]):
            toks = toks[1:]
        if not toks:
            return
        cmd = toks[0]
        if cmd in ("-A", "--append"):
            if len(toks) < 2:
                raise self.err("-A needs a chain name", n)
            if toks[1] not in t.chains:
                raise self.err(f"chain '{toks[1]}' does not exist (append to undeclared chain)", n)
            t.rules.append(_PendingRule(toks[1], n, toks[2:]))
        elif cmd in ("-N", "--new-chain"):
            if len(toks) != 2:
                raise self.err("-N takes exactly one chain name", n)
            self._new_chain(t, toks[1], n)
        elif cmd in ("-P", "--policy"):
            if len(toks) < 3:
                raise self.err("-P needs a chain and a policy", n)
            self._set_policy(t, toks[1], toks[2], n)
        else:
            raise self.err(f"unsupported command {cmd!r} (only -A, -N, -P, :CHAIN and COMMIT)", n)

    # ---- rules -----------------------------------------------------------------------------
    def _build_table(self, t: _TableText) -> Table:
        table = Table(t.name, t.chains, t.line)
        for pr in t.rules:
            chain = t.chains[pr.chain]
            try:
                rule = parse_rule(pr, t.name, len(chain.rules) + 1, self.host, set(t.chains))
            except XtError as e:
                raise self.err(str(e), pr.line) from None
            rule.line = pr.line + self.first - 1
            chain.rules.append(rule)
        check_table(table, self)
        return table


def tokenize(line: str, parser: RulesetParser | None = None, n: int = 0) -> list[str]:
    """iptables-restore's argv splitting: whitespace, "double"/'single' quotes, \\-escapes in quotes."""
    if '"' not in line and "'" not in line:
        return line.split()             # what the loop below gives for a line without quotes
    out: list[str] = []
    cur: list[str] = []
    quote = ""
    have = False
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\" and i + 1 < len(line):
                cur.append(line[i + 1])
                i += 2
                continue
            if c == quote:
                quote = ""
            else:
                cur.append(c)
        elif c in "\"'":
            quote = c
            have = True
        elif c.isspace():
            if cur or have:
                out.append("".join(cur))
                cur, have = [], False
        else:
            cur.append(c)
        i += 1
    if quote:
        if parser is not None:
            raise parser.err("unterminated quoted string", n)
        raise XtError("unterminated quoted string")
    if cur or have:
        out.append("".join(cur))
    return out


_NEEDS_QUOTES = re.compile(r"[\s\"'\\]")      # \s: str.isspace's characters


def quote_token(tok: str) -> str:
    """iptables-save quoting: strings with blanks or quotes go in double quotes."""
    if tok and not _NEEDS_QUOTES.search(tok):
        return tok
    return '"' + tok.replace("\\", "\\\\").replace('"', '\\"') + '"'


_GENERIC = {
    "-s": "-s", "--source": "-s", "--src": "-s",
    "-d": "-d", "--destination": "-d", "--dst": "-d",
    "-p": "-p", "--protocol": "-p",
    "-i": "-i", "--in-interface": "-i",
    "-o": "-o", "--out-interface": "-o",
    "-f": "-f", "--fragment": "-f",
    "-m": "-m", "--match": "-m",
    "-j": "-j", "--jump": "-j",
    "-g": "-g", "--goto": "-g",
    "-c": "-c", "--set-counters": "-c",
}
_IMPLICIT_PROTO_MATCH = {6: "tcp", 17: "udp", 1: "icmp", 132: "sctp", 136: "udplite", 33: "dccp"}


@dataclass(slots=True)
class _Ext:
    spec: ExtSpec
    opts: list[Opt] = field(default_factory=list)


def parse_rule(pr: _PendingRule, table: str, num: int, host: Any, chains: set[str]) -> Rule:
    """Parse one `-A CHAIN ...` into a Rule; raises XtError with the reason."""
    toks = pr.tokens
    ip: dict[str, tuple[str, bool]] = {}
    matches: list[_Ext] = []
    target: _Ext | None = None
    target_name = ""
    target_kind = ""
    text_toks: list[str] = []
    i = 0
    pending_inv = False

    def take_arg(opt: str) -> tuple[str, bool]:
        nonlocal i
        inv = False
        if i < len(toks) and toks[i] == "!":      # old style: -s ! 1.2.3.4
            inv = True
            i += 1
        if i >= len(toks):
            raise XtError(f"option {opt!r} requires an argument")
        arg = toks[i]
        i += 1
        return arg, inv

    while i < len(toks):
        tok = toks[i]
        start = i
        i += 1
        if tok == "!":
            if pending_inv:
                raise XtError("multiple consecutive ! not allowed")
            pending_inv = True
            continue
        g = _GENERIC.get(tok)
        if g == "-c":
            i += 2
            continue
        if g in ("-s", "-d", "-p", "-i", "-o"):
            arg, inv = take_arg(tok)
            if g in ip:
                raise XtError(f"multiple {g} flags not allowed")
            ip[g] = (arg, inv or pending_inv)
        elif g == "-f":
            if "-f" in ip:
                raise XtError("multiple -f flags not allowed")
            ip["-f"] = ("", pending_inv)
        elif g == "-m":
            arg, _ = take_arg(tok)
            if pending_inv:
                raise XtError("unexpected '!' before -m")
            spec = xt_registry.match(arg)
            if spec is None:
                raise XtError(xt_registry.unknown_match(arg))
            matches.append(_Ext(spec))
        elif g in ("-j", "-g"):
            arg, _ = take_arg(tok)
            if target_name:
                raise XtError("multiple -j/-g flags not allowed")
            target_name = arg
            if arg in STANDARD_TARGETS:
                target_kind = "goto" if g == "-g" else "standard"
                if g == "-g":
                    raise XtError(f"goto '{arg}' is not a chain")
            elif g == "-g":
                target_kind = "goto"
            else:
                spec = xt_registry.target(arg)
                if spec is not None and arg not in chains:
                    target = _Ext(spec)
                    target_kind = "ext"
                elif arg in chains:
                    target_kind = "jump"
                else:
                    raise XtError(xt_registry.unknown_target(arg))
        elif tok.startswith("-") and len(tok) > 1:
            ext = _owner(tok, target, matches)
            if ext is None:
                proto = parse_proto(ip["-p"][0]) if "-p" in ip else 0
                implicit = _IMPLICIT_PROTO_MATCH.get(proto)
                spec = xt_registry.match(implicit) if implicit else None
                if spec is not None and spec.canonical(tok) and not any(m.spec.name == implicit for m in matches):
                    ext = _Ext(spec)
                    matches.append(ext)
                    text_toks += ["-m", implicit]
                else:
                    last = target.spec.name if target else (matches[-1].spec.name if matches else "")
                    where = f" (after {'-j' if target else '-m'} {last})" if last else ""
                    raise XtError(f"unknown option {tok!r}{where}")
            name = ext.spec.canonical(tok)
            nargs = ext.spec.options[name]
            args: list[str] = []
            inv = pending_inv
            for _ in range(nargs):
                a, ainv = take_arg(tok)
                inv = inv or ainv
                args.append(a)
            ext.opts.append(Opt(name, args, inv))
        else:
            raise XtError(f"bad argument {tok!r}")
        group = toks[start:i]
        if pending_inv or "!" in group:
            text_toks.append("!")
        text_toks += [t for t in group if t != "!"]
        pending_inv = False
    if pending_inv:
        raise XtError("'!' at end of rule")

    proto, inv_proto = 0, False
    if "-p" in ip:
        proto = parse_proto(ip["-p"][0])
        inv_proto = ip["-p"][1]
        if proto == 0 and inv_proto:
            raise XtError("rule would never match protocol")
    ctx = RuleCtx(table, pr.chain, proto, inv_proto, pr.line, host)
    checks = _ip_checks(ip, pr.chain, proto, inv_proto)
    for m in matches:
        built = m.spec.build(m.opts, ctx)
        checks.extend(built if isinstance(built, list) else [built])
    if target_kind == "standard":
        tgt = XtTarget(target_name, "standard", verdict=STANDARD_TARGETS[target_name])
    elif target_kind in ("jump", "goto"):
        tgt = XtTarget(target_name, target_kind, chain=target_name)
    elif target_kind == "ext":
        tgt = target.spec.build(target.opts, ctx)
    else:
        tgt = XtTarget("", "standard")          # no target: count only (XT_CONTINUE)
    if tgt.name == "TCPMSS":
        from pathtrace.net.netfilter.xt_mangle import check_tcpmss_syn
        if not check_tcpmss_syn(checks):
            raise XtError("TCPMSS target: Only works on TCP SYN packets (add -m tcp --tcp-flags SYN,RST SYN)")
    text = " ".join(["-A", pr.chain] + [quote_token(t) for t in text_toks])
    return Rule(pr.chain, num, pr.line, text, tuple(checks), tgt)


def _owner(opt: str, target: _Ext | None, matches: list[_Ext]) -> _Ext | None:
    """Which loaded extension takes `opt`: the target first, then the latest match."""
    if target is not None and target.spec.canonical(opt):
        return target
    for m in reversed(matches):
        if m.spec.canonical(opt):
            return m
    return None


def _ip_checks(ip: dict[str, tuple[str, bool]], chain: str, proto: int, inv_proto: bool) -> list[XtMatch]:
    """ip_packet_match, field by field, as closures (src, dst, in, out, proto, frag)."""
    checks: list[XtMatch] = []
    for flag, attr in (("-s", "saddr"), ("-d", "daddr")):
        if flag not in ip:
            continue
        text, inv = ip[flag]
        if "," in text:
            raise XtError(f"{flag} with several addresses ({text}) expands to several rules; not supported")
        addr, mask = parse_addr_mask(text)
        if mask == 0 and not inv:
            continue
        checks.append(_addr_check(attr, addr, mask, inv, flag))
    for flag, which in (("-i", "indev"), ("-o", "outdev")):
        if flag not in ip:
            continue
        name, inv = ip[flag]
        if len(name) >= IFNAMSIZ:
            raise XtError(f"interface name '{name}' must be shorter than IFNAMSIZ ({IFNAMSIZ})")
        if flag == "-o" and chain in ("PREROUTING", "INPUT"):
            raise XtError(f"Can't use -o with {chain}")
        if flag == "-i" and chain in ("POSTROUTING", "OUTPUT"):
            raise XtError(f"Can't use -i with {chain}")
        checks.append(_iface_check(which, name, inv, flag))
    if proto or inv_proto:
        checks.append(_proto_check(proto, inv_proto))
    if "-f" in ip:
        inv = ip["-f"][1]
        checks.append(XtMatch("-f", lambda skb, par: (par.fragoff != 0) != inv,
                              lambda skb, par: f"{'' if inv else 'not '}a non-first fragment"))
    return checks


def _addr_check(attr: str, addr: int, mask: int, inv: bool, flag: str) -> XtMatch:
    if attr == "saddr":
        def check(skb, par):
            return ((skb.iph.saddr & mask) == addr) != inv
    else:
        def check(skb, par):
            return ((skb.iph.daddr & mask) == addr) != inv
    from pathtrace.net.netfilter.xt_util import fmt_addr_mask
    want = fmt_addr_mask(addr, mask)

    # info: the constraint, for the per-chain rule index (xt_chain_index)
    return _with_reason(XtMatch(flag, check, None, info={"field": attr, "addr": addr, "mask": mask, "inv": inv}),
                        f"{flag} {'! ' if inv else ''}{want}: ", attr)


def _with_reason(m: XtMatch, head: str, field: str) -> XtMatch:
    """An ip_packet_match check whose miss reason is head + the packet's field (FIELD_TEXT)."""
    text = FIELD_TEXT[field]
    m.reason = (head, field, text)
    m.why = lambda skb, par: head + text(skb, par)
    return m


def _devname(dev: Any) -> str:
    return dev.name if dev is not None else ""


# The packet's side of an ip_packet_match miss reason ("-s 10.0.0.0/8: <text>"), per field.
FIELD_TEXT: dict[str, Callable[[Any, Any], str]] = {
    "saddr": lambda skb, par: ntoa(skb.iph.saddr),
    "daddr": lambda skb, par: ntoa(skb.iph.daddr),
    "indev": lambda skb, par: _devname(par.indev) or "(none)",
    "outdev": lambda skb, par: _devname(par.outdev) or "(none)",
    "proto": lambda skb, par: str(PROTO_BY_NUM.get(skb.iph.protocol, skb.iph.protocol)),
}


def _iface_check(which: str, name: str, inv: bool, flag: str) -> XtMatch:
    wildcard = name.endswith("+")
    prefix = name[:-1] if wildcard else name

    def devname(par) -> str:
        dev = getattr(par, which)
        return dev.name if dev is not None else ""
    if wildcard:
        def check(skb, par):
            return devname(par).startswith(prefix) != inv
    else:
        def check(skb, par):
            return (devname(par) == name) != inv

    return _with_reason(XtMatch(flag, check, None, info={"field": which, "name": name, "wildcard": wildcard,
                                                         "inv": inv}),
                        f"{flag} {'! ' if inv else ''}{name}: ", which)


def _proto_check(proto: int, inv: bool) -> XtMatch:
    def check(skb, par):
        return (skb.iph.protocol == proto) != inv

    return _with_reason(XtMatch("-p", check, None, info={"field": "proto", "proto": proto, "inv": inv}),
                        f"-p {'! ' if inv else ''}{PROTO_BY_NUM.get(proto, proto)}: ", "proto")


# ---- translate_table checks ------------------------------------------------------------

def check_table(table: Table, parser: RulesetParser) -> None:
    """Undefined targets, loops (ELOOP) and hook/table restrictions, as translate_table."""
    for chain in table.chains.values():
        for rule in chain.rules:
            t = rule.target
            if t.kind in ("jump", "goto"):
                dest = table.chains.get(t.chain)
                if dest is None:
                    raise HostFileError(f"Couldn't load target `{t.chain}': no such chain in table "
                                        f"'{table.name}'", parser.path or None, rule.line)
                if dest.builtin:
                    raise HostFileError(f"cannot jump to built-in chain {t.chain}", parser.path or None, rule.line)
    reach: dict[str, int] = {name: 0 for name in table.chains}
    nft = getattr(parser.host, "iptables_backend", "nft") != "legacy"
    for hook in TABLE_HOOKS[table.name]:
        _walk(table, table.builtin(hook), 1 << hook, reach, parser, NFT_JUMP_STACK_SIZE if nft else None)
    for chain in table.chains.values():
        mask = reach[chain.name]
        for rule in chain.rules:
            for ext in (*rule.checks, rule.target):
                _check_ext(ext, table.name, mask, rule, parser)


def _walk(table: Table, start: Chain, hookbit: int, reach: dict[str, int], parser: RulesetParser,
          max_level: int | None) -> None:
    """Every chain reachable from the built-in chain `start` gets `hookbit` in `reach`; a jump back onto
    the path is a loop (mark_source_chains, ELOOP).  With `max_level` (iptables-nft: nf_tables'
    nft_chain_validate) a chain reached at that many jumps (-j or -g) from the base chain is refused
    (EMLINK); iptables-legacy has no such limit (its jump stack holds one entry per user chain).
    Iterative: a thousand nested chains are walked without recursion."""
    reach[start.name] |= hookbit
    level: dict[str, int] = {start.name: 0}     # deepest level each chain was walked at (for max_level)
    path: list[list] = [[start, 0]]             # [chain, next rule]: the jumps from the base chain
    on_path = {start.name}
    while path:
        frame = path[-1]
        chain, i = frame
        if i >= len(chain.rules):
            path.pop()
            on_path.discard(chain.name)
            continue
        frame[1] = i + 1
        rule = chain.rules[i]
        t = rule.target
        if t.kind not in ("jump", "goto"):
            continue
        if t.chain in on_path:
            names = [f[0].name for f in path]
            loop = " -> ".join(names[names.index(t.chain):] + [t.chain])
            raise HostFileError(f"chain loop {loop}: the kernel refuses the table (mark_source_chains, ELOOP)",
                                parser.path or None, rule.line)
        depth = len(path)
        if max_level is not None and depth >= max_level:
            raise HostFileError(f"rule in chain {chain.name} jumps to {t.chain} at {depth} jumps from "
                                f"{start.name}: iptables-nft refuses it (RULE_APPEND failed (Too many links): "
                                f"nf_tables' jump stack holds {max_level})", parser.path or None, rule.line)
        dest = table.chains[t.chain]
        if reach[dest.name] & hookbit and (max_level is None or level.get(dest.name, -1) >= depth):
            continue
        reach[dest.name] |= hookbit
        level[dest.name] = depth
        path.append([dest, 0])
        on_path.add(dest.name)


def _hook_list(mask: int) -> str:
    return "/".join(HOOK_CHAINS[h] for h in range(5) if mask & (1 << h))


def _check_ext(ext: XtMatch | XtTarget, table: str, mask: int, rule: Rule, parser: RulesetParser) -> None:
    kind = "target" if isinstance(ext, XtTarget) else "match"
    if ext.table is not None and ext.table != table:
        raise HostFileError(f"x_tables: ip_tables: {ext.name} {kind}: only valid in {ext.table} table, not {table}",
                            parser.path or None, rule.line)
    if ext.hooks and mask & ~ext.hooks:
        raise HostFileError(f"x_tables: ip_tables: {ext.name} {kind}: used from hooks {_hook_list(mask)}, but only "
                            f"usable from {_hook_list(ext.hooks)}", parser.path or None, rule.line)
