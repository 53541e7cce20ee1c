"""Policy routing (net/core/fib_rules.c + net/ipv4/fib_rules.c): rules walked by priority."""
from __future__ import annotations

from dataclasses import dataclass

from pathtrace.host.model import RuleConfig
from pathtrace.lib.inet import prefix_mask


@dataclass(slots=True)
class Flowi4:
    """struct flowi4: the key of a route lookup."""

    daddr: int
    saddr: int = 0
    iif: str | None = None      # input device name ('lo' for output lookups)
    oif: str | None = None
    mark: int = 0
    tos: int = 0


def fib_rule_match(rule: RuleConfig, fl: Flowi4) -> bool:
    """fib_rule_match + fib4_rule_match, including `not`."""
    ok = True
    if rule.iif is not None and rule.iif != fl.iif:
        ok = False
    elif rule.oif is not None and rule.oif != fl.oif:
        ok = False
    elif rule.fwmark is not None and (fl.mark ^ rule.fwmark[0]) & rule.fwmark[1]:
        ok = False
    elif rule.src is not None and (fl.saddr & prefix_mask(rule.src[1])) != rule.src[0]:
        ok = False
    elif rule.dst is not None and (fl.daddr & prefix_mask(rule.dst[1])) != rule.dst[0]:
        ok = False
    elif rule.tos is not None and rule.tos != (fl.tos & 0x1C):
        ok = False
    return ok != rule.invert
