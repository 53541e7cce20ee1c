"""limit (xt_limit.c): a token bucket in jiffies, with the kernel's u32 credit arithmetic.

HZ is taken as 1000 (CONFIG_HZ_1000); jiffies = floor(skb.ctx.now * HZ).  The
bucket is full when the rule first sees a packet (a ruleset loaded long before the
capture has a full bucket by then).
"""
from __future__ import annotations

from dataclasses import dataclass

from pathtrace.net.netfilter.x_tables import ExtSpec, Opt, RuleCtx, XtError, XtMatch
from pathtrace.net.netfilter.xt_util import parse_int

HZ = 1000
XT_LIMIT_SCALE = 10000
U32 = 0xFFFFFFFF


def _pow2_below32(x: int) -> int:
    p = 1
    while p * 2 <= x:
        p *= 2
    return p


MAX_CPJ = U32 // (HZ * 60 * 60 * 24)
CREDITS_PER_JIFFY = _pow2_below32(MAX_CPJ)      # 32 with HZ=1000


def user2credits(user: int) -> int:
    user &= U32
    if user > U32 // (HZ * CREDITS_PER_JIFFY):
        return ((user // XT_LIMIT_SCALE) * HZ * CREDITS_PER_JIFFY) & U32
    return ((user * HZ * CREDITS_PER_JIFFY) // XT_LIMIT_SCALE) & U32


def parse_rate(text: str, scale: int = XT_LIMIT_SCALE) -> int:
    """libxt_limit parse_rate: '3/hour' -> scale * 3600 / 3 (unit names may be abbreviated)."""
    num, slash, unit = text.partition("/")
    mult = 1
    if slash:
        for name, m in (("second", 1), ("minute", 60), ("hour", 3600), ("day", 86400)):
            if unit and name.startswith(unit.lower()):
                mult = m
                break
        else:
            raise XtError(f"bad rate {text!r}")
    digits = ""
    for c in num:
        if not "0" <= c <= "9":       # strtoul's digits (str.isdigit also takes '²')
            break
        digits += c
    r = int(digits) if 0 < len(digits) <= 20 else 0
    if not r:
        raise XtError(f"bad rate {text!r}")
    val = scale * mult // r
    if val == 0:
        raise XtError(f"Rate too fast \"{text}\"")
    return val


@dataclass(slots=True)
class LimitState:
    prev: int | None = None
    credit: int = 0


def jiffies(now: float) -> int:
    return int(now * HZ)


def build(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    avg = parse_rate("3/hour")
    burst = 5
    for o in opts:
        if o.invert:
            raise XtError(f"limit does not support invert ({o.name})")
        if o.name == "--limit":
            avg = parse_rate(o.arg)
        else:
            burst = parse_int(o.arg, 0, 10000, "limit-burst")
    legacy = getattr(ctx.host, "iptables_backend", "nft") == "legacy"
    if burst == 0 or (legacy and user2credits(avg * burst) < user2credits(avg)):
        # limit_mt_check; iptables-nft turns -m limit into a native nft limit, which has no such check
        raise XtError(f"x_tables: limit: Overflow, try lower: {avg}/{burst} (ERANGE)")
    wrap = U32 if legacy else (1 << 128) - 1     # nft_limit keeps 64-bit nanosecond tokens: no 32-bit wrap
    cap = user2credits(avg * burst) if legacy else (avg * burst * HZ * CREDITS_PER_JIFFY) // XT_LIMIT_SCALE
    cost = user2credits(avg) if legacy else (avg * HZ * CREDITS_PER_JIFFY) // XT_LIMIT_SCALE
    st = LimitState()

    def check(skb, par) -> bool:
        now = jiffies(skb.ctx.now)
        if st.prev is None:
            st.prev, st.credit = now, cap
        credit = (st.credit + ((now - st.prev) * CREDITS_PER_JIFFY)) & wrap
        st.prev = now
        if credit > cap:
            credit = cap
        if credit >= cost:
            st.credit = credit - cost
            return True
        st.credit = credit
        return False

    def why(skb, par) -> str:
        return f"limit: over the rate (credit {st.credit} < cost {cost})"
    m = XtMatch("limit", check, why, info=st)      # info: the bucket, which the megaflow cache saves and restores
    return m


MATCHES = {"limit": ExtSpec("limit", {"--limit": 1, "--limit-burst": 1}, build)}
