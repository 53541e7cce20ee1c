"""The namespace's netfilter: hook registrations, nf_hook_slow, and the table runs.

Hook entries are registered only for what the ruleset loads (as modules register
their nf_hook_ops when loaded): each present table at its hooks and priority,
plus conntrack (defrag, in/local, confirm) and NAT when needed.  `hook` runs the
entries in priority order exactly like nf_hook_slow and records the steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from pathtrace.errors import HostFileError
from pathtrace.net.core.skbuff import kfree_skb_reason
from pathtrace.net.netfilter.iptables_restore import RulesetParser
from pathtrace.net.netfilter.x_tables import (
    HOOK_CHAINS, HOOK_NAMES, NF_ACCEPT, NF_DROP, NF_INET_FORWARD, NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT,
    NF_INET_POST_ROUTING, NF_INET_PRE_ROUTING, NF_QUEUE, NF_STOLEN, TABLE_HOOKS, TABLE_ORDER, VERDICT_NAMES, Chain,
    Table, XtParam, XtTarget, ipt_do_table,
)

INT_MAX = 2**31 - 1
# include/uapi/linux/netfilter_ipv4.h enum nf_ip_hook_priorities
NF_IP_PRI_CONNTRACK_DEFRAG = -400
NF_IP_PRI_RAW = -300
NF_IP_PRI_CONNTRACK = -200
NF_IP_PRI_MANGLE = -150
NF_IP_PRI_NAT_DST = -100
NF_IP_PRI_FILTER = 0
NF_IP_PRI_SECURITY = 50
NF_IP_PRI_NAT_SRC = 100
NF_IP_PRI_CONNTRACK_CONFIRM = INT_MAX
TABLE_PRIORITY = {"raw": NF_IP_PRI_RAW, "mangle": NF_IP_PRI_MANGLE, "filter": NF_IP_PRI_FILTER,
                  "security": NF_IP_PRI_SECURITY}
NF_VERDICT_FLAG_QUEUE_BYPASS = 0x8000

HookFn = Callable[[Any, Any, Any], int]     # (skb, indev, outdev) -> verdict


@dataclass(slots=True)
class HookEntry:
    """struct nf_hook_ops: who runs at a hook and at which priority."""

    priority: int
    name: str
    fn: HookFn


VOLATILE_MATCHES = frozenset({"limit", "hashlimit", "recent", "connlimit"})
VOLATILE_TARGETS = frozenset({"SET", "NFQUEUE"})


def _volatile(fn: Callable, what: str) -> Callable:
    def check(skb, par):
        skb.ctx.uncacheable(what)
        return fn(skb, par)
    check.volatile = True
    return check


def _rate_limit(m: Any) -> Callable:
    """A `limit` match (time and its own bucket decide, no packet field): the replay cache does not
    reuse a path that evaluated it, the megaflow cache may, evaluating it again per packet in the
    same order (ctx.learn.limits: the match and its result; pathtrace/megaflow.py)."""
    fn = m.check

    def check(skb, par):
        learn = skb.ctx.learn
        result = fn(skb, par)
        if learn is not None:
            learn.limits.append((m, result))
        return result
    check.volatile = True
    return check


def _nft_volatile(fn: Callable, what: str) -> Callable:
    """_volatile for an nft expression (called with the nft_pktinfo)."""
    def check(pkt):
        pkt.skb.ctx.uncacheable(what)
        return fn(pkt)
    check.volatile = True
    return check


@dataclass(eq=False)
class Netfilter:
    """All netfilter state of one namespace (tables, counters, conntrack, match state)."""

    net: Any
    tables: dict[str, Table] = field(default_factory=dict)
    conntrack: Any = None                       # NF-B's ConntrackTable when nf_conntrack is loaded
    nat: bool = False
    ipsets: dict[str, Any] = field(default_factory=dict)
    hashlimit: dict[str, Any] = field(default_factory=dict)
    recent: dict[str, Any] = field(default_factory=dict)
    entries: dict[int, list[HookEntry]] = field(default_factory=dict)
    path: str = ""
    nft: Any = None                             # nf_tables_api.NftRuleset when the host has nftables

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_config(cls, host: Any, net: Any) -> "Netfilter":
        """Parse host.iptables_text (iptables-save or -S) and register the hooks it needs."""
        nf = cls(net, path=getattr(host, "iptables_path", "") or "")
        raw_sets = getattr(host, "ipsets", None) or {}
        if raw_sets:
            from pathtrace.net.netfilter.ipset import load_ipsets
            from pathtrace.net.netfilter.x_tables import XtError
            try:
                nf.ipsets = load_ipsets(raw_sets)
            except XtError as e:
                raise HostFileError(str(e), getattr(host, "path", None), getattr(host, "ipsets_line", None)) from None
        text = getattr(host, "iptables_text", None)
        if text:
            parser = RulesetParser(text, nf.path, getattr(host, "iptables_first_line", 1), host)
            nf.tables = parser.parse()
        nft_text = getattr(host, "nftables_text", None)
        if nft_text is not None:
            from pathtrace.net.netfilter.nf_tables_parse import parse_ruleset
            nf.nft = parse_ruleset(nft_text, host.nftables_path, host.nftables_first_line, host)
        nf._register(nf.needs_conntrack())
        return nf

    @classmethod
    def from_text(cls, text: str, net: Any = None, path: str = "", host: Any = None) -> "Netfilter":
        """Convenience for tests and tools: a ruleset text without a host file."""
        nf = cls(net, path=path)
        if host is not None and getattr(host, "ipsets", None):
            from pathtrace.net.netfilter.ipset import load_ipsets
            nf.ipsets = load_ipsets(host.ipsets)
        nf.tables = RulesetParser(text, path, 1, host).parse()
        nf._register(nf.needs_conntrack())
        return nf

    def needs_conntrack(self) -> bool:
        """nf_conntrack is loaded by the nat table or any conntrack-dependent extension (nft: a nat
        chain or a ct expression)."""
        if "nat" in self.tables or (self.nft is not None and self.nft.needs_conntrack()):
            return True
        for table in self.tables.values():
            for chain in table.chains.values():
                for rule in chain.rules:
                    if rule.target.conntrack or any(m.conntrack for m in rule.checks):
                        return True
        return False

    def _register(self, conntrack: bool) -> None:
        self._mark_volatile()
        reg: dict[int, list[HookEntry]] = {h: [] for h in range(5)}
        for name in TABLE_ORDER:
            if name not in self.tables or name == "nat":
                continue
            for hook in TABLE_HOOKS[name]:
                reg[hook].append(HookEntry(TABLE_PRIORITY[name], f"iptable_{name}_hook", self._table_fn(name, hook)))
        if conntrack:
            if self.conntrack is None:
                from pathtrace.net.netfilter.nf_conntrack_core import ConntrackTable
                self.conntrack = ConntrackTable(self.net)
            self._register_conntrack(reg)
        nft_nat = self._register_nft(reg)
        if "nat" in self.tables or nft_nat:
            self.nat = True
            self._register_nat(reg)
        for hook in reg:
            # nf_hook_entries_grow puts a new entry before the first one of equal or higher priority: at
            # equal priorities the later registration runs first (iptables' tables are registered before
            # the nftables ruleset, as verify's lab loads them)
            entries = reg[hook]
            reg[hook] = [entries[i] for i in sorted(range(len(entries)), key=lambda i: (entries[i].priority, -i))]
        self.entries = {h: e for h, e in reg.items() if e}

    def _mark_volatile(self) -> None:
        """Matches and targets whose outcome depends on earlier packets or on time (rate limits,
        recent lists, ipsets a SET target fills) tell the replay cache not to reuse a path
        that evaluated them (see pathtrace/flowcache.py)."""
        for table in self.tables.values():
            for chain in table.chains.values():
                for rule in chain.rules:
                    for m in rule.checks:
                        if m.name in VOLATILE_MATCHES and not getattr(m.check, "volatile", False):
                            m.check = _rate_limit(m) if m.name == "limit" else _volatile(m.check, f"match {m.name}")
                    t = rule.target
                    if t.name in VOLATILE_TARGETS and t.fn is not None and not getattr(t.fn, "volatile", False):
                        t.fn = _volatile(t.fn, f"target {t.name}")

    def _register_conntrack(self, reg: dict[int, list[HookEntry]]) -> None:
        from pathtrace.net.netfilter import nf_conntrack_core as ct
        from pathtrace.net.netfilter.nf_defrag_ipv4 import ipv4_conntrack_defrag

        def wrap(fn, hook):
            return lambda skb, indev, outdev: fn(self, skb, hook)
        for hook in (NF_INET_PRE_ROUTING, NF_INET_LOCAL_OUT):
            reg[hook].append(HookEntry(NF_IP_PRI_CONNTRACK_DEFRAG, "ipv4_conntrack_defrag",
                                       wrap(ipv4_conntrack_defrag, hook)))
        reg[NF_INET_PRE_ROUTING].append(HookEntry(NF_IP_PRI_CONNTRACK, "ipv4_conntrack_in",
                                                  wrap(ct.ipv4_conntrack_in, NF_INET_PRE_ROUTING)))
        reg[NF_INET_LOCAL_OUT].append(HookEntry(NF_IP_PRI_CONNTRACK, "ipv4_conntrack_local",
                                                wrap(ct.ipv4_conntrack_local, NF_INET_LOCAL_OUT)))
        for hook in (NF_INET_POST_ROUTING, NF_INET_LOCAL_IN):
            reg[hook].append(HookEntry(NF_IP_PRI_CONNTRACK_CONFIRM, "ipv4_confirm", wrap(ct.ipv4_confirm, hook)))

    def _register_nft(self, reg: dict[int, list[HookEntry]]) -> bool:
        """nf_tables base chains at their hook and priority (nf_tables_register_hook); nat chains are
        not hook entries but lookups of the nat hooks (nf_nat_ipv4_register_fn).  True if any nat chain."""
        if self.nft is None:
            return False
        for e in self.nft.exprs():
            if e.volatile and not getattr(e.fn, "volatile", False):
                e.fn = _nft_volatile(e.fn, e.volatile)
        nat = False
        for chain in self.nft.base_chains():
            if chain.type == "nat":
                nat = True
                continue
            name = "nft_do_chain_inet" if chain.table.family == "inet" else "nft_do_chain_ipv4"
            reg[chain.hook].append(HookEntry(chain.priority, name, self._nft_fn(chain)))
        return nat

    def _nft_fn(self, chain: Any) -> HookFn:
        return lambda skb, indev, outdev: self.run_nft_chain(chain, skb, indev, outdev)

    def _nat_lookups(self, hook: int) -> list[tuple[int, Callable[[Any, Any, Any], int]]]:
        """The nat hook's lookups in priority order (nf_nat_inet_fn's lpriv->entries): iptables' nat
        table and nft nat chains, as nf_nat_register_fn sorts them (nf_hook_entries_grow)."""
        out: list[tuple[int, Callable[[Any, Any, Any], int]]] = []
        if "nat" in self.tables and hook in TABLE_HOOKS["nat"]:
            prio = NF_IP_PRI_NAT_DST if hook in (NF_INET_PRE_ROUTING, NF_INET_LOCAL_OUT) else NF_IP_PRI_NAT_SRC
            out.append((prio, lambda skb, indev, outdev: self.run_table("nat", hook, skb, indev, outdev)))
        if self.nft is not None:
            for chain in self.nft.base_chains():
                if chain.type == "nat" and chain.hook == hook:
                    out.append((chain.priority, self._nft_fn(chain)))
        order = sorted(range(len(out)), key=lambda i: (out[i][0], -i))    # equal priority: later first
        return [out[i] for i in order]

    def _register_nat(self, reg: dict[int, list[HookEntry]]) -> None:
        from pathtrace.net.netfilter import nf_nat_core as nat
        ops = ((NF_INET_PRE_ROUTING, NF_IP_PRI_NAT_DST, nat.nf_nat_ipv4_pre_routing),
               (NF_INET_POST_ROUTING, NF_IP_PRI_NAT_SRC, nat.nf_nat_ipv4_out),
               (NF_INET_LOCAL_OUT, NF_IP_PRI_NAT_DST, nat.nf_nat_ipv4_local_fn),
               (NF_INET_LOCAL_IN, NF_IP_PRI_NAT_SRC, nat.nf_nat_ipv4_local_in))
        for hook, prio, fn in ops:
            lookups = self._nat_lookups(hook)

            def entry(skb, indev, outdev, fn=fn, hook=hook, lookups=lookups):
                def run_nat_chain(skb2, hook2, indev=indev, outdev=outdev):
                    if len(lookups) == 1:
                        return lookups[0][1](skb2, indev, outdev)
                    ct = nat.nf_ct_get(skb2)
                    manip = nat.hook2manip(hook2)
                    for _, look in lookups:
                        ret = look(skb2, indev, outdev)
                        if ret != NF_ACCEPT or (ct is not None and nat.nf_nat_initialized(ct, manip)):
                            return ret
                    return NF_ACCEPT
                return fn(self, skb, hook, run_nat_chain, outdev)
            reg[hook].append(HookEntry(prio, fn.__name__, entry))

    def run_nft_chain(self, chain: Any, skb: Any, indev: Any, outdev: Any) -> int:
        """nft_do_chain_ipv4/inet for one base chain, recording the step and the decision as
        `nft monitor trace` shows them (table, chain, rule handle and text, verdict)."""
        from pathtrace.net.netfilter.nf_tables_core import NftPktinfo, nft_do_chain, nft_set_pktinfo_ipv4
        ctx = skb.ctx
        hook = chain.hook
        pkt = NftPktinfo(skb, self, hook, indev, outdev)
        nft_set_pktinfo_ipv4(pkt)
        detail: dict[str, Any] | None = None
        if ctx.record:
            ctx.step("nft_do_chain", table=chain.table.label, chain=chain.name, hook=HOOK_NAMES[hook])
            detail = ctx.steps[-1].detail
        before = (skb.iph.saddr, skb.iph.daddr, skb.mark, skb.iph.tos) if chain.type == "route" else None
        d = nft_do_chain(pkt, chain)
        if before is not None and d.verdict == NF_ACCEPT and before != (skb.iph.saddr, skb.iph.daddr, skb.mark,
                                                                        skb.iph.tos):
            # nf_route_table_hook4: a route chain that changed the addresses, mark or tos re-routes
            from pathtrace.net.ipv4.route import ip_route_me_harder
            if not ip_route_me_harder(skb):
                d.verdict = NF_DROP
        verdict_name = VERDICT_NAMES.get(d.verdict & 0xFF, str(d.verdict))
        if detail is not None:
            detail.update(chain=d.chain, rule=d.rule, handle=d.rule, text=d.text, verdict=verdict_name,
                          policy=d.policy, path=" -> ".join(d.path))
            if d.misses:
                detail["misses"] = d.misses
            if getattr(d, "trail", None):       # x_tables decisions; nft's have none
                detail["trail"] = d.trail
        ctx.verdicts.append({"hook": HOOK_NAMES[hook], "table": chain.table.label, "chain": d.chain, "rule": d.rule,
                             "text": d.text, "verdict": verdict_name})
        return d.verdict

    def _table_fn(self, name: str, hook: int) -> HookFn:
        return lambda skb, indev, outdev: self.run_table(name, hook, skb, indev, outdev)

    # ---- NF_HOOK -----------------------------------------------------------------------------
    def hook(self, hook: int, skb: Any, indev: Any = None, outdev: Any = None) -> int:
        """nf_hook_slow: every registered entry in priority order until one does not accept."""
        entries = self.entries.get(hook)
        if not entries:
            return NF_ACCEPT
        ctx = skb.ctx
        ctx.step("nf_hook_slow", hook=HOOK_NAMES[hook])
        for e in entries:
            v = e.fn(skb, indev, outdev)
            code = v & 0xFF
            if code == NF_ACCEPT:
                continue
            if code == NF_DROP:
                if skb.verdict != "DROP":
                    kfree_skb_reason(skb, "NETFILTER_DROP", hook=HOOK_NAMES[hook])
                return NF_DROP
            if code == NF_QUEUE:
                # nf_queue: no userspace listener in a replay -> -ESRCH
                if v & NF_VERDICT_FLAG_QUEUE_BYPASS:
                    if ctx.record:
                        ctx.step("nf_queue", queue=v >> 16, result="no listener, --queue-bypass: continue")
                    continue
                ctx.step("nf_queue", queue=v >> 16, result="no listener (-ESRCH): packet freed")
                kfree_skb_reason(skb, "NOT_SPECIFIED", hook=HOOK_NAMES[hook])
                return NF_DROP
            if code == NF_STOLEN:
                return NF_STOLEN
            return code
        return NF_ACCEPT

    # ---- table traversal with steps ------------------------------------------------------------
    def run_table(self, name: str, hook: int, skb: Any, indev: Any, outdev: Any) -> int:
        """ipt_do_table for one table, recording the step and the decision."""
        table = self.tables[name]
        ctx = skb.ctx
        detail: dict[str, Any] | None = None
        if ctx.record:
            detail = {"table": name, "hook": HOOK_NAMES[hook]}
            ctx.step("ipt_do_table", **detail)
            detail = ctx.steps[-1].detail if ctx.steps else detail
        par = XtParam(self, hook, name, indev, outdev)
        d = ipt_do_table(table, skb, par)
        verdict_name = VERDICT_NAMES.get(d.verdict & 0xFF, str(d.verdict))
        if detail is not None:
            detail.update(chain=d.chain, rule=d.rule, text=d.text, verdict=verdict_name, policy=d.policy,
                          path=" -> ".join(d.path))
            if d.note:
                detail["note"] = d.note
            if d.misses:
                detail["misses"] = d.misses
            if getattr(d, "trail", None):       # x_tables decisions; nft's have none
                detail["trail"] = d.trail
        ctx.verdicts.append({"hook": HOOK_NAMES[hook], "table": name, "chain": d.chain, "rule": d.rule,
                             "text": d.text if ctx.record else _rule_text(table, d), "verdict": verdict_name})
        return d.verdict

    # ---- counters and listings -------------------------------------------------------------------
    def rule_counters(self) -> Iterator[dict[str, Any]]:
        """Every rule (and each built-in policy as rule 0) with its packet/byte counters."""
        for tname in TABLE_ORDER:
            table = self.tables.get(tname)
            if table is None:
                continue
            for chain in table.chains.values():
                if chain.builtin:
                    yield {"table": tname, "chain": chain.name, "rule": 0, "line": chain.line,
                           "text": f"-P {chain.name} {VERDICT_NAMES[chain.policy]}", "pkts": chain.pkts,
                           "bytes": chain.bytes}
                for r in chain.rules:
                    yield {"table": tname, "chain": chain.name, "rule": r.num, "line": r.line, "text": r.text,
                           "pkts": r.pkts, "bytes": r.bytes}
        if self.nft is not None:
            yield from self.nft.rule_counters()

    def unhit_rules(self) -> list[dict[str, Any]]:
        """Rules no packet matched (policies excluded)."""
        return [c for c in self.rule_counters() if c["rule"] and not c["pkts"]]

    def format_listing(self, counters: bool = True) -> str:
        """Like `iptables -t TABLE -L -v -n` for each loaded table."""
        out: list[str] = []
        for tname in TABLE_ORDER:
            table = self.tables.get(tname)
            if table is None:
                continue
            out.append(f"# table {tname}")
            for chain in table.chains.values():
                out.append(_chain_header(table, chain, counters))
                head = ["pkts", "bytes"] if counters else []
                rows = [head + ["target", "prot", "opt", "in", "out", "source", "destination", ""]]
                for r in chain.rules:
                    rows.append(_rule_row(r, counters))
                widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
                for row in rows:
                    out.append(" ".join(str(c).rjust(w) if i < len(head) else str(c).ljust(w)
                                        for i, (c, w) in enumerate(zip(row, widths))).rstrip())
                out.append("")
        if self.nft is not None and self.nft.tables:
            out.append(self.nft.format_listing())
        return "\n".join(out).rstrip() + "\n" if out else ""


def _rule_text(table: Table, d: Any) -> str:
    """Rule text for the decision record when steps are off (no formatting was done in the loop)."""
    chain = table.chains.get(d.chain)
    if chain is None:
        return ""
    if d.policy:
        return f"-P {chain.name} {VERDICT_NAMES[chain.policy]}"
    return chain.rules[d.rule - 1].text if 0 < d.rule <= len(chain.rules) else ""


def _human(n: int) -> str:
    """iptables -L -v number format (K/M/G suffixes past 99999)."""
    for suffix in ("", "K", "M", "G", "T"):
        if n <= 99999:
            return f"{n}{suffix}"
        n //= 1000
    return f"{n}P"


def _chain_header(table: Table, chain: Chain, counters: bool) -> str:
    if chain.builtin:
        pol = VERDICT_NAMES[chain.policy]
        c = f" {_human(chain.pkts)} packets, {_human(chain.bytes)} bytes" if counters else ""
        return f"Chain {chain.name} (policy {pol}{c})"
    refs = sum(1 for ch in table.chains.values() for r in ch.rules
               if r.target.kind in ("jump", "goto") and r.target.chain == chain.name)
    return f"Chain {chain.name} ({refs} references)"


def _rule_row(r: Any, counters: bool) -> list[str]:
    """Split the saved rule text back into -L columns (the rest goes into the last column)."""
    from pathtrace.net.netfilter.iptables_restore import tokenize
    toks = tokenize(r.text)[2:]
    cols = {"-p": "all", "-i": "*", "-o": "*", "-s": "0.0.0.0/0", "-d": "0.0.0.0/0"}
    opt = "--"
    rest: list[str] = []
    target = r.target.name
    i = 0
    while i < len(toks):
        t = toks[i]
        neg = t == "!"
        if neg:
            i += 1
            t = toks[i] if i < len(toks) else ""
        if t in cols and i + 1 < len(toks):
            cols[t] = ("!" if neg else "") + toks[i + 1]
            i += 2
            continue
        if t == "-f":
            opt = "!f" if neg else "-f"
            i += 1
            continue
        if t in ("-j", "-g"):
            i += 2
            continue
        # a value with spaces (a LOG prefix, a comment) keeps its quotes, as iptables-save writes it
        rest.append(("! " if neg else "") + (f'"{t}"' if not t or any(c.isspace() for c in t) else t))
        i += 1
    row = [_human(r.pkts), _human(r.bytes)] if counters else []
    return row + [target, cols["-p"], opt, cols["-i"], cols["-o"], cols["-s"], cols["-d"], " ".join(rest)]
