"""Set and map lookups (nft_lookup.c, nft_dynset's elements, nft_set_rbtree/hash/pipapo).

An element key is, per concatenated field, an inclusive (lo, hi) range - a single
value, a prefix or an interval - or an interface name ('*' suffix: a prefix).  The
kernel picks a set backend by the set's flags; every backend answers the same
membership question, so one linear match stands for them.  Maps return the element's
data, verdict maps its verdict.
"""
from __future__ import annotations

from typing import Any

from pathtrace.net.netfilter.nf_tables_api import NftSet, SetElem


def _field_match(f: Any, v: Any) -> bool:
    if isinstance(f, str):
        if not isinstance(v, str):
            return False
        return v.startswith(f[:-1]) if f.endswith("*") else v == f
    if v is None or isinstance(v, str):
        return False
    return f[0] <= v <= f[1]


def nft_set_lookup(s: NftSet, value: Any) -> SetElem | None:
    """The element the value (a scalar, or a tuple for a concatenation) falls in, or None."""
    if len(s.key_types) == 1:
        for e in s.elements:
            if _field_match(e.key[0], value):
                return e
        return None
    for e in s.elements:
        if all(_field_match(f, v) for f, v in zip(e.key, value)):
            return e
    return None


def describe_value(v: Any) -> str:
    from pathtrace.lib.inet import ntoa
    if isinstance(v, tuple):
        return " . ".join(describe_value(x) for x in v)
    if isinstance(v, int) and v > 0xFFFF:
        return ntoa(v) if v <= 0xFFFFFFFF else hex(v)
    return str(v)
