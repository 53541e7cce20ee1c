"""The text of `nft list ruleset` (or an `nft -f` file of tables) into nf_tables objects.

The kernel has no parser: nft (userspace) turns the text into netlink expressions and the
kernel checks them.  This module does both sides for what real rulesets use and refuses
anything else by name, with the line and column nft would report
(`FILE:LINE:COL-END: Error: ...`).  Each rule becomes the expressions nft would load
(protocol dependencies included: `tcp dport 22` is `meta l4proto tcp` then the payload
compare), compiled to closures from the nft_* modules.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from pathtrace.errors import HostFileError
from pathtrace.lib.inet import ntoa
from pathtrace.net.netfilter import nft_ct, nft_meta, nft_payload
from pathtrace.net.netfilter.nf_tables_api import (
    CHAIN_TYPE_HOOKS, HOOKS, NFT_BREAK, NFT_CONTINUE, NFT_GOTO, NFT_JUMP, NFT_JUMP_STACK_SIZE, NFT_RETURN,
    PRIORITIES, Counter, Expr, NftChain, NftRule, NftRuleset, NftSet, NftTable, SetElem,
)
from pathtrace.net.netfilter.nf_tables_datatypes import (
    ICMP_CODES, ICMPX_CODES, INTEGER32, TYPES, Datatype, NftTypeError,
)
from pathtrace.net.netfilter.nft_cmp import nft_bitwise_cmp, nft_cmp, nft_range
from pathtrace.net.netfilter.nft_lookup import nft_set_lookup
from pathtrace.net.netfilter_hooks import NF_ACCEPT, NF_DROP

NF_IP_PRI_CONNTRACK = -200
UNSUPPORTED_FAMILIES = {"ip6": "family ip6 (IPv6 only; the model is IPv4)", "arp": "family arp",
                        "bridge": "family bridge", "netdev": "family netdev"}
UNSUPPORTED_STATEMENTS = {
    "queue": "queue", "rt": "rt expressions", "socket": "socket expressions", "osf": "osf", "ether": "ether header",
    "vlan": "vlan header", "arp": "arp header", "sctp": "sctp header", "dccp": "dccp header", "ah": "ah header",
    "esp": "esp header", "comp": "comp header", "numgen": "numgen", "jhash": "jhash", "symhash": "symhash",
    "quota": "quota", "synproxy": "synproxy", "tproxy": "tproxy", "dup": "dup", "fwd": "fwd", "flow": "flow offload",
    "xt": "xt (iptables-nft compat expression)", "exthdr": "exthdr", "ipsec": "ipsec", "secmark": "secmark",
    "set": "dynamic set updates", "add": "dynamic set updates (add @set)", "update": "dynamic set updates",
    "delete": "dynamic set updates", "hash": "hash", "dst": "ipv6 extension headers", "hbh": "ipv6 extension headers",
    "frag": "ipv6 extension headers", "mh": "ipv6 extension headers", "srh": "ipv6 extension headers",
    "igmp": "igmp header", "gre": "gre header", "vxlan": "vxlan", "geneve": "geneve", "last": "last",
    "inner": "inner headers", "tunnel": "tunnel", "ip6": "", "icmpv6": "",
}
VERDICT_WORDS = {"accept": NF_ACCEPT, "drop": NF_DROP, "continue": NFT_CONTINUE, "return": NFT_RETURN}
LOG_LEVELS = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warn": 4, "notice": 5, "info": 6, "debug": 7,
              "audit": 8}
OPS = ("==", "!=", "<=", ">=", "<", ">", "eq", "ne", "lt", "gt", "le", "ge")
OP_WORDS = {"eq": "==", "ne": "!=", "lt": "<", "gt": ">", "le": "<=", "ge": ">="}


class NftParseError(HostFileError):
    """`FILE:LINE:COL-END: Error: message`, nft's own error format."""

    def __init__(self, message: str, file: str | None, line: int, col: int, end: int):
        super().__init__(message, file, line)
        self.col, self.end = col, end

    def __str__(self) -> str:
        return f"{self.file or '-'}:{self.line}:{self.col}-{self.end}: Error: {self.message}"


@dataclass(slots=True)
class Tok:
    kind: str           # word | string | punct | nl | eof
    value: str
    line: int
    col: int            # 1-based
    end: int            # last column (inclusive)
    pos: int = 0        # offset in the text
    stop: int = 0


_TOKEN = re.compile(r'''
    (?P<nl>\n)
  | (?P<ws>[ \t\r]+|\\\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"[^"\n]*")
  | (?P<op>!=|==|<=|>=)
  | (?P<word>[A-Za-z0-9_.:/*\-\[\]%~]+)
  | (?P<punct>[{}();,@$=<>&|^!+])
''', re.X)


_HANDLE = re.compile(r"#\s*handle (\d+)\s*$")


def tokenize(text: str, path: str, first_line: int, handles: dict[int, int] | None = None) -> list[Tok]:
    """Tokens with line and column; `handles` collects `# handle N` comments by line (nft -a listings)."""
    toks: list[Tok] = []
    line, line_start, pos = first_line, 0, 0
    n = len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        col = pos - line_start + 1
        if m is None:
            raise NftParseError(f"syntax error, unexpected character {text[pos]!r}", path, line, col, col)
        kind = m.lastgroup
        value = m.group()
        if kind == "nl":
            toks.append(Tok("nl", "\n", line, col, col, pos, m.end()))
            line += 1
            line_start = m.end()
        elif kind == "ws":
            if value.startswith("\\"):
                line += 1
                line_start = m.end()
        elif kind == "comment":
            h = _HANDLE.match(value)
            if h is not None and handles is not None:
                handles[line] = int(h.group(1))
        elif kind == "string":
            toks.append(Tok("string", value[1:-1], line, col, col + len(value) - 1, pos, m.end()))
        else:
            if kind == "word" and value in (".", ":", "/", "-"):
                kind = "punct"
            elif kind == "op":
                kind = "punct"
            toks.append(Tok("word" if kind == "word" else "punct", value, line, col, col + len(value) - 1,
                            pos, m.end()))
        pos = m.end()
    toks.append(Tok("eof", "", line, pos - line_start + 1, pos - line_start + 1, pos, pos))
    return toks


@dataclass(slots=True)
class Lhs:
    """A value-producing expression: its loader, datatype(s), text and the dependency matches nft adds."""

    load: Callable[[Any], Any]
    types: list[Datatype]
    text: str
    deps: list[Expr] = field(default_factory=list)
    conntrack: bool = False
    never: str = ""             # the header cannot be in an IPv4 packet (ip6, icmpv6): the rule never matches
    needs_l4: bool = False      # ct proto-src/dst without a transport protocol earlier in the rule

    @property
    def dtype(self) -> Datatype:
        return self.types[0]


def _fmt(dt: Datatype, v: Any) -> str:
    if v is None:
        return "nothing (not available)"
    if dt.name == "ipv4_addr" and isinstance(v, int):
        return ntoa(v)
    if dt.bitmask and isinstance(v, int):
        names = [k for k, b in dt.symbols.items() if v & b]
        return ",".join(names) if names else str(v)
    if dt.symbols and isinstance(v, int) and dt.name != "inet_service":
        for k, b in dt.symbols.items():
            if b == v:
                return k
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


def _fmt_multi(types: list[Datatype], v: Any) -> str:
    if isinstance(v, tuple):
        return " . ".join(_fmt(t, x) for t, x in zip(types, v))
    return _fmt(types[0], v)


class RulesetParser:
    """One parse of a ruleset text; `parse()` returns the NftRuleset or raises NftParseError."""

    def __init__(self, text: str, path: str = "", first_line: int = 1, host: Any = None, family_ok=None):
        self.text = text
        self.path = path
        self.host = host
        self.handles: dict[int, int] = {}           # line -> the handle `nft -a list ruleset` printed there
        self.toks = self.expand_defines(tokenize(text, path, first_line, self.handles))
        self.i = 0
        self.ruleset = NftRuleset(path=path)
        self.table: NftTable | None = None
        self.pending: list[tuple[NftChain, list[Tok]]] = []
        self.targets: list[tuple[NftRule, str, Tok]] = []
        self.anon_handles: list[NftSet] = []
        self.devices = {d.name: i + 1 for i, d in enumerate(getattr(host, "interfaces", None) or [])}

    def expand_defines(self, toks: list[Tok]) -> list[Tok]:
        """`define NAME = VALUE` lines are taken out and every `$NAME` replaced by VALUE's tokens (placed
        where `$NAME` is written, so rule texts show the variable); `undefine NAME` forgets it."""
        out: list[Tok] = []
        defs: dict[str, list[Tok]] = {}
        i, n = 0, len(toks)
        at_start = True
        while i < n:
            t = toks[i]
            if at_start and t.kind == "word" and t.value in ("define", "redefine", "undefine"):
                if i + 1 >= n or toks[i + 1].kind not in ("word", "string"):
                    raise self.unexpected(toks[min(i + 1, n - 1)], "identifier")
                name = toks[i + 1].value
                if t.value == "undefine":
                    defs.pop(name, None)
                    i += 2
                    continue
                if i + 2 >= n or toks[i + 2].value != "=":
                    raise self.unexpected(toks[min(i + 2, n - 1)], "'='")
                j, depth, value = i + 3, 0, []
                while j < n and not (depth == 0 and (toks[j].kind in ("nl", "eof") or toks[j].value == ";")):
                    if toks[j].kind == "punct" and toks[j].value == "{":
                        depth += 1
                    elif toks[j].kind == "punct" and toks[j].value == "}":
                        depth -= 1
                    if toks[j].kind == "punct" and toks[j].value == "$" and j + 1 < n:
                        ref = toks[j + 1]
                        if ref.value not in defs:
                            raise self.error(ref, f"unknown identifier '{ref.value}'")
                        value.extend(defs[ref.value])
                        j += 2
                        continue
                    if toks[j].kind != "nl":
                        value.append(toks[j])
                    j += 1
                if not value:
                    raise self.unexpected(toks[min(j, n - 1)], "value")
                if t.value == "define" and name in defs:
                    raise self.error(toks[i + 1], f"redefinition of symbol '{name}'")
                defs[name] = value
                i = j
                continue
            if t.kind == "punct" and t.value == "$":
                if i + 1 >= n or toks[i + 1].kind != "word":
                    raise self.unexpected(toks[min(i + 1, n - 1)], "identifier")
                name_tok = toks[i + 1]
                if name_tok.value not in defs:
                    raise self.error(name_tok, f"unknown identifier '{name_tok.value}'")
                out.extend(Tok(v.kind, v.value, t.line, t.col, name_tok.end, t.pos, name_tok.stop)
                           for v in defs[name_tok.value])
                i += 2
                at_start = False
                continue
            out.append(t)
            at_start = t.kind == "nl" or t.value in (";", "{", "}")
            i += 1
        return out

    # ---- token helpers ----------------------------------------------------------------------
    def peek(self, k: int = 0) -> Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> Tok:
        t = self.toks[self.i]
        if t.kind != "eof":
            self.i += 1
        return t

    def error(self, tok: Tok, msg: str) -> NftParseError:
        return NftParseError(msg, self.path, tok.line, tok.col, tok.end)

    def unexpected(self, tok: Tok, expecting: str = "") -> NftParseError:
        what = {"nl": "newline", "eof": "end of file"}.get(tok.kind, tok.value)
        return self.error(tok, f"syntax error, unexpected {what}" + (f", expecting {expecting}" if expecting else ""))

    def expect(self, value: str) -> Tok:
        t = self.next()
        if t.value != value or t.kind == "string":
            raise self.unexpected(t, f"'{value}'")
        return t

    def word(self, what: str = "string") -> Tok:
        t = self.next()
        if t.kind not in ("word", "string"):
            raise self.unexpected(t, what)
        return t

    def skip_nl(self) -> None:
        while self.peek().kind == "nl" or self.peek().value == ";":
            self.next()

    def at_end_of_stmt(self) -> bool:
        t = self.peek()
        return t.kind in ("nl", "eof") or t.value in (";", "}")

    # ---- top level ----------------------------------------------------------------------------
    def parse(self) -> NftRuleset:
        while True:
            self.skip_nl()
            t = self.peek()
            if t.kind == "eof":
                break
            if t.value == "table":
                self.next()
                self.parse_table(t)
            elif t.value == "flush" and self.peek(1).value == "ruleset":
                self.next()
                self.next()
                self.ruleset.tables.clear()
            elif t.value in ("add", "create", "insert") and t.kind == "word":
                self.next()
                self.command(t)
            elif t.value in ("include", "delete", "replace", "flush", "destroy", "reset", "rename"):
                raise self.error(t, f"not modelled: '{t.value}' commands (give the output of nft list ruleset)")
            else:
                raise self.unexpected(t, "table")
        self.resolve()
        return self.ruleset

    def table_ref(self, start: Tok, what: str = "table name") -> NftTable:
        """`[family] name` of a table; created when new (nft's add table)."""
        fam_tok = self.word("table family or name")
        family = "ip"
        if fam_tok.value in ("ip", "inet", "ip6", "arp", "bridge", "netdev") and self.peek().kind in ("word", "string"):
            family = fam_tok.value
            name_tok = self.word(what)
        else:
            name_tok = fam_tok
        if family in UNSUPPORTED_FAMILIES:
            raise self.error(fam_tok, f"not modelled: {UNSUPPORTED_FAMILIES[family]} (table {name_tok.value})")
        table = next((t for t in self.ruleset.tables if t.family == family and t.name == name_tok.value), None)
        if table is None:
            table = NftTable(family, name_tok.value, len(self.ruleset.tables) + 1, start.line)
            self.ruleset.tables.append(table)
        self.table = table
        return table

    def parse_table(self, start: Tok) -> None:
        table = self.table_ref(start)
        if self.peek().value != "{":
            return                                  # `add table ip t`
        self.expect("{")
        rules: list[tuple[NftChain, list[Tok]]] = []
        while True:
            self.skip_nl()
            t = self.next()
            if t.value == "}":
                break
            if t.value == "chain":
                rules.extend(self.parse_chain(t))
            elif t.value in ("set", "map"):
                self.parse_set(t, t.value == "map")
            elif t.value == "flags":
                self.word("table flag")
                while self.peek().value == ",":
                    self.next()
                    self.word("table flag")
            elif t.value == "comment":
                self.word("comment")
            elif (t.value in ("counter", "quota") and self.peek().kind in ("word", "string")
                  and self.peek(1).value == "{") or (t.value == "ct" and self.peek().value in
                                                     ("helper", "timeout", "expectation")):
                # a stateful object's definition does nothing to packets until a rule refers to it
                # (`ct helper set`, `counter name`, `quota name`: refused by name there)
                kind = self.next().value if t.value == "ct" else t.value
                name = self.word("object name")
                self.braced()
                table.objects.setdefault(f"{kind} {name.value}", 0)
            elif t.value in ("counter", "quota", "limit", "ct", "flowtable", "secmark", "synproxy", "tunnel"):
                raise self.error(t, f"not modelled: named {t.value} objects")
            else:
                raise self.unexpected(t, "chain, set or map")
        self.finish_block(table, rules)

    def finish_block(self, table: NftTable, rules: list[tuple[NftChain, list[Tok]]]) -> None:
        """Handles: the chains, then stateful objects, then the named sets and maps, then the rules
        (nft 1.0's batch order, checked with nft -a list ruleset on 6.x)."""
        for chain in table.chains.values():
            if not chain.handle:
                chain.handle = self.given_handle(table, chain.line) or table.alloc_handle()
        for key, handle in table.objects.items():      # then stateful objects, then sets (6.x, nft 1.0.6)
            if not handle:
                table.objects[key] = table.alloc_handle()
        for s in table.sets.values():
            if not s.handle:
                s.handle = table.alloc_handle()
        for chain, toks in rules:
            self.compile_rule(chain, toks)

    def given_handle(self, table: NftTable, line: int) -> int:
        """A handle the listing states (`# handle N`), which the table's generator then passes."""
        h = self.handles.pop(line, 0)
        if h:
            table.hgen = max(table.hgen, h)
        return h

    def command(self, verb: Tok) -> None:
        """nft's command forms (what iptables-restore-translate writes): add|create table/chain/set/map/
        element/rule, insert rule."""
        obj = self.word("table, chain, set, map, element or rule")
        if obj.value == "table" and verb.value != "insert":
            self.parse_table(obj)
            return
        if obj.value not in ("chain", "set", "map", "element", "rule") or (verb.value == "insert" and
                                                                          obj.value != "rule"):
            raise self.error(obj, f"not modelled: '{verb.value} {obj.value}' commands")
        table = self.table_ref(obj)
        if obj.value == "chain":
            name = self.peek()
            if self.peek(1).value == "{":
                rules = self.parse_chain(obj)
            else:
                self.word("chain name")
                table.chains.setdefault(name.value, NftChain(table, name.value, 0, obj.line))
                rules = []
            self.finish_block(table, rules)
        elif obj.value in ("set", "map"):
            self.parse_set(obj, obj.value == "map")
            self.finish_block(table, [])
        elif obj.value == "element":
            name = self.word("set name")
            s = table.sets.get(name.value)
            if s is None:
                raise self.error(name, f"Could not process rule: No such file or directory (set '{name.value}')")
            at = self.peek()
            toks = self.braced()
            types = [TYPES[k] for k in s.key_types]
            data = None if s.data_type in (None, "verdict") else [TYPES[k] for k in s.data_type.split(" . ")]
            s.elements.extend(self.elements(toks, at, types, data, False, verdict_map=s.data_type == "verdict"))
        else:
            name = self.word("chain name")
            chain = table.chains.get(name.value)
            if chain is None:
                raise self.error(name, f"Could not process rule: No such file or directory (chain '{name.value}')")
            if self.peek().value in ("position", "handle", "index"):
                raise self.error(self.peek(), f"not modelled: rule {self.peek().value}")
            toks = self.rule_tokens()
            if not toks:
                raise self.unexpected(self.peek(), "rule")
            self.compile_rule(chain, toks, first=verb.value == "insert")

    def parse_chain(self, start: Tok) -> list[tuple[NftChain, list[Tok]]]:
        table = self.table
        name = self.word("chain name")
        chain = table.chains.get(name.value)
        if chain is None:
            chain = table.chains[name.value] = NftChain(table, name.value, 0, start.line)
        self.expect("{")
        rules: list[tuple[NftChain, list[Tok]]] = []
        while True:
            self.skip_nl()
            t = self.peek()
            if t.value == "}" and t.kind == "punct":
                self.next()
                break
            if t.kind == "eof":
                raise self.unexpected(t, "'}'")
            if t.value == "type" and t.kind == "word":
                self.next()
                self.parse_base(chain, t)
            elif t.value == "policy" and t.kind == "word":
                self.next()
                p = self.word("accept or drop")
                if p.value not in ("accept", "drop"):
                    raise self.error(p, f"invalid policy: {p.value} (accept or drop)")
                chain.policy = NF_ACCEPT if p.value == "accept" else NF_DROP
            elif t.value == "comment" and t.kind == "word" and self.peek(1).kind == "string":
                self.next()
                self.next()
            elif t.value == "devices" and t.kind == "word":
                raise self.error(t, "not modelled: chain devices (netdev family)")
            else:
                toks = self.rule_tokens()
                if toks:
                    rules.append((chain, toks))
            if not self.at_end_of_stmt() and self.toks[self.i - 1].value != ";":
                raise self.unexpected(self.peek(), "newline or semicolon")
        return rules

    def rule_tokens(self) -> list[Tok]:
        """The tokens of one rule (up to a newline or ';' outside braces)."""
        out: list[Tok] = []
        depth = 0
        while True:
            t = self.peek()
            if t.kind == "eof":
                break
            if depth == 0 and (t.kind == "nl" or t.value == ";" or (t.value == "}" and t.kind == "punct")):
                break
            if t.kind == "punct" and t.value == "{":
                depth += 1
            elif t.kind == "punct" and t.value == "}":
                depth -= 1
            if t.kind != "nl" or depth > 0:          # newlines inside braces separate an anonymous chain's rules
                out.append(t)
            self.next()
        return out

    def parse_base(self, chain: NftChain, start: Tok) -> None:
        ctype = self.word("chain type")
        if ctype.value not in CHAIN_TYPE_HOOKS:
            raise self.error(ctype, f"Could not process rule: No such file or directory (chain type {ctype.value!r})")
        self.expect("hook")
        hook = self.word("hook name")
        if hook.value == "ingress" or hook.value == "egress":
            raise self.error(hook, f"not modelled: hook {hook.value}")
        if hook.value not in HOOKS:
            raise self.error(hook, f"unknown chain hook {hook.value}")
        if HOOKS[hook.value] not in CHAIN_TYPE_HOOKS[ctype.value]:
            raise self.error(hook, f"Could not process rule: Operation not supported (a {ctype.value} chain "
                                   f"cannot use hook {hook.value})")
        if self.peek().value == "device":
            raise self.error(self.peek(), "not modelled: chain device")
        self.expect("priority")
        ptok = self.word("priority")
        text = ptok.value
        if ptok.value in PRIORITIES:
            prio = PRIORITIES[ptok.value]
            if self.peek().value in ("+", "-") or (self.peek().kind == "word" and self.peek().value[:1] in "+-"):
                sign = self.next()
                num = sign.value[1:] if len(sign.value) > 1 else self.word("number").value
                if not num.isdigit():
                    raise self.error(sign, f"invalid priority offset {num!r}")
                prio += int(num) if sign.value[0] == "+" else -int(num)
                text += f" {sign.value[0]} {num}"
        else:
            try:
                prio = int(ptok.value, 0) if ptok.value.isascii() else None
            except ValueError:
                prio = None
            if prio is None or not -2**31 <= prio < 2**31:
                raise self.error(ptok, f"'{ptok.value}' is not a valid priority")
        if ctype.value == "nat" and prio <= NF_IP_PRI_CONNTRACK:
            raise self.error(ptok, "Could not process rule: Operation not supported (nat chain priority must be "
                                   "above conntrack's -200)")
        chain.type, chain.hook, chain.priority, chain.prio_text = ctype.value, HOOKS[hook.value], prio, text
        if self.peek().value == ";":
            self.next()
        if self.peek().value == "policy":
            self.next()
            p = self.word("accept or drop")
            if p.value not in ("accept", "drop"):
                raise self.error(p, f"invalid policy: {p.value} (accept or drop)")
            chain.policy = NF_ACCEPT if p.value == "accept" else NF_DROP

    # ---- sets and maps --------------------------------------------------------------------------
    def parse_set(self, start: Tok, is_map: bool) -> None:
        table = self.table
        name = self.word("set name")
        s = NftSet(name.value, 0, start.line, ())
        self.expect("{")
        elems_toks: list[Tok] | None = None
        elems_at: Tok | None = None
        key_types: list[Datatype] = []
        data_types: list[Datatype] | None = None
        interval_data = False
        while True:
            self.skip_nl()
            t = self.next()
            if t.value == "}":
                break
            if t.value in ("type", "typeof"):
                key_types, data_types, interval_data = self.parse_set_type(t, is_map)
            elif t.value == "flags":
                flags = {self.word("set flag").value}
                while self.peek().value == ",":
                    self.next()
                    flags.add(self.word("set flag").value)
                s.flags = frozenset(flags)
            elif t.value == "timeout":
                s.timeout = self.duration(self.word("timeout"))
            elif t.value in ("gc-interval", "size", "policy"):
                self.word(t.value)
            elif t.value == "elements":
                self.expect("=")
                elems_at = self.peek()
                elems_toks = self.braced()
            elif t.value in ("auto-merge", "counter"):
                pass
            elif t.value == "comment":
                self.word("comment")
            else:
                raise self.unexpected(t, "type, flags or elements")
            if not self.at_end_of_stmt():
                raise self.unexpected(self.peek(), "newline or semicolon")
        if not key_types:
            raise self.error(name, f"set '{name.value}' needs a type")
        s.key_types = tuple(t.name for t in key_types)
        if is_map:
            s.data_type = " . ".join(t.name for t in data_types) if data_types else "verdict"
        if elems_toks is not None:
            s.elements = self.elements(elems_toks, elems_at, key_types, data_types if is_map else None,
                                       interval_data, verdict_map=is_map and data_types is None)
        table.sets[name.value] = s

    def parse_set_type(self, t: Tok, is_map: bool):
        def one_type() -> Datatype:
            w = self.word("data type")
            if w.value == "interval":
                w = self.word("data type")
            if w.value not in TYPES:
                raise self.error(w, f"not modelled: set data type {w.value}")
            return TYPES[w.value]

        def types_until_colon(typeof: bool) -> list[Datatype]:
            out: list[Datatype] = []
            while True:
                if typeof:
                    start = self.i
                    while not self.at_end_of_stmt() and self.peek().value not in (":", "."):
                        self.next()
                    lhs = self.parse_lhs_tokens(self.toks[start:self.i])
                    out.extend(lhs.types)
                else:
                    out.append(one_type())
                if self.peek().value == ".":
                    self.next()
                    continue
                return out
        typeof = t.value == "typeof"
        keys = types_until_colon(typeof)
        data = None
        interval = False
        if is_map:
            self.expect(":")
            if self.peek().value == "interval":
                self.next()
                interval = True
            if self.peek().value == "verdict":
                self.next()
                data = None
            else:
                data = types_until_colon(typeof)
        return keys, data, interval

    def duration(self, tok: Tok) -> float:
        total = 0.0
        for num, unit in re.findall(r"(\d+)(ms|d|h|m|s)", tok.value):
            total += int(num) * {"ms": 0.001, "d": 86400, "h": 3600, "m": 60, "s": 1}[unit]
        if not total and tok.value != "0":
            raise self.error(tok, f"wrong time format {tok.value!r}")
        return total

    def braced(self) -> list[Tok]:
        """The tokens between a '{' and its '}' (newlines dropped)."""
        self.expect("{")
        out: list[Tok] = []
        depth = 1
        while True:
            t = self.next()
            if t.kind == "eof":
                raise self.unexpected(t, "'}'")
            if t.kind == "punct" and t.value == "{":
                depth += 1
            elif t.kind == "punct" and t.value == "}":
                depth -= 1
                if depth == 0:
                    return out
            if t.kind != "nl":
                out.append(t)

    def elements(self, toks: list[Tok], at: Tok | None, key_types: list[Datatype],
                 data_types: list[Datatype] | None, interval_data: bool, verdict_map: bool = False) -> list[SetElem]:
        """`a, b . c, d-e : data` element lists (anonymous or named)."""
        items: list[list[Tok]] = [[]]
        for t in toks:
            if t.kind == "punct" and t.value == ",":
                items.append([])
            else:
                items[-1].append(t)
        out: list[SetElem] = []
        is_map = data_types is not None or verdict_map
        for item in items:
            if not item:
                continue
            key_toks, data_toks = item, []
            if is_map:
                colon = next((k for k, t in enumerate(item) if t.kind == "punct" and t.value == ":"), None)
                if colon is None:
                    raise self.error(item[0], "map element needs ': data'")
                key_toks, data_toks = item[:colon], item[colon + 1:]
            timeout = 0.0
            for k, t in enumerate(key_toks):
                if t.value in ("timeout", "expires", "comment", "counter") and t.kind == "word":
                    if t.value == "timeout" and k + 1 < len(key_toks):
                        timeout = self.duration(key_toks[k + 1])
                    key_toks = key_toks[:k]
                    break
            key = tuple(self.field_values(key_toks, key_types))
            data: Any = None
            if verdict_map or (is_map and data_types is None):
                data = self.verdict_of(data_toks)
            elif is_map:
                data = tuple(self.field_values(data_toks, data_types))
            out.append(SetElem(key, data, timeout))
        return out

    def field_values(self, toks: list[Tok], types: list[Datatype]) -> list[Any]:
        """`v . v . v`: per field an exact value, range or prefix as (lo, hi), or a name."""
        fields: list[list[Tok]] = [[]]
        for t in toks:
            if t.kind == "punct" and t.value == ".":
                fields.append([])
            else:
                fields[-1].append(t)
        if len(fields) != len(types) or any(not f for f in fields):
            where = toks[0] if toks else self.peek()
            raise self.error(where, f"element has {len(fields)} field(s), the set's type has {len(types)}")
        return [self.one_value(f, dt) for f, dt in zip(fields, types)]

    def one_value(self, toks: list[Tok], dt: Datatype) -> Any:
        tok = toks[0]
        if tok.value == "@" or tok.value == "$":
            raise self.error(tok, "not modelled: variables and set references inside a set")
        text = "".join(t.value for t in toks)
        try:
            if dt.string:
                return text
            if dt.family == 6:
                return (0, -1)          # never compared with an IPv4 packet's value
            if "/" in text and dt.name == "ipv4_addr":
                addr, _, plen = text.partition("/")
                if not plen.isdigit():
                    raise NftTypeError(f"Invalid prefix {text}")
                return dt.prefix(addr, int(plen))
            try:
                v = dt.parse(text)
                return (v, v)
            except NftTypeError:
                if "-" not in text:
                    raise
                for k in range(1, len(text)):
                    if text[k] == "-":
                        try:
                            lo, hi = dt.parse(text[:k]), dt.parse(text[k + 1:])
                        except NftTypeError:
                            continue
                        if hi < lo:
                            raise NftTypeError(f"Range has zero or negative size: {text}") from None
                        return (lo, hi)
                raise
        except NftTypeError as e:
            raise self.error(tok, f"{e}") from None

    def verdict_of(self, toks: list[Tok]) -> tuple[int, str]:
        if not toks:
            raise self.error(self.peek(), "map element needs a verdict")
        w = toks[0].value
        if w in VERDICT_WORDS:
            return VERDICT_WORDS[w], ""
        if w in ("jump", "goto") and len(toks) == 2:
            return (NFT_JUMP if w == "jump" else NFT_GOTO), toks[1].value
        raise self.error(toks[0], f"not modelled: verdict {' '.join(t.value for t in toks)}")

    # ---- rules --------------------------------------------------------------------------------
    def compile_rule(self, chain: NftChain, toks: list[Tok], first: bool = False) -> None:
        saved = self.toks, self.i
        self.toks = toks + [Tok("eof", "", toks[-1].line, toks[-1].end + 1, toks[-1].end + 1)]
        self.i = 0
        rule = NftRule(chain.name, 0, toks[0].line, self.rule_text(toks), [])
        rule.num = len(chain.rules) + 1
        outer = getattr(self, "cur_rule", None), getattr(self, "cur_chain", None), getattr(self, "anon", None), \
            getattr(self, "pending_anon", None)
        self.cur_rule = rule
        self.cur_chain = chain
        self.anon: list[NftSet] = []
        self.pending_anon: list[tuple[NftChain, list[list[Tok]]]] = []
        try:
            while self.peek().kind != "eof":
                rule.exprs.extend(self.statement())
        finally:
            self.toks, self.i = saved
        pending = self.pending_anon
        for s in self.anon:
            s.handle = chain.table.alloc_handle()
        for anon_chain, rules in pending:       # a binding chain and its rules come before the rule (6.x)
            anon_chain.handle = chain.table.alloc_handle()
            for toks2 in rules:
                self.compile_rule(anon_chain, toks2)
        rule.handle = self.given_handle(chain.table, toks[-1].line) or chain.table.alloc_handle()
        if first:
            chain.rules.insert(0, rule)
            for k, r in enumerate(chain.rules):
                r.num = k + 1
        else:
            chain.rules.append(rule)
        self.cur_rule, self.cur_chain, self.anon, self.pending_anon = outer

    def rule_text(self, toks: list[Tok]) -> str:
        text = self.text[toks[0].pos:toks[-1].stop]
        text = re.sub(r"\s+", " ", text.replace("\\\n", " "))
        return re.sub(r"\bcounter packets \d+ bytes \d+", "counter", text).strip()

    def statement(self) -> list[Expr]:
        t = self.peek()
        v = t.value
        if t.kind == "string":
            raise self.unexpected(t)
        if v in VERDICT_WORDS:
            self.next()
            return [self.verdict_expr(VERDICT_WORDS[v], "", v)]
        if v in ("jump", "goto"):
            self.next()
            if self.peek().value == "{" and self.peek().kind == "punct":
                target = self.anonymous_chain(self.peek())
            else:
                target = self.word("chain name")
            self.targets.append((self.cur_rule, target.value, target))
            return [self.verdict_expr(NFT_JUMP if v == "jump" else NFT_GOTO, target.value, f"{v} {target.value}")]
        if v == "counter":
            return [self.counter_stmt()]
        if v == "comment":
            self.next()
            self.word("comment")
            return []
        if v == "log":
            return [self.log_stmt()]
        if v == "limit":
            return [self.limit_stmt()]
        if v == "reject":
            return self.reject_stmt()
        if v in ("snat", "dnat", "masquerade", "redirect"):
            return self.nat_stmt()
        if v == "notrack":
            self.next()
            return [Expr("notrack", "notrack", nft_ct.nft_notrack_eval)]
        if v in ("meta", "mark") and self._is_set_stmt():
            return [self.meta_set()]
        if v == "ct" and self._is_set_stmt():
            return [self.ct_set()]
        if v in UNSUPPORTED_STATEMENTS and UNSUPPORTED_STATEMENTS[v]:
            raise self.error(t, f"not modelled: {UNSUPPORTED_STATEMENTS[v]}")
        if v == "tcp" and self.peek(1).value == "option":
            raise self.error(self.peek(1), "not modelled: tcp option")
        return self.match()

    def anonymous_chain(self, at: Tok) -> Tok:
        """`jump { ... }` / `goto { ... }`: a binding chain holding the rules between the braces (nft lists
        it inline; its rules get handles after the rule that binds it)."""
        self.next()
        body: list[list[Tok]] = [[]]
        depth = 1
        while True:
            t = self.next()
            if t.kind == "eof":
                raise self.unexpected(t, "'}'")
            if t.kind == "punct" and t.value == "{":
                depth += 1
            elif t.kind == "punct" and t.value == "}":
                depth -= 1
                if depth == 0:
                    break
            if depth == 1 and (t.kind == "nl" or t.value == ";"):
                body.append([])
            else:
                body[-1].append(t)
        table = self.cur_chain.table
        n = sum(1 for c in table.chains if c.startswith("__chain"))
        name = f"__chain{n}"
        chain = table.chains[name] = NftChain(table, name, 0, at.line)
        self.pending_anon.append((chain, [b for b in body if b]))
        return Tok("word", name, at.line, at.col, at.end, at.pos, at.stop)

    def _is_set_stmt(self) -> bool:
        k = self.i
        while k < len(self.toks) and self.toks[k].kind == "word" and k - self.i < 4:
            if self.toks[k].value == "set":
                return True
            k += 1
        return False

    def verdict_expr(self, code: int, target: str, text: str) -> Expr:
        table = self.cur_chain.table

        def fn(pkt, code=code, target=target) -> int:
            if target:
                pkt.chain = table.chains[target]
            return code
        return Expr("immediate", text, fn, target=target)

    def counter_stmt(self) -> Expr:
        self.next()
        c = Counter()
        if self.peek().value == "packets":
            self.next()
            self.word("number")
            self.expect("bytes")
            self.word("number")
        elif self.peek().value == "name":
            raise self.error(self.peek(), "not modelled: named counters")
        from pathtrace.net.netfilter.nft_counter import nft_counter_eval
        e = Expr("counter", "counter", nft_counter_eval(c))
        e.counter = c
        return e

    def log_stmt(self) -> Expr:
        from pathtrace.net.netfilter.nft_log import nft_log_eval
        self.next()
        prefix, level, group = "", 4, None
        while not self.at_end_of_stmt():
            t = self.peek()
            if t.value == "prefix":
                self.next()
                prefix = self.word("prefix").value
            elif t.value == "level":
                self.next()
                lv = self.word("level")
                if lv.value not in LOG_LEVELS:
                    raise self.error(lv, f"invalid log level {lv.value}")
                level = LOG_LEVELS[lv.value]
            elif t.value == "group":
                self.next()
                g = self.word("group")
                group = int(g.value) if g.value.isdigit() else 0
            elif t.value in ("snaplen", "queue-threshold"):
                self.next()
                self.word(t.value)
            elif t.value == "flags":
                self.next()
                self.word("log flag")
                while self.peek().value in (",", "options", "sequence", "uid", "skuid", "ether", "all"):
                    self.next()
            else:
                break
        return Expr("log", "log", nft_log_eval(prefix, level, group))

    def limit_stmt(self) -> Expr:
        from pathtrace.net.netfilter.nft_limit import BYTE_UNITS, UNITS, nft_limit_eval
        start = self.next()
        if self.peek().value == "name":
            raise self.error(self.peek(), "not modelled: named limits")
        self.expect("rate")
        invert = False
        if self.peek().value in ("over", "until"):
            invert = self.next().value == "over"
        rate_tok = self.word("rate")
        m = re.fullmatch(r"(\d+)/(second|minute|hour|day|week)", rate_tok.value)
        pkts = True
        if m:
            rate, unit = int(m.group(1)), UNITS[m.group(2)]
        elif rate_tok.value.isdigit():
            per = self.word("bytes/unit")
            m2 = re.fullmatch(r"(bytes|kbytes|mbytes)/(second|minute|hour|day|week)", per.value)
            if not m2:
                raise self.error(per, f"wrong rate format {per.value!r}")
            rate, unit, pkts = int(rate_tok.value) * BYTE_UNITS[m2.group(1)], UNITS[m2.group(2)], False
        else:
            raise self.error(rate_tok, f"wrong rate format {rate_tok.value!r}")
        if rate == 0:
            raise self.error(rate_tok, "Could not process rule: Numerical result out of range (rate 0)")
        burst = 5 if pkts else 0
        if self.peek().value == "burst":
            self.next()
            b = self.word("burst")
            if not b.value.isdigit():
                raise self.error(b, f"wrong burst {b.value!r}")
            burst = int(b.value)
            unit_tok = self.peek()
            if unit_tok.value in ("packets", "bytes", "kbytes", "mbytes"):
                self.next()
                if unit_tok.value != "packets":
                    burst *= BYTE_UNITS[unit_tok.value]
        e = Expr("limit", self.src(start), nft_limit_eval(rate, unit, burst, pkts, invert), volatile="nft limit")
        e.why = lambda pkt: f"limit rate {'over ' if invert else ''}{rate_tok.value}: " + \
            ("under the rate" if invert else "over the rate")
        return e

    def src(self, start: Tok) -> str:
        end = self.toks[self.i - 1]
        return self.text[start.pos:end.stop] if end.stop else start.value

    def reject_stmt(self) -> list[Expr]:
        from pathtrace.net.netfilter.nft_reject import (
            NFT_REJECT_ICMP_UNREACH, NFT_REJECT_ICMPX_UNREACH, NFT_REJECT_TCP_RST, nft_reject_eval,
        )
        start = self.next()
        family = self.cur_chain.table.family
        kind, code = (NFT_REJECT_ICMPX_UNREACH, 1) if family == "inet" else (NFT_REJECT_ICMP_UNREACH, 3)
        deps: list[Expr] = []
        if self.peek().value == "with":
            self.next()
            w = self.word("icmp, icmpx or tcp")
            if w.value == "tcp":
                self.expect("reset")
                kind, code = NFT_REJECT_TCP_RST, 0
                deps.append(self.l4_dep("tcp", 6))
            elif w.value in ("icmp", "icmpx"):
                if self.peek().value == "type":
                    self.next()
                c = self.word("code")
                codes = ICMP_CODES if w.value == "icmp" else ICMPX_CODES
                if c.value in codes:
                    code = codes[c.value]
                elif c.value.isdigit() and int(c.value) < 256:
                    code = int(c.value)
                else:
                    raise self.error(c, f"Could not parse {w.value} code {c.value!r}")
                if w.value == "icmpx" and family != "inet":
                    raise self.error(c, "abstracted ICMP unreachable not supported")
                kind = NFT_REJECT_ICMP_UNREACH if w.value == "icmp" else NFT_REJECT_ICMPX_UNREACH
            elif w.value == "icmpv6":
                raise self.error(w, "not modelled: reject with icmpv6 (IPv6)")
            else:
                raise self.unexpected(w, "icmp, icmpx or tcp")
        return deps + [Expr("reject", self.src(start), nft_reject_eval(kind, code, family), hooks=(0, 1, 2, 3))]

    def l4_dep(self, name: str, proto: int) -> Expr:
        load = nft_meta.nft_meta_load("l4proto")

        def fn(pkt) -> int:
            return NFT_CONTINUE if load(pkt) == proto else NFT_BREAK

        def why(pkt) -> str:
            v = load(pkt)
            return f"meta l4proto {name} (nft's dependency): packet has {_fmt(TYPES['inet_proto'], v)}"
        return Expr("meta+cmp", f"meta l4proto {name}", fn, why)

    def value_source(self, dtype: Datatype, what: str) -> tuple[Callable[[Any], Any], str]:
        """A statement's argument: a constant or `EXPR map { ... }` / `EXPR map @m` (the map's data)."""
        start = self.peek()
        if start.kind in ("word", "string") and self.peek(1).value != "." and self.peek(1).value != "map" \
                and self._is_constant(start):
            self.next()
            try:
                v = dtype.parse(start.value)
            except NftTypeError as e:
                raise self.error(start, str(e)) from None
            return (lambda pkt: v), start.value
        lhs = self.lhs()
        self.expect("map")
        s = self.map_ref(lhs, [dtype])
        return self.map_data(lhs, s), f"{lhs.text} map"

    def _is_constant(self, tok: Tok) -> bool:
        return tok.kind == "string" or tok.value[:1].isdigit() or tok.value not in (
            "ip", "tcp", "udp", "th", "meta", "ct", "iifname", "oifname", "iif", "oif", "mark", "icmp", "fib")

    def map_ref(self, lhs: Lhs, data_types: list[Datatype] | None, interval_data: bool = False) -> NftSet:
        t = self.peek()
        if t.value == "@":
            self.next()
            name = self.word("map name")
            s = self.cur_chain.table.sets.get(name.value)
            if s is None:
                raise self.error(name, f"No such file or directory; did you mean map '{name.value}'? (no such map)")
            return s
        at = t
        toks = self.braced()
        s = NftSet(f"__map{len(self.anon)}", 0, at.line, tuple(d.name for d in lhs.types), "data", anonymous=True)
        s.elements = self.elements(toks, at, lhs.types, data_types, interval_data, verdict_map=data_types is None)
        self.anon.append(s)
        return s

    def map_data(self, lhs: Lhs, s: NftSet) -> Callable[[Any], Any]:
        load = lhs.load

        def data(pkt) -> Any:
            v = load(pkt)
            if v is None:
                return None
            e = nft_set_lookup(s, v)
            return None if e is None else e.data
        return data

    def meta_set(self) -> Expr:
        start = self.next()
        if start.value == "meta":
            key = self.word("meta key")
        else:
            key = start
        if key.value != "mark":
            raise self.error(key, f"not modelled: meta {key.value} set")
        self.expect("set")
        src, text = self.value_source(TYPES["mark"], "mark")
        src = self._first(src)
        return Expr("meta_set", self.src(start), nft_meta.nft_meta_set_mark(src))

    def ct_set(self) -> Expr:
        start = self.next()
        key = self.word("ct key")
        if key.value != "mark":
            raise self.error(key, f"not modelled: ct {key.value} set")
        self.expect("set")
        src, _ = self.value_source(TYPES["mark"], "mark")
        return Expr("ct_set", self.src(start), nft_ct.nft_ct_set_mark(self._first(src)), conntrack=True)

    @staticmethod
    def _first(src: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """A map's data is a tuple of fields; a single-field value is its first."""
        def f(pkt):
            v = src(pkt)
            if isinstance(v, tuple):
                v = v[0]
                if isinstance(v, tuple):
                    v = v[0]
            return v
        return f

    def nat_stmt(self) -> list[Expr]:
        from pathtrace.net.netfilter import nft_nat
        start = self.next()
        kind = start.value
        deps: list[Expr] = []
        flags = 0
        if kind in ("snat", "dnat"):
            if self.peek().value == "ip" and self.peek(1).value in ("to", "addr"):
                self.next()
            elif self.peek().value == "ip6":
                raise self.error(self.peek(), "not modelled: IPv6 nat")
            if self.peek().value == "to":
                self.next()
            to = self.nat_target(deps)
            hooks = (0, 3) if kind == "dnat" else (1, 4)
        else:
            to = None
            ports: tuple = (None, None, None, None)
            if self.peek().value == "to":
                self.next()
                pt = self.word("port")
                text = pt.value.lstrip(":")
                if pt.value == ":" or not text:
                    text = self.word("port").value
                lo, _, hi = text.partition("-")
                if not lo.isdigit() or (hi and not hi.isdigit()):
                    raise self.error(pt, f"not modelled: {kind} to {pt.value}")
                ports = (None, None, int(lo), int(hi or lo))
                deps.extend(self._port_dep(start))
            hooks = (4,) if kind == "masquerade" else (0, 3)
        while self.peek().value in nft_nat.FLAG_WORDS or self.peek().value == ",":
            w = self.next()
            flags |= nft_nat.FLAG_WORDS.get(w.value, 0)
        text = self.src(start)
        if kind in ("snat", "dnat"):
            fn = nft_nat.nft_nat_eval(kind, to, flags)
        elif kind == "masquerade":
            fn = nft_nat.nft_masq_eval(ports, flags)
        else:
            fn = nft_nat.nft_redir_eval(ports, flags)
        return deps + [Expr("nat", text, fn, conntrack=True, nat=True, hooks=hooks, chain_type="nat")]

    def _port_dep(self, at: Tok) -> list[Expr]:
        """nft refuses a port without a transport protocol in the rule ('transport protocol mapping is only
        valid after transport protocol match')."""
        if not any(e.text.startswith(("meta l4proto tcp", "meta l4proto udp")) or e.name == "payload+cmp"
                   and e.text.startswith(("tcp ", "udp ")) for e in self.cur_rule.exprs):
            raise self.error(at, "transport protocol mapping is only valid after transport protocol match")
        return []

    def nat_target(self, deps: list[Expr]) -> Callable[[Any], Any]:
        t = self.peek()
        if t.kind == "word" and self._is_constant(t) and self.peek(1).value not in (".", "map"):
            self.next()
            addr, _, port = t.value.rpartition(":") if ":" in t.value else (t.value, "", "")
            lo = hi = None
            if addr:
                try:
                    a1, dash, a2 = addr.partition("-")
                    lo = TYPES["ipv4_addr"].parse(a1)
                    hi = TYPES["ipv4_addr"].parse(a2) if dash else lo
                except NftTypeError as e:
                    raise self.error(t, str(e)) from None
            pmin = pmax = None
            if port:
                p1, _, p2 = port.partition("-")
                if not p1.isdigit() or (p2 and not p2.isdigit()):
                    raise self.error(t, f"invalid port {port!r}")
                pmin, pmax = int(p1), int(p2 or p1)
                self._port_dep(t)
            target = (lo, hi, pmin, pmax)
            return lambda pkt: target
        lhs = self.lhs()
        deps.extend(lhs.deps)
        self.expect("map")
        # data: an address (or range/prefix), optionally `. port`
        s = self.map_ref(lhs, [TYPES["ipv4_addr"], TYPES["inet_service"]] if self._map_has_port() else
                         [TYPES["ipv4_addr"]])
        get = self.map_data(lhs, s)

        def to(pkt) -> Any:
            d = get(pkt)
            if d is None:
                return None
            lo, hi = d[0]
            if len(d) > 1:
                return (lo, hi, d[1][0], d[1][1])
            return (lo, hi, None, None)
        return to

    def _map_has_port(self) -> bool:
        """Whether the map's data (after ':') is `addr . port`."""
        t = self.peek()
        if t.value == "@":
            s = self.cur_chain.table.sets.get(self.peek(1).value)
            return bool(s and s.data_type and "." in s.data_type)
        depth = 0
        seen_colon = False
        for tok in self.toks[self.i:]:
            if tok.value == "{":
                depth += 1
            elif tok.value == "}":
                depth -= 1
                if depth == 0:
                    return False
            elif tok.value == ":" and depth == 1:
                seen_colon = True
            elif tok.value == "," and depth == 1:
                seen_colon = False
            elif tok.value == "." and seen_colon:
                return True
        return False

    # ---- matches --------------------------------------------------------------------------------
    def lhs(self) -> Lhs:
        """A value expression, or a concatenation `a . b . c`."""
        parts = [self.primary()]
        while self.peek().value == "." and self.peek().kind == "punct":
            self.next()
            parts.append(self.primary())
        if len(parts) == 1:
            return parts[0]
        loads = [p.load for p in parts]

        def load(pkt) -> Any:
            out = []
            for f in loads:
                v = f(pkt)
                if v is None:
                    return None
                out.append(v)
            return tuple(out)
        never = next((p.never for p in parts if p.never), "")
        return Lhs(load, [t for p in parts for t in p.types], " . ".join(p.text for p in parts),
                   [d for p in parts for d in p.deps], any(p.conntrack for p in parts), never)

    def parse_lhs_tokens(self, toks: list[Tok]) -> Lhs:
        saved = self.toks, self.i
        self.toks = toks + [Tok("eof", "", toks[-1].line if toks else 0, 0, 0)]
        self.i = 0
        try:
            return self.lhs()
        finally:
            self.toks, self.i = saved

    def primary(self) -> Lhs:
        t = self.next()
        v = t.value
        if v in ("ip", "tcp", "udp", "icmp", "th", "udplite"):
            f = self.word(f"{v} field")
            if v == "tcp" and f.value == "option":
                raise self.error(f, "not modelled: tcp option")
            if f.value not in nft_payload.FIELDS[v]:
                raise self.error(f, f"not modelled: {v} {f.value}")
            base, _, _, tname = nft_payload.FIELDS[v][f.value]
            deps = [self.l4_dep(v, nft_payload.L4PROTO[v])] if v in nft_payload.L4PROTO else []
            return Lhs(nft_payload.nft_payload_load(v, f.value), [TYPES[tname]], f"{v} {f.value}", deps)
        if v in nft_payload.IPV6_FIELDS:
            f = self.word(f"{v} field")
            if f.value not in nft_payload.IPV6_FIELDS[v]:
                raise self.error(f, f"not modelled: {v} {f.value}")
            return Lhs(lambda pkt: None, [TYPES[nft_payload.IPV6_FIELDS[v][f.value]]], f"{v} {f.value}",
                       never=f"{v} {f.value}: the packet is IPv4 (meta nfproto ipv6 does not match)")
        if v == "meta" or (v in nft_meta.BARE and t.kind == "word"):
            key = self.word("meta key") if v == "meta" else t
            if key.value not in nft_meta.KEYS:
                raise self.error(key, f"not modelled: meta {key.value}")
            text = f"meta {key.value}" if v == "meta" else key.value
            return Lhs(nft_meta.nft_meta_load(key.value), [TYPES[nft_meta.KEYS[key.value]]], text)
        if v == "ct":
            return self.ct_lhs()
        if v == "fib":
            return self.fib_lhs(t)
        if v in UNSUPPORTED_STATEMENTS and UNSUPPORTED_STATEMENTS[v]:
            raise self.error(t, f"not modelled: {UNSUPPORTED_STATEMENTS[v]}")
        raise self.unexpected(t)

    def ct_lhs(self) -> Lhs:
        key = self.word("ct key")
        direction = None
        if key.value in ("original", "reply"):
            direction = 0 if key.value == "original" else 1
            key = self.word("ct key")
            if key.value == "ip":
                key = self.word("ct key")
            elif key.value == "ip6":
                raise self.error(key, "not modelled: ct ip6 addresses")
        if key.value in nft_ct.KEYS and direction is None:
            return Lhs(nft_ct.nft_ct_load(key.value), [TYPES[nft_ct.KEYS[key.value]]], f"ct {key.value}",
                       conntrack=True)
        if key.value in nft_ct.DIR_KEYS:
            d = {None: "", 0: "original ", 1: "reply "}[direction]
            # nft types proto-src/dst by the transport protocol the rule has matched so far
            l4 = key.value.startswith("proto-") and not any(
                e.text.startswith(("meta l4proto ", "ip protocol ", "ct protocol ", "ct original protocol "))
                for e in self.cur_rule.exprs)
            return Lhs(nft_ct.nft_ct_load(key.value, direction), [TYPES[nft_ct.DIR_KEYS[key.value]]],
                       f"ct {d}{key.value}", conntrack=True, needs_l4=l4)
        raise self.error(key, f"not modelled: ct {key.value}")

    def fib_lhs(self, start: Tok) -> Lhs:
        from pathtrace.net.netfilter.nft_fib import nft_fib4_eval, nft_fib4_eval_type
        what = self.word("saddr or daddr")
        if what.value not in ("saddr", "daddr"):
            raise self.unexpected(what, "saddr or daddr")
        flags = set()
        while self.peek().value == ".":
            self.next()
            f = self.word("iif, oif or mark")
            if f.value not in ("iif", "oif", "mark"):
                raise self.unexpected(f, "iif, oif or mark")
            flags.add(f.value)
        res = self.word("type, oif or oifname")
        text = f"fib {what.value}" + "".join(f" . {f}" for f in sorted(flags)) + f" {res.value}"
        if res.value == "type":
            return Lhs(nft_fib4_eval_type(what.value == "daddr"), [TYPES["fib_addrtype"]], text)
        if res.value in ("oif", "oifname"):
            load = nft_fib4_eval(what.value == "daddr", "iif" in flags, "oif" in flags, "mark" in flags, res.value)
            return Lhs(load, [TYPES["iface_index" if res.value == "oif" else "ifname"]], text)
        raise self.unexpected(res, "type, oif or oifname")

    def match(self) -> list[Expr]:
        start = self.peek()
        lhs = self.lhs()
        op = "implicit"
        t = self.peek()
        if t.value in OPS:
            op = OP_WORDS.get(self.next().value, t.value)
        mask = None
        if self.peek().value == "&":
            self.next()
            mask = self.flag_value(lhs.dtype)
            if self.peek().value in OPS:
                op = OP_WORDS.get(self.next().value, self.peek(-1).value)
            else:
                raise self.unexpected(self.peek(), "comparison operator")
        if self.peek().value == "vmap":
            self.next()
            s = self.map_ref(lhs, None)
            return lhs.deps + [self.vmap_expr(lhs, s, start)]
        if self.at_end_of_stmt():
            raise self.unexpected(self.peek(), "value")
        if lhs.needs_l4:
            raise self.error(self.peek(), "Can't parse symbolic invalid expressions (ct proto-src/proto-dst "
                                          "need a transport protocol match earlier in the rule)")
        self.volatile = ""
        test, rtext = self.rhs(lhs, op, mask)
        text = f"{lhs.text} {'' if op == 'implicit' else op + ' '}{rtext}".replace("  ", " ")
        e = self.match_expr(lhs, test, text)
        e.volatile = self.volatile
        return lhs.deps + [e]

    def match_expr(self, lhs: Lhs, test: Callable[[Any], bool], text: str) -> Expr:
        load = lhs.load
        if lhs.never:
            never = lhs.never
            return Expr("payload+cmp", text, lambda pkt: NFT_BREAK, lambda pkt: never)

        def fn(pkt) -> int:
            v = load(pkt)
            return NFT_CONTINUE if v is not None and test(v) else NFT_BREAK
        types = lhs.types

        def why(pkt) -> str:
            return f"{text}: packet has {_fmt_multi(types, load(pkt))}"
        return Expr("payload+cmp", text, fn, why, conntrack=lhs.conntrack)

    def vmap_expr(self, lhs: Lhs, s: NftSet, start: Tok) -> Expr:
        load = lhs.load
        table = self.cur_chain.table
        for e in s.elements:
            if e.data is None or not isinstance(e.data, tuple) or not isinstance(e.data[0], int):
                raise self.error(start, f"map {s.name} is not a verdict map")
            if e.data[1]:
                self.targets.append((self.cur_rule, e.data[1], start))

        def fn(pkt) -> int:
            v = load(pkt)
            if v is None:
                return NFT_BREAK
            e = nft_set_lookup(s, v)
            if e is None:
                return NFT_BREAK
            code, target = e.data
            if target:
                pkt.chain = table.chains[target]
            return code
        types = lhs.types

        def why(pkt) -> str:
            return f"{lhs.text} vmap: no element for {_fmt_multi(types, load(pkt))}"
        return Expr("lookup", f"{lhs.text} vmap", fn, why, volatile=s.volatile, conntrack=lhs.conntrack,
                    target=",".join(e.data[1] for e in s.elements if e.data[1]))

    def flag_value(self, dt: Datatype) -> int:
        """`syn`, `(syn | ack)`, `syn,ack` or a number: the OR of the flags."""
        total = 0
        paren = self.peek().value == "("
        if paren:
            self.next()
        while True:
            w = self.word("value")
            try:
                v = dt.parse(w.value)
            except NftTypeError as e:
                raise self.error(w, str(e)) from None
            if not isinstance(v, int) or dt.family == 6:
                raise self.error(w, f"Binary operation (&, |) is not supported for {dt.desc()} values")
            total |= v
            if self.peek().value in ("|", ",") and (paren or self.peek().value == ","):
                self.next()
                continue
            break
        if paren:
            self.expect(")")
        return total

    def rhs(self, lhs: Lhs, op: str, mask: int | None) -> tuple[Callable[[Any], bool], str]:
        dt = lhs.dtype
        t = self.peek()
        start_i = self.i
        if t.value == "@":
            self.next()
            name = self.word("set name")
            s = self.cur_chain.table.sets.get(name.value)
            if s is None:
                raise self.error(name, f"Set '{name.value}' does not exist")
            if s.data_type is not None:
                raise self.error(name, f"'{name.value}' is a map, not a set")
            return self.lookup_test(s, op == "!="), f"@{name.value}"
        if t.value == "{":
            at = t
            toks = self.braced()
            s = NftSet(f"__set{len(self.anon)}", 0, at.line, tuple(d.name for d in lhs.types), anonymous=True)
            s.elements = self.elements(toks, at, lhs.types, None, False)
            if len(s.elements) != 1:            # nft turns a one-element set into a plain compare: no set
                self.anon.append(s)
            return self.lookup_test(s, op == "!="), self.text[at.pos:self.toks[self.i - 1].stop]
        if len(lhs.types) > 1:
            raise self.error(t, "a concatenation needs a set")
        if mask is not None:
            value = self.flag_value(dt)
            return nft_bitwise_cmp(mask, "==" if op == "implicit" else op, value), self._span(start_i)
        if dt.bitmask:
            value = self.flag_value(dt)
            listed = self.toks[self.i - 1] is not self.toks[start_i]
            if self.peek().value == "/":
                self.next()
                m = self.flag_value(dt)
                return nft_bitwise_cmp(m, "!=" if op == "!=" else "==", value), self._span(start_i)
            if op == "implicit":
                return nft_bitwise_cmp(value, "!=", 0), self._span(start_i)
            if op == "!=" and listed:
                return nft_bitwise_cmp(value, "==", 0), self._span(start_i)
            return nft_cmp(op, value), self._span(start_i)
        w = self.word("value")
        if w.value == "$":
            raise self.error(w, "not modelled: variables")
        cmp_op = "==" if op == "implicit" else op
        if lhs.never:
            return (lambda v: False), w.value
        if dt.name in ("boolean",) or (w.value in ("exists", "missing") and w.kind == "word"):
            want = w.value == "exists"
            return (lambda v: bool(v) == want) if cmp_op == "==" else (lambda v: bool(v) != want), w.value
        if dt.name == "iface_index":
            self._check_device(w)
            return nft_cmp(cmp_op, w.value), f'"{w.value}"' if w.kind == "string" else w.value
        if dt.string:
            return nft_cmp(cmp_op, w.value), f'"{w.value}"' if w.kind == "string" else w.value
        lo_hi = self.one_value([w], dt)
        if lo_hi[0] == lo_hi[1]:
            return nft_cmp(cmp_op, lo_hi[0]), w.value
        if cmp_op not in ("==", "!="):
            raise self.error(w, f"a range or prefix cannot be compared with {op}")
        return nft_range(lo_hi[0], lo_hi[1], cmp_op == "!="), w.value

    def _span(self, start_i: int) -> str:
        a, b = self.toks[start_i], self.toks[self.i - 1]
        return self.text[a.pos:b.stop] if b.stop else a.value

    def _check_device(self, w: Tok) -> None:
        """meta iif/oif: nft resolves the name to an ifindex when it loads the rule, so the device must
        exist (lo always does); the model compares the device itself, which is the same test."""
        if self.host is not None and w.value != "lo" and w.value not in self.devices:
            raise self.error(w, f"Interface does not exist: {w.value}")

    def lookup_test(self, s: NftSet, invert: bool) -> Callable[[Any], bool]:
        self.volatile = s.volatile

        def test(v: Any) -> bool:
            return (nft_set_lookup(s, v) is not None) != invert
        return test

    # ---- after every table: references, loops, hooks ----------------------------------------------
    def resolve(self) -> None:
        for rule, target, tok in self.targets:
            table = next(t for t in self.ruleset.tables for c in t.chains.values() if rule in c.rules)
            if target not in table.chains:
                raise self.error(tok, f"Could not process rule: No such file or directory (chain '{target}' "
                                      f"does not exist in table {table.label})")
            if table.chains[target].base:
                raise self.error(tok, f"Could not process rule: Operation not supported (cannot jump to base "
                                      f"chain '{target}')")
        for table in self.ruleset.tables:
            for chain in table.chains.values():
                if chain.base:
                    self._validate(table, chain)

    def _validate(self, table: NftTable, base: NftChain) -> None:
        """nft_chain_validate: every chain the base chain reaches, at most NFT_JUMP_STACK_SIZE deep and
        without loops, with expressions valid at its hook and chain type."""
        stack: list[tuple[NftChain, int]] = [(base, 0)]
        on_path: list[str] = []

        def visit(chain: NftChain, depth: int) -> None:
            if depth >= NFT_JUMP_STACK_SIZE:
                r = chain.rules[0] if chain.rules else None
                raise HostFileError(f"chain {chain.name}: Could not process rule: Too many links "
                                    f"(more than {NFT_JUMP_STACK_SIZE} nested jumps from base chain {base.name})",
                                    self.path, r.line if r else chain.line)
            on_path.append(chain.name)
            for rule in chain.rules:
                for e in rule.exprs:
                    if e.hooks and base.hook not in e.hooks or e.chain_type and base.type != e.chain_type:
                        raise HostFileError(f"rule '{rule.text}': Could not process rule: Operation not supported "
                                            f"({e.name} is not valid in a {base.type} chain at hook "
                                            f"{[k for k, v in HOOKS.items() if v == base.hook][0]}, reached from "
                                            f"{table.label} {base.name})", self.path, rule.line)
                    for target in filter(None, e.target.split(",")):
                        if target in on_path:
                            raise HostFileError(f"rule '{rule.text}': Could not process rule: Too many levels of "
                                                f"symbolic links (jump loop through chain {target})", self.path,
                                                rule.line)
                        visit(table.chains[target], depth + 1)
            on_path.pop()
        del stack
        visit(base, 0)


def parse_ruleset(text: str, path: str = "", first_line: int = 1, host: Any = None) -> NftRuleset:
    """The ruleset text (nft list ruleset) or JSON (nft -j list ruleset) as loaded nf_tables objects."""
    if text.lstrip().startswith("{"):
        from pathtrace.net.netfilter.nf_tables_json import json_to_text
        text = json_to_text(text, path)
        first_line = 1
    return RulesetParser(text, path, first_line, host).parse()
