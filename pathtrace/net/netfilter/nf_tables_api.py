"""nf_tables objects (net/netfilter/nf_tables_api.c): tables, chains, rules, sets, handles.

What `nft -f` leaves in the kernel: per table its chains, sets and rules, each with the
handle the table's generator gave it (chains first, then named sets and maps, then the
rules in order, an anonymous set just before its rule - as nft 1.0 sends the batch and
`nft -a list ruleset` shows it).  Base chains carry their hook, priority and policy; the
hook registration itself is pathtrace/net/netfilter/core.py's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pathtrace.net.netfilter_hooks import NF_ACCEPT, NF_DROP

# enum nft_verdicts (include/uapi/linux/netfilter/nf_tables.h)
NFT_CONTINUE = -1
NFT_BREAK = -2
NFT_JUMP = -3
NFT_GOTO = -4
NFT_RETURN = -5
NFT_JUMP_STACK_SIZE = 16
VERDICT_TEXT = {NF_ACCEPT: "accept", NF_DROP: "drop", 2: "stolen", 3: "queue", NFT_CONTINUE: "continue",
                NFT_BREAK: "break", NFT_JUMP: "jump", NFT_GOTO: "goto", NFT_RETURN: "return"}

# nft's hook names for families ip and inet -> enum nf_inet_hooks
HOOKS = {"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}
HOOK_TEXT = {v: k for k, v in HOOKS.items()}
# standard priority names (nftables src/rule.c std_prios, families ip/inet)
PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
# nf_tables_chain_type: which hooks each chain type may use in families ip and inet
CHAIN_TYPE_HOOKS = {"filter": (0, 1, 2, 3, 4), "nat": (0, 1, 3, 4), "route": (3,)}


@dataclass(slots=True, eq=False)
class Counter:
    """A `counter` statement's packets and bytes (nft_counter.c); the replay cache bumps it too."""

    pkts: int = 0
    bytes: int = 0


@dataclass(slots=True, eq=False)
class Expr:
    """One expression or statement of a rule, compiled: `fn(pkt)` returns NFT_CONTINUE, NFT_BREAK
    (the rule does not match) or a verdict.  `why(pkt)` says why it broke (recording only)."""

    name: str                                   # kernel expression type: payload+cmp, lookup, counter, nat...
    text: str                                   # the rule text it came from
    fn: Callable[[Any], int]
    why: Callable[[Any], str] | None = None
    volatile: str = ""                          # non-empty: the replay cache must not reuse a path through it
    conntrack: bool = False                     # loads nf_conntrack (nf_ct_netns_get)
    nat: bool = False
    hooks: tuple[int, ...] = ()                 # hooks it is valid at (empty: any)
    chain_type: str = ""                        # chain type it needs ("nat")
    target: str = ""                            # jump/goto/vmap chain names (comma separated), for validation
    counter: Counter | None = None              # a counter statement's packets and bytes


@dataclass(slots=True, eq=False)
class NftRule:
    chain: str
    handle: int
    line: int
    text: str                                   # the rule as written (counter values dropped)
    exprs: list[Expr]
    pkts: int = 0                               # times the rule ran to its end or verdict (the model's tally)
    bytes: int = 0
    num: int = 0                                # position in the chain (1-based)


@dataclass(slots=True, eq=False)
class NftChain:
    table: "NftTable"
    name: str
    handle: int
    line: int
    type: str = ""                              # filter | nat | route; empty for a regular chain
    hook: int | None = None
    priority: int = 0
    policy: int = NF_ACCEPT
    rules: list[NftRule] = field(default_factory=list)
    pkts: int = 0                               # policy decisions (base chains)
    bytes: int = 0
    prio_text: str = ""

    @property
    def base(self) -> bool:
        return self.hook is not None


@dataclass(slots=True)
class SetElem:
    """An element: per key field a (lo, hi) range or an interface name (str, '*' = prefix); data for maps."""

    key: tuple
    data: Any = None
    timeout: float = 0.0


@dataclass(slots=True, eq=False)
class NftSet:
    name: str
    handle: int
    line: int
    key_types: tuple[str, ...]
    data_type: str | None = None                # maps: the data's type ("verdict" for vmaps)
    flags: frozenset[str] = frozenset()
    timeout: float = 0.0
    elements: list[SetElem] = field(default_factory=list)
    anonymous: bool = False

    @property
    def volatile(self) -> str:
        """Elements that expire make a lookup depend on time (nft_set timeouts)."""
        if self.timeout or any(e.timeout for e in self.elements) or "dynamic" in self.flags:
            return f"set {self.name} with timeouts"
        return ""


@dataclass(slots=True, eq=False)
class NftTable:
    family: str
    name: str
    handle: int
    line: int
    chains: dict[str, NftChain] = field(default_factory=dict)
    sets: dict[str, NftSet] = field(default_factory=dict)
    objects: dict[str, int] = field(default_factory=dict)  # stateful objects defined (ct helper, counter...): handle
    hgen: int = 0                               # table->hgenerator

    def alloc_handle(self) -> int:
        """nf_tables_alloc_handle: ++table->hgenerator."""
        self.hgen += 1
        return self.hgen

    @property
    def label(self) -> str:
        return f"{self.family} {self.name}"


@dataclass(slots=True, eq=False)
class NftRuleset:
    tables: list[NftTable] = field(default_factory=list)
    path: str = ""

    def base_chains(self) -> list[NftChain]:
        return [c for t in self.tables for c in t.chains.values() if c.base]

    def exprs(self):
        for t in self.tables:
            for c in t.chains.values():
                for r in c.rules:
                    yield from r.exprs

    def needs_conntrack(self) -> bool:
        return any(c.type == "nat" for c in self.base_chains()) or any(e.conntrack for e in self.exprs())

    def rule_counters(self):
        """Every rule (each base chain's policy as rule 0) with the model's tally, as lint reads them."""
        for t in self.tables:
            for c in t.chains.values():
                if c.base:
                    yield {"table": t.label, "chain": c.name, "rule": 0, "line": c.line,
                           "text": f"policy {VERDICT_TEXT[c.policy]}", "pkts": c.pkts, "bytes": c.bytes}
                for r in c.rules:
                    yield {"table": t.label, "chain": c.name, "rule": r.handle, "line": r.line, "text": r.text,
                           "pkts": r.pkts, "bytes": r.bytes}

    def format_listing(self) -> str:
        """`nft -a list ruleset` of the loaded rules with the counters the replay kept."""
        out: list[str] = []
        for t in self.tables:
            out.append(f"table {t.label} {{ # handle {t.handle}")
            for c in t.chains.values():
                out.append(f"\tchain {c.name} {{ # handle {c.handle}")
                if c.base:
                    out.append(f"\t\ttype {c.type} hook {HOOK_TEXT[c.hook]} priority {c.prio_text}; "
                               f"policy {VERDICT_TEXT[c.policy]}; # packets {c.pkts} bytes {c.bytes}")
                for r in c.rules:
                    out.append(f"\t\t{r.text} # handle {r.handle} (packets {r.pkts} bytes {r.bytes})")
                out.append("\t}")
            out.append("}")
        return "\n".join(out) + "\n" if out else ""
