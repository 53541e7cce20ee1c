"""mark and connmark matches (xt_mark.c, xt_connmark.c): (mark & mask) == value."""
from __future__ import annotations

from pathtrace.net.netfilter.x_tables import ExtSpec, Opt, RuleCtx, XtError, XtMatch
from pathtrace.net.netfilter.xt_util import parse_value_mask


def _one(opts: list[Opt], name: str, match: str) -> Opt:
    if not opts:
        raise XtError(f"{match} match: {name} is required")
    return opts[-1]


def build_mark(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    o = _one(opts, "--mark", "mark")
    value, mask = parse_value_mask(o.arg, "mark")
    inv = o.invert

    def check(skb, par) -> bool:
        return ((skb.mark & mask) == value) != inv

    def why(skb, par) -> str:
        return f"mark {'! ' if inv else ''}{value:#x}/{mask:#x}: {skb.mark:#x}"
    return XtMatch("mark", check, why)


def build_connmark(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    from pathtrace.net.netfilter.xt_conntrack import untracked_sentinel
    o = _one(opts, "--mark", "connmark")
    value, mask = parse_value_mask(o.arg, "connmark")
    inv = o.invert
    U = untracked_sentinel()

    def check(skb, par) -> bool:
        ct = skb.ct
        if ct is None or ct is U:
            return False
        return ((ct.mark & mask) == value) != inv

    def why(skb, par) -> str:
        ct = skb.ct
        if ct is None or ct is U:
            return "connmark: no conntrack entry"
        return f"connmark {'! ' if inv else ''}{value:#x}/{mask:#x}: {ct.mark:#x}"
    return XtMatch("connmark", check, why, conntrack=True)


MATCHES = {
    "mark": ExtSpec("mark", {"--mark": 1}, build_mark),
    "connmark": ExtSpec("connmark", {"--mark": 1}, build_connmark),
}
