"""set match and SET target (xt_set.c) over the ipsets of the host file."""
from __future__ import annotations

import struct

from pathtrace.net.netfilter.ipset import load_ipsets
from pathtrace.net.netfilter.x_tables import XT_CONTINUE, ExtSpec, Opt, RuleCtx, XtError, XtMatch, XtTarget

_PORT_PROTOS = {6, 17, 132, 136}


def _flags(text: str) -> tuple[bool, ...]:
    out = []
    for f in text.split(","):
        if f not in ("src", "dst"):
            raise XtError(f"set: bad direction flag {f!r} (src or dst)")
        out.append(f == "dst")
    return tuple(out)


def _lookup(ctx: RuleCtx, name: str):
    sets = getattr(ctx.host, "ipsets", None) or {}
    if name not in sets:
        raise XtError(f"Set {name} doesn't exist (not in the host file's ipsets)")
    return load_ipsets({name: sets[name]})[name]


def _key(skb, par, flags: tuple[bool, ...]) -> tuple[int, int, int] | None:
    iph = skb.iph
    addr = iph.daddr if flags[0] else iph.saddr
    if len(flags) < 2:
        return addr, 0, 0
    proto = iph.protocol
    if proto in _PORT_PROTOS:
        if par.fragoff or len(skb.payload) < 4:
            return None
        sp, dp = struct.unpack_from("!HH", skb.payload, 0)
        return addr, proto, dp if flags[1] else sp
    if proto == 1:
        if par.fragoff or len(skb.payload) < 2:
            return None
        return addr, proto, (skb.payload[0] << 8) | skb.payload[1]
    return addr, proto, 0


def build_match(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    ms = [o for o in opts if o.name == "--match-set"]
    if not ms:
        raise XtError("set match: --match-set NAME FLAGS is required")
    for o in opts:
        if o.name != "--match-set":
            raise XtError(f"set {o.name} is not supported by pathtrace")
    o = ms[-1]
    name, flags, inv = o.args[0], _flags(o.args[1]), o.invert
    s = _lookup(ctx, name)
    if len(flags) < s.dims:
        raise XtError(f"set {name}: {s.dims} dimensions but only {len(flags)} direction flags")

    def check(skb, par) -> bool:
        k = _key(skb, par, flags[: s.dims])
        live = par.nf.ipsets.get(name, s)
        return (k is not None and live.test(*k)) != inv

    return XtMatch("set", check, lambda skb, par: f"set {'! ' if inv else ''}{name} {o.args[1]}: not a member"
                   if not inv else f"set ! {name}: member")


def build_target(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    ops = []
    for o in opts:
        if o.name in ("--add-set", "--del-set"):
            s = _lookup(ctx, o.args[0])
            ops.append((o.name == "--add-set", o.args[0], _flags(o.args[1])[: s.dims]))
        elif o.name != "--exist":
            raise XtError(f"SET {o.name} is not supported by pathtrace")
    if not ops:
        raise XtError("SET target: --add-set or --del-set is required")

    def fn(skb, par) -> int:
        for add, name, flags in ops:
            k = _key(skb, par, flags)
            s = par.nf.ipsets.get(name)
            if k is None or s is None:
                continue
            (s.add if add else s.delete)(*k)
        skb.ctx.step("set_target_v3", ops=", ".join(f"{'add' if a else 'del'} {n}" for a, n, _ in ops))
        return XT_CONTINUE
    return XtTarget("SET", "ext", fn=fn)


MATCHES = {"set": ExtSpec("set", {"--match-set": 2, "--return-nomatch": 0, "--update-counters": 0,
                                  "--update-subcounters": 0, "--packets-eq": 1, "--bytes-eq": 1}, build_match,
                          {"--set": "--match-set"})}
TARGETS = {"SET": ExtSpec("SET", {"--add-set": 2, "--del-set": 2, "--exist": 0, "--timeout": 1}, build_target)}
