"""iprange (xt_iprange.c): inclusive address ranges for source and/or destination."""
from __future__ import annotations

from pathtrace.lib.inet import ntoa
from pathtrace.net.netfilter.x_tables import ExtSpec, Opt, RuleCtx, XtError, XtMatch
from pathtrace.net.netfilter.xt_util import parse_addr


def _range(text: str) -> tuple[int, int]:
    lo_t, dash, hi_t = text.partition("-")
    lo = parse_addr(lo_t)
    hi = parse_addr(hi_t) if dash else lo
    return lo, hi


def build(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    src = dst = None
    for o in opts:
        if o.name == "--src-range":
            src = (*_range(o.arg), o.invert)
        else:
            dst = (*_range(o.arg), o.invert)
    if src is None and dst is None:
        raise XtError("iprange match: needs --src-range or --dst-range")

    def check(skb, par) -> bool:
        if src is not None and (src[0] <= skb.iph.saddr <= src[1]) == src[2]:
            return False
        if dst is not None and (dst[0] <= skb.iph.daddr <= dst[1]) == dst[2]:
            return False
        return True

    def why(skb, par) -> str:
        if src is not None and (src[0] <= skb.iph.saddr <= src[1]) == src[2]:
            return f"src-range {'! ' if src[2] else ''}{ntoa(src[0])}-{ntoa(src[1])}: {ntoa(skb.iph.saddr)}"
        return f"dst-range {'! ' if dst[2] else ''}{ntoa(dst[0])}-{ntoa(dst[1])}: {ntoa(skb.iph.daddr)}"
    return XtMatch("iprange", check, why)


MATCHES = {"iprange": ExtSpec("iprange", {"--src-range": 1, "--dst-range": 1}, build)}
