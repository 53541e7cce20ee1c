"""x_tables: rules, chains, tables and the ipt_do_table traversal.

A rule is precompiled at load time into a tuple of small check closures (the
ip_packet_match part first, then each -m match in order) and a target, so the
per-packet path is a plain loop with no string work.  Miss reasons and rule texts
are only produced when `skb.ctx.record` is set (the --verbose path).  Off that
path, a per-chain rule index (xt_chain_index) limits the loop to the rules that
could match the packet, with the linear walk's outcome, counters and hotdrops.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from pathtrace.net.netfilter.xt_chain_index import candidates

if TYPE_CHECKING:  # pragma: no cover
    from pathtrace.net.core.netdevice import NetDevice
    from pathtrace.net.core.skbuff import SkBuff

# include/uapi/linux/netfilter.h
NF_DROP = 0
NF_ACCEPT = 1
NF_STOLEN = 2
NF_QUEUE = 3
NF_REPEAT = 4
XT_CONTINUE = -1        # XT_CONTINUE (0xFFFFFFFF): a non-terminating target
XT_RETURN = -2          # XT_RETURN = -NF_REPEAT - 1

# enum nf_inet_hooks
NF_INET_PRE_ROUTING = 0
NF_INET_LOCAL_IN = 1
NF_INET_FORWARD = 2
NF_INET_LOCAL_OUT = 3
NF_INET_POST_ROUTING = 4
HOOK_NAMES = {0: "PRE_ROUTING", 1: "LOCAL_IN", 2: "FORWARD", 3: "LOCAL_OUT", 4: "POST_ROUTING"}
HOOK_CHAINS = {0: "PREROUTING", 1: "INPUT", 2: "FORWARD", 3: "OUTPUT", 4: "POSTROUTING"}
CHAIN_HOOKS = {v: k for k, v in HOOK_CHAINS.items()}

# Valid hooks of each table (iptable_*.c valid_hooks).
TABLE_HOOKS: dict[str, tuple[int, ...]] = {
    "raw": (NF_INET_PRE_ROUTING, NF_INET_LOCAL_OUT),
    "mangle": (0, 1, 2, 3, 4),
    "nat": (NF_INET_PRE_ROUTING, NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING),
    "filter": (NF_INET_LOCAL_IN, NF_INET_FORWARD, NF_INET_LOCAL_OUT),
    "security": (NF_INET_LOCAL_IN, NF_INET_FORWARD, NF_INET_LOCAL_OUT),
}
TABLE_ORDER = ("raw", "mangle", "nat", "filter", "security")

VERDICT_NAMES = {NF_DROP: "DROP", NF_ACCEPT: "ACCEPT", NF_STOLEN: "STOLEN", NF_QUEUE: "QUEUE",
                 XT_RETURN: "RETURN", XT_CONTINUE: "CONTINUE"}

Check = Callable[["SkBuff", "XtParam"], bool]
Why = Callable[["SkBuff", "XtParam"], str]


def hook_mask(*hooks: int) -> int:
    mask = 0
    for h in hooks:
        mask |= 1 << h
    return mask


@dataclass(slots=True)
class XtParam:
    """struct xt_action_param: what a match/target sees besides the skb."""

    nf: Any                         # the Netfilter object (namespace state)
    hook: int
    table: str
    indev: "NetDevice | None"
    outdev: "NetDevice | None"
    fragoff: int = 0
    hotdrop: bool = False
    thoff: int = 0


@dataclass(slots=True)
class XtMatch:
    """One check of a rule: an ip_packet_match field or an -m extension."""

    name: str
    check: Check
    why: Why                        # miss reason; only called when recording
    hooks: int = 0                  # allowed hooks mask (0 = any)
    table: str | None = None        # table restriction (xt_match.table)
    conntrack: bool = False         # needs nf_conntrack loaded
    info: Any = None                # parsed options other checks consult (TCPMSS looks for a SYN match)
    reason: "tuple[str, str, Callable[[Any, Any], str]] | None" = None   # why == head + text(skb, par):
    #                                 (head, field, text) for ip_packet_match fields, so a walk formats each field once


@dataclass(slots=True)
class XtTarget:
    """The -j/-g part of a rule.  kind: standard | jump | goto | ext."""

    name: str
    kind: str
    verdict: int = XT_CONTINUE      # standard targets
    chain: str = ""                 # jump/goto
    fn: Callable[["SkBuff", "XtParam"], int] | None = None
    hooks: int = 0
    table: str | None = None
    conntrack: bool = False
    hook_names: str = ""            # for error text when used from a wrong hook


@dataclass(slots=True, eq=False)
class Rule:
    chain: str
    num: int                        # 1-based position in the chain
    line: int                       # line in the ruleset file
    text: str                       # normalised iptables-save text
    checks: tuple[XtMatch, ...]
    target: XtTarget
    pkts: int = 0
    bytes: int = 0
    label: str = ""                 # "CHAIN#num: ", the prefix of its miss reasons (set on first use)


@dataclass(slots=True, eq=False)
class Chain:
    name: str
    builtin: bool
    policy: int = NF_ACCEPT         # built-in chains only
    rules: list[Rule] = field(default_factory=list)
    pkts: int = 0                   # policy (underflow) counter / implicit RETURN
    bytes: int = 0
    line: int = 0
    xt_index: Any = None            # xt_chain_index.ChainIndex, built on the first indexed traversal


@dataclass(slots=True, eq=False)
class Table:
    name: str
    chains: dict[str, Chain]
    line: int = 0

    def builtin(self, hook: int) -> Chain:
        return self.chains[HOOK_CHAINS[hook]]


@dataclass(slots=True)
class Decision:
    """Outcome of one ipt_do_table run."""

    verdict: int
    chain: str
    rule: int                       # 0 = chain policy
    text: str
    policy: bool
    path: list[str]
    misses: list[str] | None = None     # "CHAIN#n: reason" for rules that did not match (recording only)
    note: str = ""
    trail: list[dict] | None = None     # every rule that matched, in order, with the chain stack (recording only)


def ipt_do_table(table: Table, skb: "SkBuff", par: XtParam, linear: bool = False) -> Decision:
    """Traverse `table` from the hook's built-in chain exactly as ipt_do_table does (_traverse); when
    recording, the decision carries the trail of every rule that matched on the way: jumps, gotos,
    returns and targets that continue (LOG, MARK, ...), each with the chain stack at that point."""
    trail: list[dict] | None = [] if skb.ctx.record else None
    d = _traverse(table, skb, par, linear, trail)
    d.trail = trail
    return d


def _note(trail: list[dict] | None, misses: list[str] | None, chain: Chain, rule: "Rule | None", event: str,
          target: str, stack: list[tuple[Chain, int]]) -> None:
    """One matched rule (or the end of a user chain) in the trail; `at` orders it among the misses.
    Callers check `trail is not None` first: nothing is done per rule when not recording."""
    if trail is not None:
        trail.append({"at": len(misses or ()), "rule": f"{chain.name}#{rule.num}" if rule else chain.name,
                      "event": event, "target": target, "text": rule.text if rule else "",
                      "stack": [c.name for c, _ in stack] + [chain.name]})


def _traverse(table: Table, skb: "SkBuff", par: XtParam, linear: bool, trail: list[dict] | None) -> Decision:
    """ipt_do_table's walk.

    Counters are bumped when every match of a rule matched, before its target runs;
    the built-in chain's policy is the underflow rule (counted too).  RETURN (or the
    end of a user chain) pops the jump stack; -g does not push.  A hotdrop from a
    match ends the traversal with NF_DROP.

    Unless recording (or `linear` is set), each chain's rule index (xt_chain_index)
    gives the rules that could match this packet and only those are evaluated; the
    rules left out would have failed without any effect, so the outcome, counters and
    hotdrops are those of the linear walk.  A chain whose index does not apply to the
    packet (none built, or a truncated/fragmented header for a port index) is walked
    rule by rule.
    """
    ctx = skb.ctx
    record = ctx.record
    iph = skb.iph
    use_index = not (record or linear) and iph is not None
    chain = table.builtin(par.hook)
    stack: list[tuple[Chain, int]] = []
    path = [chain.name]
    misses: list[str] | None = [] if record else None
    length = skb.len
    par.fragoff = (iph.frag_off & 0x1FFF) if iph is not None else 0
    par.thoff = iph.ihl * 4 if iph is not None else 0
    idx = 0
    ci = 0                                  # position in `cands` (indexed chains)
    cands = candidates(chain, skb, par) if use_index else None
    while True:
        rules = chain.rules
        # find the next rule whose matches all match: every rule (linear) or the candidates
        if misses is not None:
            idx, rule, hot = _first_match_recording(chain, idx, skb, par, misses, linear)
        elif cands is None:
            idx, rule, hot = _first_match(rules, None, idx, skb, par)
        else:
            ci, rule, hot = _first_match(rules, cands, ci, skb, par)
            if rule is not None:
                idx = cands[ci]
        if hot:
            return _finish(Decision(NF_DROP, chain.name, rule.num, rule.text, False, path), misses, ctx, "hotdrop")
        if rule is None:
            # end of the chain
            if chain.builtin or not stack:
                # the underflow is always the hook's built-in chain policy, also at the end of a -g chain
                return _policy(table, par, table.builtin(par.hook), length, path, misses, ctx)
            _count(ctx, chain, length)
            if trail is not None:
                _note(trail, misses, chain, None, "end", stack[-1][0].name, stack)
            chain, idx = stack.pop()
            if record:
                path.append(chain.name)
            if use_index:
                cands = candidates(chain, skb, par)
                if cands is not None:
                    ci = bisect_left(cands, idx)
            continue
        _count(ctx, rule, length)
        t = rule.target
        kind = t.kind
        if kind == "standard":
            v = t.verdict
            if v == XT_RETURN:
                if trail is not None:
                    _note(trail, misses, chain, rule, "return", stack[-1][0].name if stack else "policy", stack)
                if not stack:
                    return _policy(table, par, table.builtin(par.hook), length, path, misses, ctx)
                chain, idx = stack.pop()
                if record:
                    path.append(chain.name)
                if use_index:
                    cands = candidates(chain, skb, par)
                    if cands is not None:
                        ci = bisect_left(cands, idx)
                continue
            if v == XT_CONTINUE:
                if trail is not None:
                    _note(trail, misses, chain, rule, "continue", "", stack)
                idx += 1
                ci += 1
                continue
            return _finish(Decision(v, chain.name, rule.num, rule.text, False, path), misses, ctx)
        if kind == "jump" or kind == "goto":
            if trail is not None:
                _note(trail, misses, chain, rule, kind, t.chain, stack)
            if kind == "jump":
                stack.append((chain, idx + 1))
            chain = table.chains[t.chain]
            idx = 0
            if record:
                path.append(("" if kind == "jump" else "goto ") + chain.name)
            if use_index:
                cands = candidates(chain, skb, par)
                ci = 0
            continue
        v = t.fn(skb, par)
        if par.hotdrop:
            return _finish(Decision(NF_DROP, chain.name, rule.num, rule.text, False, path), misses, ctx, "hotdrop")
        if v == XT_CONTINUE:
            if trail is not None:
                _note(trail, misses, chain, rule, "continue", t.name, stack)
            idx += 1
            if use_index:
                # the target may have changed the packet: look its candidates up again
                cands = candidates(chain, skb, par)
                if cands is not None:
                    ci = bisect_left(cands, idx)
            continue
        return _finish(Decision(v, chain.name, rule.num, rule.text, False, path), misses, ctx)


def _count(ctx: Any, obj: "Rule | Chain", length: int) -> None:
    """Bump a rule's or a chain's (policy / implicit RETURN) counters; every bump goes through here
    so the replay decision cache can see which counters a traversal touched (ctx.counted)."""
    obj.pkts += 1
    obj.bytes += length
    counted = ctx.counted
    if counted is not None:
        counted.append(obj)


def _first_match(rules: list[Rule], order: list[int] | None, k: int, skb: "SkBuff",
                 par: XtParam) -> tuple[int, Rule | None, bool]:
    """Scan rules[order[k]], rules[order[k + 1]]... (order None: rules[k], rules[k + 1]...) for the
    first rule whose matches all match.  Returns (k, rule, hotdrop); rule None at the chain's end."""
    n = len(order) if order is not None else len(rules)
    while k < n:
        rule = rules[order[k]] if order is not None else rules[k]
        if _failing_check(rule, skb, par) is None:
            return k, rule, False
        if par.hotdrop:
            return k, rule, True
        k += 1
    return k, None, False


def _failing_check(rule: Rule, skb: "SkBuff", par: XtParam) -> "XtMatch | None":
    """The first of the rule's matches that does not match (in order, as ipt_do_table runs
    them); None when all match."""
    for m in rule.checks:
        if not m.check(skb, par):
            return m
    return None


def _first_match_recording(chain: Chain, k: int, skb: "SkBuff", par: XtParam, misses: list[str],
                           linear: bool = False) -> tuple[int, Rule | None, bool]:
    """_first_match over every rule from k, noting each miss with the reason its first failing
    match gives ("CHAIN#n: reason"); a SYN in a large ruleset spends its time here.

    A rule the chain's index leaves out because its first check - an ip_packet_match field,
    the index's dimension - fails is noted without running that check: it is the check that
    fails first, and it has no effects.  Every other rule is evaluated (every rule: `linear`).
    The notes of a run of such rules differ only in their rule's "CHAIN#n: field " head (kept
    per chain, _lead_heads) and share the packet's side, so a run is written in one step."""
    rules = chain.rules
    append = misses.append
    texts: dict[str, str] = {}
    cands = candidates(chain, skb, par) if skb.iph is not None and not linear else None
    n = len(rules)
    heads: list[str | None] = []
    lead_text = ""
    if cands is not None:
        heads = _lead_heads(chain)
        dim = chain.xt_index.dim
        first = next((rules[i].checks[0] for i, h in enumerate(heads) if h is not None), None)
        if first is not None:
            lead_text = texts[dim] = first.reason[2](skb, par)
    ci = bisect_left(cands, k) if cands is not None else 0
    while k < n:
        if cands is not None:
            # the rules up to the next candidate: the index's lead rules are known misses
            stop = cands[ci] if ci < len(cands) else n
            while k < stop:
                head = heads[k]
                if head is None:
                    break
                j = k + 1
                while j < stop and heads[j] is not None:
                    j += 1
                misses.extend([h + lead_text for h in heads[k:j]])
                k = j
            if k >= n:
                break
            if k == stop:
                ci += 1
        rule = rules[k]
        m = _failing_check(rule, skb, par)
        if m is None:
            return k, rule, False
        if par.hotdrop:
            return k, rule, True
        label = rule.label
        if not label:
            label = rule.label = f"{chain.name}#{rule.num}: "
        reason = m.reason
        if reason is None:
            append(label + m.why(skb, par))
        else:                               # the packet's side of the reason, once per field and walk
            text = texts.get(reason[1])
            if text is None:
                text = texts[reason[1]] = reason[2](skb, par)
            append(label + reason[0] + text)
        k += 1
    return k, None, False


def _lead_heads(chain: Chain) -> list[str | None]:
    """Per rule of an indexed chain, "CHAIN#n: " and its first check's head when that check is on
    the index's dimension (a rule the index can leave out), else None; kept on the chain's index."""
    ix = chain.xt_index
    heads = ix.heads
    if heads is None or len(heads) != len(chain.rules):
        lead = ix.lead()
        heads = []
        for i, rule in enumerate(chain.rules):
            if i in lead:
                if not rule.label:
                    rule.label = f"{chain.name}#{rule.num}: "
                heads.append(rule.label + rule.checks[0].reason[0])
            else:
                heads.append(None)
        ix.heads = heads
    return heads


def _policy(table: Table, par: XtParam, chain: Chain, length: int, path: list[str],
            misses: list[str] | None, ctx: Any) -> Decision:
    _count(ctx, chain, length)
    text = f"-P {chain.name} {VERDICT_NAMES[chain.policy]}" if ctx.record else ""
    return _finish(Decision(chain.policy, chain.name, 0, text, True, path), misses, ctx)


def _finish(d: Decision, misses: list[str] | None, ctx: Any, note: str = "") -> Decision:
    d.misses = misses
    d.note = note
    return d


# ---- extension registration (parse side) ------------------------------------------

class XtError(Exception):
    """A rule cannot be loaded; the parser adds the file and line."""


@dataclass(slots=True)
class Opt:
    """One extension option as written: `! --dport 22` -> Opt('--dport', ['22'], True)."""

    name: str
    args: list[str]
    invert: bool = False

    @property
    def arg(self) -> str:
        return self.args[0] if self.args else ""


@dataclass(slots=True)
class RuleCtx:
    """What an extension's parser may consult about the rule being loaded."""

    table: str
    chain: str
    proto: int                      # -p value, 0 = any
    inv_proto: bool
    line: int
    host: Any = None                # HostConfig (ipsets, interfaces)


@dataclass(slots=True, frozen=True)
class ExtSpec:
    """A match or target extension: its options (name -> arg count) and its builder.

    The builder turns the parsed options into an XtMatch / XtTarget with closures
    bound to precomputed values, raising XtError for anything the kernel or
    iptables would refuse or that the model does not implement.
    """

    name: str
    options: dict[str, int]
    build: Callable[[list[Opt], RuleCtx], Any]
    aliases: dict[str, str] = field(default_factory=dict)

    def canonical(self, opt: str) -> str | None:
        opt = self.aliases.get(opt, opt)
        return opt if opt in self.options else None
