"""hashlimit (xt_hashlimit.c, revision 3 as iptables 1.8 installs it): per-key token buckets.

Buckets live in the namespace (Netfilter.hashlimit, by --hashlimit-name) and are
shared by every rule naming the same table, as in the kernel.  An entry idle
longer than --hashlimit-htable-expire is treated as garbage-collected (the
kernel's gc runs every gc-interval; the model applies the expiry on lookup).
Credits use 64-bit arithmetic with CREDITS_PER_JIFFY = 2^37 (HZ=1000).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pathtrace.lib.inet import prefix_mask
from pathtrace.net.netfilter.x_tables import ExtSpec, Opt, RuleCtx, XtError, XtMatch
from pathtrace.net.netfilter.xt_limit import HZ, jiffies, parse_rate
from pathtrace.net.netfilter.xt_util import parse_int

XT_HASHLIMIT_SCALE_V2 = 1000000
U64 = (1 << 64) - 1
MAX_CPJ = U64 // (HZ * 60 * 60 * 24)
CREDITS_PER_JIFFY = 1 << (MAX_CPJ.bit_length() - 1)
_PORT_PROTOS = {6, 17, 132, 33, 136}


def user2credits(user: int) -> int:
    if XT_HASHLIMIT_SCALE_V2 >= HZ * CREDITS_PER_JIFFY:
        return user // (XT_HASHLIMIT_SCALE_V2 // (HZ * CREDITS_PER_JIFFY))
    return (user * ((HZ * CREDITS_PER_JIFFY) // XT_HASHLIMIT_SCALE_V2)) & U64


@dataclass(slots=True)
class Bucket:
    prev: int
    credit: int
    cap: int
    cost: int
    expires: int


@dataclass(slots=True)
class HashlimitTable:
    name: str
    entries: dict[tuple, Bucket] = field(default_factory=dict)


def build(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    avg = None
    above = False
    burst = 5
    mode: list[str] = []
    name = None
    expire_ms = 10000
    srcmask = dstmask = 32
    for o in opts:
        if o.invert:
            raise XtError(f"hashlimit: unexpected '!' before {o.name}")
        n = o.name
        if n in ("--hashlimit-upto", "--hashlimit"):
            avg, above = parse_rate(o.arg, XT_HASHLIMIT_SCALE_V2), False
        elif n == "--hashlimit-above":
            avg, above = parse_rate(o.arg, XT_HASHLIMIT_SCALE_V2), True
        elif n == "--hashlimit-burst":
            burst = parse_int(o.arg, 1, 10000, "hashlimit-burst")
        elif n == "--hashlimit-mode":
            mode = o.arg.split(",")
            for m in mode:
                if m not in ("srcip", "dstip", "srcport", "dstport"):
                    raise XtError(f"hashlimit: unknown mode {m!r}")
        elif n == "--hashlimit-name":
            name = o.arg
        elif n == "--hashlimit-htable-expire":
            expire_ms = parse_int(o.arg, 1, 0xFFFFFFFF, "hashlimit-htable-expire")
        elif n == "--hashlimit-srcmask":
            srcmask = parse_int(o.arg, 0, 32, "hashlimit-srcmask")
        elif n == "--hashlimit-dstmask":
            dstmask = parse_int(o.arg, 0, 32, "hashlimit-dstmask")
        elif n in ("--hashlimit-htable-size", "--hashlimit-htable-max", "--hashlimit-htable-gcinterval"):
            parse_int(o.arg, 0, 0xFFFFFFFF, n[2:])
        else:
            raise XtError(f"hashlimit {n} is not supported by pathtrace")
    if avg is None:
        raise XtError("hashlimit: --hashlimit-upto or --hashlimit-above is required")
    if name is None:
        raise XtError("hashlimit: --hashlimit-name is required")
    cap = user2credits(avg * burst)
    if cap < user2credits(avg):
        raise XtError(f"x_tables: hashlimit: overflow, try lower: {avg}/{burst}")
    cost = user2credits(avg)
    smask, dmask = prefix_mask(srcmask), prefix_mask(dstmask)
    use = (("srcip" in mode), ("dstip" in mode), ("srcport" in mode), ("dstport" in mode))
    expire = expire_ms * HZ // 1000

    def key(skb, par) -> tuple | None:
        iph = skb.iph
        k = (iph.saddr & smask if use[0] else 0, iph.daddr & dmask if use[1] else 0)
        if not (use[2] or use[3]):
            return k
        sp = dp = 0
        if iph.protocol in _PORT_PROTOS:
            if par.fragoff or len(skb.payload) < 4:
                return None
            sp, dp = struct.unpack_from("!HH", skb.payload, 0)
        return k + (sp if use[2] else 0, dp if use[3] else 0)

    def check(skb, par) -> bool:
        k = key(skb, par)
        if k is None:
            par.hotdrop = True
            return False
        now = jiffies(skb.ctx.now)
        table = par.nf.hashlimit.setdefault(name, HashlimitTable(name))
        b = table.entries.get(k)
        if b is None or now > b.expires:
            b = table.entries[k] = Bucket(now, cap, cap, cost, now + expire)
        else:
            b.expires = now + expire
            delta = now - b.prev
            if delta:
                b.prev = now
                b.credit = min((b.credit + delta * CREDITS_PER_JIFFY) & U64, b.cap)
        if b.credit >= b.cost:
            b.credit -= b.cost
            return not above
        return above

    def why(skb, par) -> str:
        return f"hashlimit {name}: {'under' if above else 'over'} the rate"
    return XtMatch("hashlimit", check, why)


_OPTS = {o: 1 for o in ("--hashlimit-upto", "--hashlimit-above", "--hashlimit", "--hashlimit-burst",
                        "--hashlimit-mode", "--hashlimit-name", "--hashlimit-htable-expire", "--hashlimit-srcmask",
                        "--hashlimit-dstmask", "--hashlimit-htable-size", "--hashlimit-htable-max",
                        "--hashlimit-htable-gcinterval", "--hashlimit-rate-interval")} | {"--hashlimit-rate-match": 0}
MATCHES = {"hashlimit": ExtSpec("hashlimit", _OPTS, build)}
