"""FIB tables (net/ipv4/fib_trie.c semantics): longest prefix, then lowest metric.

Routes are grouped by prefix length so a lookup walks at most 33 dict probes; the
tables are built once per host and never change during a replay.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pathtrace.lib.inet import ntoa, prefix_mask


@dataclass(slots=True, eq=False)
class FibAlias:
    """One route: fib_alias + fib_info + its nexthop (gateway/dev), or `nexthops` for a multipath one."""

    type: str                  # unicast local broadcast blackhole unreachable prohibit throw
    dst: int
    plen: int
    table: int
    gateway: int | None = None
    dev: str | None = None
    metric: int = 0
    prefsrc: int | None = None
    scope: str = "global"      # host | link | global
    proto: str = "static"
    text: str = ""
    mtu: int = 0               # RTAX_MTU metric (0: the device's MTU)
    mtu_lock: bool = False
    advmss: int = 0            # RTAX_ADVMSS metric
    tos: int = 0               # fa_dscp as a TOS byte: matches only flows with that TOS (& 0x1c)
    nexthops: tuple["FibNh", ...] = ()     # fib_nh of a multipath route (fib_info->fib_nhs > 1)

    def describe(self) -> str:
        if self.text:
            return self.text
        parts = [] if self.type == "unicast" else [self.type]
        parts.append("default" if self.plen == 0 else f"{ntoa(self.dst)}/{self.plen}" if self.plen < 32 else ntoa(self.dst))
        if self.gateway is not None:
            parts += ["via", ntoa(self.gateway)]
        if self.dev:
            parts += ["dev", self.dev]
        for n in self.nexthops:
            parts += ["nexthop"] + (["via", ntoa(n.gateway)] if n.gateway is not None else []) \
                + (["dev", n.dev] if n.dev else []) + ["weight", str(n.weight)]
        if self.proto == "kernel":
            parts += ["proto", "kernel"]
        if self.scope != "global":
            parts += ["scope", self.scope]
        if self.prefsrc is not None:
            parts += ["src", ntoa(self.prefsrc)]
        if self.metric:
            parts += ["metric", str(self.metric)]
        return " ".join(parts)


@dataclass(slots=True, frozen=True)
class FibNh:
    """One nexthop of a multipath route, with the hash bound fib_rebalance gives it."""

    gateway: int | None
    dev: str | None
    weight: int
    upper_bound: int


def fib_rebalance(hops: list[tuple[int | None, str | None, int]]) -> tuple[FibNh, ...]:
    """fib_rebalance: each nexthop owns the hashes up to its cumulative share of 2^31."""
    total = sum(w for _, _, w in hops)
    out, acc = [], 0
    for gw, dev, w in hops:
        acc += w
        out.append(FibNh(gw, dev, w, ((acc << 31) + total // 2) // total - 1))
    return tuple(out)


def fib_multipath_hash(saddr: int, daddr: int) -> int:
    """fib_multipath_hash, policy 0 (layer 3): a 31-bit hash of the addresses.  The kernel keys it
    with a random per-boot secret (flow_hash_from_keys, hashrnd), so WHICH nexthop a flow takes on a
    real machine cannot be known; the model uses a fixed stand-in (jhash of the pair) that, like the
    kernel's, keeps each source/destination pair on one nexthop and spreads pairs by weight."""
    from pathtrace.net.netfilter.nf_nat_unique import jhash2
    return jhash2([saddr, daddr], 0) >> 1


def fib_select_multipath(fa: FibAlias, saddr: int, daddr: int) -> FibAlias:
    """fib_select_multipath: the first nexthop whose bound the flow's hash does not exceed, as a
    single-path view of the route (the rest of the stack sees one gateway and device)."""
    if not fa.nexthops:
        return fa
    h = fib_multipath_hash(saddr, daddr)
    return fib_nh_view(fa, next((n for n in fa.nexthops if h <= n.upper_bound), fa.nexthops[-1]))


def fib_nh_view(fa: FibAlias, nh: FibNh) -> FibAlias:
    """The route as the rest of the stack sees it once one of its nexthops is chosen."""
    from dataclasses import replace
    return replace(fa, gateway=nh.gateway, dev=nh.dev, nexthops=())


def fib_info_nh_uses_dev(fa: FibAlias, dev: str) -> bool:
    """fib_info_nh_uses_dev: the route reaches `dev` through any of its nexthops."""
    if fa.nexthops:
        return any(n.dev == dev for n in fa.nexthops)
    return fa.dev == dev


@dataclass(slots=True)
class FibTable:
    id: int
    by_plen: dict[int, dict[int, list[FibAlias]]] = field(default_factory=dict)
    _plens: list[int] = field(default_factory=list)

    def insert(self, fa: FibAlias) -> None:
        bucket = self.by_plen.setdefault(fa.plen, {}).setdefault(fa.dst, [])
        bucket.append(fa)
        bucket.sort(key=lambda a: (-a.tos, a.metric))     # fib_insert_alias: TOS descending, then priority
        self._plens = sorted(self.by_plen, reverse=True)

    def lookup(self, daddr: int, usable=None, tos: int = 0) -> FibAlias | None:
        """fib_table_lookup: the longest matching prefix; among its aliases the first usable one whose
        TOS is 0 or the flow's (fib_dscp_masked_match: the flow's TOS & INET_DSCP_LEGACY_TOS_MASK)."""
        for plen in self._plens:
            bucket = self.by_plen[plen].get(daddr & prefix_mask(plen))
            if bucket:
                for fa in bucket:
                    if fa.tos and fa.tos != tos & 0x1C:
                        continue
                    if usable is None or usable(fa):
                        return fa
        return None

    def routes(self) -> list[FibAlias]:
        return [fa for plen in self._plens for key in sorted(self.by_plen[plen]) for fa in self.by_plen[plen][key]]
