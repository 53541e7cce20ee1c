"""policy (xt_policy.c).  There is no xfrm model: no packet has an IPsec sec path or
policy, so `--pol none` always matches and `--pol ipsec` never does (whatever
--reqid/--spi/--mode/--tunnel-* say)."""
from __future__ import annotations

from pathtrace.net.netfilter.x_tables import (
    NF_INET_FORWARD, NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING, NF_INET_PRE_ROUTING, ExtSpec, Opt,
    RuleCtx, XtError, XtMatch, hook_mask,
)


def build(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    d = [o for o in opts if o.name == "--dir"]
    p = [o for o in opts if o.name == "--pol"]
    if not d or not p:
        raise XtError("policy match: both --dir and --pol are required")
    direction, pol = d[-1].arg, p[-1].arg
    if direction not in ("in", "out") or pol not in ("none", "ipsec"):
        raise XtError(f"policy match: bad --dir {direction!r} or --pol {pol!r}")
    hooks = (hook_mask(NF_INET_PRE_ROUTING, NF_INET_LOCAL_IN, NF_INET_FORWARD) if direction == "in"
             else hook_mask(NF_INET_POST_ROUTING, NF_INET_LOCAL_OUT, NF_INET_FORWARD))
    result = pol == "none"
    return XtMatch("policy", lambda skb, par: result,
                   lambda skb, par: f"policy --pol {pol}: packet has no IPsec policy (xfrm not modelled)", hooks=hooks)


MATCHES = {"policy": ExtSpec("policy", {"--dir": 1, "--pol": 1, "--strict": 0, "--reqid": 1, "--spi": 1,
                                        "--proto": 1, "--mode": 1, "--tunnel-src": 1, "--tunnel-dst": 1,
                                        "--next": 0}, build)}
