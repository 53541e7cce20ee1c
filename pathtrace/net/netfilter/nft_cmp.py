"""Comparisons (nft_cmp.c, nft_range.c, nft_bitwise.c): a loaded value against the rule's constant.

nft compiles `x 10.0.0.0/8` to bitwise-and then cmp, `x 1-5` to a range, a bitmask
type's bare list (`ct state established,related`) to `(x & mask) != 0`, and
`x v / mask` to `(x & mask) == v`.  Interface names compare as strings; a trailing '*'
compares the prefix only (nft_cmp on the name's leading bytes).
"""
from __future__ import annotations

import operator
from typing import Any, Callable

OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt, "<=": operator.le, ">=": operator.ge,
}
Test = Callable[[Any], bool]


def nft_cmp(op: str, value: Any) -> Test:
    """cmp OP value; a str value ending in '*' is an interface-name prefix."""
    if isinstance(value, str) and value.endswith("*") and op in ("==", "!="):
        pre = value[:-1]
        want = op == "=="
        return lambda v: isinstance(v, str) and v.startswith(pre) == want
    f = OPS[op]
    return lambda v: f(v, value)


def nft_range(lo: int, hi: int, negate: bool = False) -> Test:
    """nft_range_eval: lo <= x <= hi (NFT_RANGE_EQ) or its negation (NFT_RANGE_NEQ)."""
    if negate:
        return lambda v: not lo <= v <= hi
    return lambda v: lo <= v <= hi


def nft_bitwise_cmp(mask: int, op: str, value: int) -> Test:
    """bitwise reg & mask, then cmp OP value."""
    f = OPS[op]
    return lambda v: f(v & mask, value)
