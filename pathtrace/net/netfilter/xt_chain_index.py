"""Per-chain rule index: which rules of a chain could match a packet, in rule order.

ipt_do_table walks a chain rule by rule.  With thousands of rules (corporate
firewalls, Kubernetes KUBE-SERVICES) most of them fail on their first field
(-s, -d, -i, -o, -p or --dport).  A ChainIndex picks ONE such dimension per chain
and buckets the rules by their constraint on it; for a packet, the candidates are
the rules of the bucket its value falls in, merged in rule order with the rules
that do not constrain that dimension ("wildcards").  Traversal then evaluates
only the candidates, so it is exact as long as every rule left out would have
failed without any observable effect:

* The ip_packet_match fields (-s/-d/-i/-o/-p) are the first checks of a rule and
  have no side effects, so a rule whose (non-inverted) field constraint fails
  never reaches its -m matches: skipping it is exact for any packet, fragments
  and truncated headers included.
* A tcp/udp/multiport port constraint is only used for a rule when every check
  before it in the rule is side-effect free (not limit/hashlimit/recent or an
  unknown match), and only for packets on which neither those checks nor the port
  check itself can hotdrop: a first fragment (fragoff 0) with a complete header
  (TCP: 20 bytes and 20 <= doff <= the bytes present; UDP: 8 bytes).  Other
  TCP/UDP packets walk the chain linearly; packets of other protocols fail every
  port-constrained rule on its `-p tcp|udp` check, which comes first.
* Inverted constraints, interface wildcards (eth+), `--ports` and wide port
  ranges are not indexed: the rule is a wildcard on that dimension.

The index is built lazily on a chain's first indexed traversal and cached on the
Chain (`Chain.xt_index`); it is rebuilt if the chain's rule list is replaced or
changes length.  Recording (--verbose / explain) never uses it.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from pathtrace.net.netfilter.x_tables import Chain, Rule

MIN_RULES = 8           # shorter chains are walked linearly
MAX_RATIO = 0.5         # use a dimension only if its estimated candidate count is at most this share of the chain
MAX_PORT_SPAN = 64      # port ranges up to this many ports are expanded into buckets; wider ones are wildcards
MERGE_MEMO = 4096       # merged candidate lists kept per index (cleared when full)

# Checks that cannot have an effect when evaluated before a port check on a packet
# that passes the port precondition above (no state, no hotdrop, no steps).
PURE_CHECKS = frozenset({
    "-s", "-d", "-i", "-o", "-p", "-f", "tcp", "udp", "multiport", "state", "conntrack", "mark",
    "connmark", "length", "ttl", "tos", "dscp", "pkttype", "mac", "iprange", "policy", "owner", "set", "addrtype",
})

DIMENSIONS = ("saddr", "daddr", "indev", "outdev", "proto", "dport", "sport")

Lookup = Callable[[Any, Any], "list[int] | None"]


class ChainIndex:
    """The index of one chain: `lookup(skb, par)` -> candidate rule positions (0-based, ascending),
    or None when this packet must walk the chain linearly."""

    __slots__ = ("rules", "n", "dim", "score", "lookup", "wild", "buckets", "_lead", "heads")

    def __init__(self, rules: list, dim: str | None, score: float, lookup: Lookup | None,
                 wild: list[int] | None = None, buckets: int = 0):
        self.rules = rules              # the chain's rule list this index was built for
        self.n = len(rules)
        self.dim = dim                  # None: linear walk
        self.score = score
        self.lookup = lookup
        self.wild = wild
        self.buckets = buckets
        self._lead: frozenset[int] | None = None
        self.heads: list[str | None] | None = None     # x_tables._lead_heads: miss-note heads of lead rules

    def lead(self) -> frozenset[int]:
        """Positions of the rules whose first check is the indexed ip_packet_match field: left out
        of a packet's candidates, that check is the one they fail first (recording uses this)."""
        if self._lead is None:
            dim = self.dim
            self._lead = frozenset(i for i, r in enumerate(self.rules)
                                   if r.checks and (reason := r.checks[0].reason) is not None and reason[1] == dim)
        return self._lead

    def __repr__(self) -> str:
        return f"ChainIndex(dim={self.dim}, rules={self.n}, wildcards={len(self.wild or ())}, score={self.score:.1f})"


def chain_index(chain: "Chain") -> ChainIndex:
    """The chain's index, built on first use (and again if its rule list changed)."""
    ix = chain.xt_index
    if ix is None or ix.rules is not chain.rules or ix.n != len(chain.rules):
        ix = chain.xt_index = build_index(chain)
    return ix


def candidates(chain: "Chain", skb: Any, par: Any) -> list[int] | None:
    """Candidate rule positions of `chain` for this packet, or None for a linear walk."""
    ix = chain.xt_index
    if ix is None or ix.rules is not chain.rules or ix.n != len(chain.rules):
        ix = chain.xt_index = build_index(chain)
    lookup = ix.lookup
    return None if lookup is None else lookup(skb, par)


# ---- rule constraints ----------------------------------------------------------------------

_IP_FIELDS = {"-s": "saddr", "-d": "daddr", "-i": "indev", "-o": "outdev", "-p": "proto"}


def rule_key(rule: "Rule", dim: str) -> tuple | None:
    """The rule's indexable constraint on `dim`, or None (wildcard on that dimension).

    saddr/daddr -> ("pfx", mask, addr); indev/outdev -> ("eq", name); proto -> ("eq", proto);
    dport/sport -> ("ports", proto, ((lo, hi), ...)).  Only a constraint reached through
    side-effect-free checks counts (the ip_packet_match fields always are: they come first).
    """
    for m in rule.checks:
        name = m.name
        info = m.info
        if isinstance(info, dict):
            if _IP_FIELDS.get(name) == dim:
                if info["inv"] or info.get("wildcard"):
                    return None
                if dim in ("saddr", "daddr"):
                    return ("pfx", info["mask"], info["addr"])
                return ("eq", info["proto"] if dim == "proto" else info["name"])
            if (name == "tcp" or name == "udp") and dim in ("dport", "sport"):
                lo, hi, inv = info[dim]
                if not inv and (lo, hi) != (0, 65535):
                    return ("ports", info["proto"], ((lo, hi),))
            elif name == "multiport" and dim in ("dport", "sport"):
                if info["which"] == ("--dports" if dim == "dport" else "--sports") and not info["inv"] \
                        and info["proto"] in (6, 17):
                    return ("ports", info["proto"], tuple(info["ranges"]))
        if name not in PURE_CHECKS:
            return None
    return None


# ---- building -----------------------------------------------------------------------------

def build_index(chain: "Chain", *, dim: str | None = None, min_rules: int = MIN_RULES,
                max_ratio: float = MAX_RATIO) -> ChainIndex:
    """Choose the best dimension for `chain` (or use `dim`) and build its lookup.

    Without `dim`, a dimension is used only when the chain has at least `min_rules`
    rules and the estimated candidate count is at most `max_ratio` of them.
    """
    rules = chain.rules
    n = len(rules)
    if dim is None and n < min_rules:
        return ChainIndex(rules, None, float(n), None)
    best: tuple[float, str, dict, list[int]] | None = None
    for d in ((dim,) if dim is not None else DIMENSIONS):
        groups, wild = _bucket(rules, d)
        score = _score(groups, wild)
        if best is None or score < best[0]:
            best = (score, d, groups, wild)
    score, d, groups, wild = best
    if dim is None and (not groups or score > n * max_ratio):
        return ChainIndex(rules, None, score, None)
    lookup = _make_lookup(d, groups, wild)
    return ChainIndex(rules, d, score, lookup, wild, sum(len(g) for g in groups.values()))


def _bucket(rules: list, dim: str) -> tuple[dict, list[int]]:
    """group key -> {bucket key: [rule positions]}, and the wildcard positions.

    Groups: the mask for prefixes, None for exact keys, the protocol for ports.
    """
    groups: dict[Any, dict[Any, list[int]]] = {}
    wild: list[int] = []
    for pos, rule in enumerate(rules):
        key = rule_key(rule, dim)
        if key is None:
            wild.append(pos)
            continue
        kind = key[0]
        if kind == "pfx":
            groups.setdefault(key[1], {}).setdefault(key[2], []).append(pos)
        elif kind == "eq":
            groups.setdefault(None, {}).setdefault(key[1], []).append(pos)
        else:
            proto, ranges = key[1], key[2]
            if sum(hi - lo + 1 for lo, hi in ranges) > MAX_PORT_SPAN:
                wild.append(pos)
                continue
            g = groups.setdefault(proto, {})
            for port in sorted({p for lo, hi in ranges for p in range(lo, hi + 1)}):
                g.setdefault(port, []).append(pos)
    return groups, wild


def _score(groups: dict, wild: list[int]) -> float:
    """Estimated candidates per packet: the wildcards plus, per group, the mean of the
    average and the largest bucket (a packet hits at most one bucket per group)."""
    s = float(len(wild))
    for g in groups.values():
        sizes = [len(b) for b in g.values()]
        s += (max(sizes) + sum(sizes) / len(sizes)) / 2
    return s


def _make_lookup(dim: str, groups: dict, wild: list[int]) -> Lookup:
    if dim in ("saddr", "daddr"):
        return _prefix_lookup(dim, groups, wild)
    if dim in ("indev", "outdev"):
        table = _premerge(groups.get(None, {}), wild)
        if dim == "indev":
            def lookup(skb, par):
                dev = par.indev
                return table.get(dev.name if dev is not None else "", wild)
        else:
            def lookup(skb, par):
                dev = par.outdev
                return table.get(dev.name if dev is not None else "", wild)
        return lookup
    if dim == "proto":
        table = _premerge(groups.get(None, {}), wild)

        def lookup(skb, par):
            return table.get(skb.iph.protocol, wild)
        return lookup
    return _port_lookup(dim, groups, wild)


PREMERGE_MAX = 1 << 20   # premerge buckets with the wildcards up to this many list entries


def _premerge(buckets: dict, wild: list[int]) -> Any:
    """bucket key -> its rules merged in rule order with the wildcards (a dict, or a lazily
    merging mapping when premerging every bucket would take too much memory)."""
    if not wild:
        return dict(buckets)
    if len(buckets) * len(wild) > PREMERGE_MAX:
        return _LazyMerged(buckets, wild)
    return {k: sorted(v + wild) for k, v in buckets.items()}


class _LazyMerged:
    """`get(key, default)` like a premerged dict, merging a bucket on its first hit."""

    __slots__ = ("buckets", "wild", "merged")

    def __init__(self, buckets: dict, wild: list[int]):
        self.buckets = buckets
        self.wild = wild
        self.merged: dict[Any, list[int]] = {}

    def get(self, key: Any, default: Any = None) -> Any:
        out = self.merged.get(key)
        if out is None:
            b = self.buckets.get(key)
            if b is None:
                return default
            out = self.merged[key] = sorted(b + self.wild)
        return out


def _prefix_lookup(dim: str, groups: dict, wild: list[int]) -> Lookup:
    attr_is_src = dim == "saddr"
    if len(groups) == 1:
        (mask, buckets), = groups.items()
        table = _premerge(buckets, wild)
        if attr_is_src:
            def lookup(skb, par):
                return table.get(skb.iph.saddr & mask, wild)
        else:
            def lookup(skb, par):
                return table.get(skb.iph.daddr & mask, wild)
        return lookup
    # several prefix lengths (masks): merge the buckets hit at run time (memoised)
    glist = tuple(groups.items())
    memo: dict[tuple[int, ...], list[int]] = {}

    def lookup(skb, par):
        a = skb.iph.saddr if attr_is_src else skb.iph.daddr
        hits = None
        for mask, buckets in glist:
            b = buckets.get(a & mask)
            if b is not None:
                if hits is None:
                    hits = [b]
                else:
                    hits.append(b)
        if hits is None:
            return wild
        return _merge(memo, hits, wild)
    return lookup


def _merge(memo: dict, hits: list[list[int]], wild: list[int]) -> list[int]:
    key = tuple(id(b) for b in hits)
    out = memo.get(key)
    if out is None:
        if len(memo) >= MERGE_MEMO:
            memo.clear()
        merged = list(wild)
        for b in hits:
            merged += b
        merged.sort()           # a rule sits in one bucket of one group: no duplicates
        out = memo[key] = merged
    return out


_unpack_ports = struct.Struct("!HH").unpack_from


def _port_lookup(dim: str, groups: dict, wild: list[int]) -> Lookup:
    tables = {proto: _premerge(buckets, wild) for proto, buckets in groups.items()}
    tcp = tables.get(6)
    udp = tables.get(17)
    dst = dim == "dport"

    def lookup(skb, par):
        proto = skb.iph.protocol
        table = tcp if proto == 6 else udp if proto == 17 else None
        if table is None:
            return wild
        p = skb.payload
        if par.fragoff or len(p) < (20 if proto == 6 else 8):
            return None
        if proto == 6 and not 20 <= (p[12] >> 4) * 4 <= len(p):
            return None                      # a bad doff: the tcp match would hotdrop
        sport, dport = _unpack_ports(p, 0)
        return table.get(dport if dst else sport, wild)
    return lookup
