"""owner (xt_owner.c) on the output path.

The model's local sockets carry no credentials unless the stack sets `skb.sk.uid`
/ `skb.sk.gid`; without a socket (or without credentials) the kernel's rule
applies: the match succeeds only when every given test is inverted.
"""
from __future__ import annotations

from pathtrace.net.netfilter.x_tables import (
    NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING, ExtSpec, Opt, RuleCtx, XtError, XtMatch, hook_mask,
)
from pathtrace.net.netfilter.xt_util import parse_int

_NAMES = {"root": 0}


def _id_range(text: str, what: str) -> tuple[int, int]:
    lo_t, dash, hi_t = text.partition("-")
    if not lo_t.isdigit() and lo_t not in _NAMES:
        raise XtError(f"owner: user/group name {text!r} cannot be resolved in a replay: use a number")
    lo = _NAMES[lo_t] if lo_t in _NAMES else parse_int(lo_t, 0, 0xFFFFFFFE, what)
    hi = parse_int(hi_t, 0, 0xFFFFFFFE, what) if dash else lo
    return lo, hi


def build(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    tests = []
    for o in opts:
        if o.name == "--uid-owner":
            tests.append(("uid", *_id_range(o.arg, "UID"), o.invert))
        elif o.name == "--gid-owner":
            tests.append(("gid", *_id_range(o.arg, "GID"), o.invert))
        elif o.name == "--socket-exists":
            tests.append(("sock", 0, 0, o.invert))
        else:
            raise XtError(f"owner {o.name} is not supported by pathtrace")
    if not tests:
        raise XtError("owner match: needs --uid-owner, --gid-owner or --socket-exists")
    all_inverted = all(t[3] for t in tests)

    def check(skb, par) -> bool:
        sk = skb.sk
        if sk is None or getattr(sk, "uid", None) is None:
            return all_inverted
        for kind, lo, hi, inv in tests:
            if kind == "sock":
                if inv:
                    return False
                continue
            v = getattr(sk, kind, 0)
            if (lo <= v <= hi) == inv:
                return False
        return True

    return XtMatch("owner", check, lambda skb, par: "owner: socket credentials do not match"
                   if skb.sk is not None and getattr(skb.sk, "uid", None) is not None else "owner: no local socket",
                   hooks=hook_mask(NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING))


MATCHES = {"owner": ExtSpec("owner", {"--uid-owner": 1, "--gid-owner": 1, "--socket-exists": 0,
                                      "--suppl-groups": 0}, build)}
