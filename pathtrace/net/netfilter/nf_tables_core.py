"""nft_do_chain (net/netfilter/nf_tables_core.c): a base chain's rules as the kernel runs them.

Each rule's expressions run in order until one breaks (the rule does not match) or sets a
verdict.  jump pushes the next rule on a stack of NFT_JUMP_STACK_SIZE, goto does not,
return (or a regular chain's end) pops it; the base chain's end is its policy.  The
recorded step names table, chain and rule (handle and text) as `nft monitor trace` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pathtrace.net.netfilter.nf_tables_api import (
    NFT_BREAK, NFT_CONTINUE, NFT_GOTO, NFT_JUMP, NFT_JUMP_STACK_SIZE, NFT_RETURN, VERDICT_TEXT, NftChain, NftRule,
)
from pathtrace.net.netfilter_hooks import NF_DROP

NFT_PKTINFO_L4PROTO = 1
IP_OFFSET = 0x1FFF


@dataclass(slots=True)
class NftPktinfo:
    """struct nft_pktinfo: the packet and where it is; `chain` is a jump/goto's destination."""

    skb: Any
    nf: Any
    hook: int
    indev: Any
    outdev: Any
    tprot: int = 0
    thoff: int = 0
    fragoff: int = 0
    flags: int = 0
    chain: NftChain | None = None               # regs->verdict.chain
    misses: list[str] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def net(self) -> Any:
        return self.nf.net


def nft_set_pktinfo_ipv4(pkt: NftPktinfo) -> None:
    """nft_set_pktinfo_ipv4: protocol, transport offset and fragment offset from the IP header."""
    iph = pkt.skb.iph
    if iph is None:
        return
    pkt.tprot = iph.protocol
    pkt.thoff = iph.ihl * 4
    pkt.fragoff = iph.frag_off & IP_OFFSET
    pkt.flags = NFT_PKTINFO_L4PROTO


@dataclass(slots=True)
class NftDecision:
    verdict: int
    chain: str
    rule: int                                   # handle; 0 = the base chain's policy
    text: str
    policy: bool
    path: list[str]
    misses: list[str] | None = None


def _count(ctx: Any, obj: Any, length: int) -> None:
    """Bump a tally (rule, counter statement, policy); the replay cache repeats what it saw here."""
    obj.pkts += 1
    obj.bytes += length
    if ctx.counted is not None:
        ctx.counted.append(obj)


def _run_rule(rule: NftRule, pkt: NftPktinfo) -> int:
    for e in rule.exprs:
        v = e.fn(pkt)
        if v != NFT_CONTINUE:
            if v == NFT_BREAK and pkt.misses is not None:
                reason = e.why(pkt) if e.why is not None else f"{e.text} does not match"
                pkt.misses.append(f"{rule.chain}#{rule.handle}: {reason}")
            return v
    return NFT_CONTINUE


def nft_do_chain(pkt: NftPktinfo, basechain: NftChain) -> NftDecision:
    """Run `basechain` on the packet; the decision names the rule that gave the verdict."""
    skb = pkt.skb
    ctx = skb.ctx
    length = skb.len
    record = ctx.record
    if record:
        pkt.misses = []
    chain = basechain
    stack: list[tuple[NftChain, int]] = []
    path = [chain.name]
    idx = 0
    while True:
        rules = chain.rules
        verdict = NFT_CONTINUE
        rule = None
        while idx < len(rules):
            rule = rules[idx]
            idx += 1
            verdict = _run_rule(rule, pkt)
            if verdict == NFT_BREAK:
                verdict = NFT_CONTINUE
                continue
            _count(ctx, rule, length)
            if verdict == NFT_CONTINUE:
                continue
            break
        else:
            rule = None
        if verdict >= 0:
            return NftDecision(verdict, chain.name, rule.handle, rule.text, False, path, pkt.misses)
        if verdict in (NFT_JUMP, NFT_GOTO):
            target = pkt.chain
            if verdict == NFT_JUMP:
                if len(stack) >= NFT_JUMP_STACK_SIZE:       # the kernel refuses such rulesets at load (ELOOP)
                    return NftDecision(NF_DROP, chain.name, rule.handle, rule.text, False, path, pkt.misses)
                stack.append((chain, idx))
            chain, idx = target, 0
            if record:
                path.append(("" if verdict == NFT_JUMP else "goto ") + chain.name)
            continue
        # NFT_RETURN, or the end of the chain
        if stack:
            chain, idx = stack.pop()
            if record:
                path.append(chain.name)
            continue
        _count(ctx, basechain, length)
        return NftDecision(basechain.policy, basechain.name, 0, f"policy {VERDICT_TEXT[basechain.policy]}", True,
                           path, pkt.misses)
