"""conntrack and state matches (xt_conntrack.c, xt_state.c) over NF-B's nf_conn.

State bits follow the kernel: INVALID when conntrack ran and left no nf_conn,
UNTRACKED for the untracked template (CT --notrack / NOTRACK), otherwise the
ctinfo of the packet (NEW, ESTABLISHED, RELATED; replies fold onto the same bits).
"""
from __future__ import annotations

from typing import Any

from pathtrace.lib.inet import ntoa
from pathtrace.net.netfilter.x_tables import ExtSpec, Opt, RuleCtx, XtError, XtMatch
from pathtrace.net.netfilter.xt_util import parse_addr_mask, parse_port_range, parse_proto

IP_CT_IS_REPLY = 3
IP_CT_UNTRACKED = 7
ST_INVALID, ST_ESTABLISHED, ST_RELATED, ST_NEW, ST_UNTRACKED, ST_SNAT, ST_DNAT = (1 << i for i in range(7))
STATE_BITS = {"INVALID": ST_INVALID, "ESTABLISHED": ST_ESTABLISHED, "RELATED": ST_RELATED, "NEW": ST_NEW,
              "UNTRACKED": ST_UNTRACKED, "SNAT": ST_SNAT, "DNAT": ST_DNAT}
# IPS_* status bits (include/uapi/linux/netfilter/nf_conntrack_common.h)
IPS_EXPECTED, IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED, IPS_SRC_NAT, IPS_DST_NAT = (1 << i for i in range(6))
STATUS_BITS = {"NONE": 0, "EXPECTED": IPS_EXPECTED, "SEEN_REPLY": IPS_SEEN_REPLY, "ASSURED": IPS_ASSURED,
               "CONFIRMED": IPS_CONFIRMED}


def untracked_sentinel() -> Any:
    """NF-B's UNTRACKED conn (imported at rule-load time, not per packet)."""
    try:
        from pathtrace.net.netfilter.nf_conntrack_core import UNTRACKED
        return UNTRACKED
    except ImportError:  # pragma: no cover - conntrack module not built yet
        return None


def ct_tuple(ct: Any, direction: int) -> Any:
    """tuplehash[dir].tuple of NF-B's NfConn (a Tuple: src, dst, proto, sport, dport)."""
    th = getattr(ct, "tuplehash", None)
    if th is not None:
        t = th[direction]
        return getattr(t, "tuple", t)
    return ct.orig if direction == 0 else ct.reply


def state_bit(skb: Any, untracked: Any) -> int:
    ct = skb.ct
    if ct is None:
        return ST_UNTRACKED if skb.ctinfo == IP_CT_UNTRACKED else ST_INVALID
    if ct is untracked:
        return ST_UNTRACKED
    return 1 << (skb.ctinfo % IP_CT_IS_REPLY + 1)


def _names(bits: int, table: dict[str, int]) -> str:
    return ",".join(n for n, b in table.items() if b and bits & b) or "NONE"


def parse_states(text: str, allowed: dict[str, int]) -> int:
    mask = 0
    for s in text.split(","):
        if s.upper() not in allowed:
            raise XtError(f"bad state {s!r}")
        mask |= allowed[s.upper()]
    return mask


def build_state(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    if not opts:
        raise XtError("state match: you must specify \"--state\"")
    o = opts[-1]
    mask = parse_states(o.arg, {k: v for k, v in STATE_BITS.items() if k not in ("SNAT", "DNAT")})
    inv = o.invert
    U = untracked_sentinel()

    def check(skb, par) -> bool:
        return bool(mask & state_bit(skb, U)) != inv

    def why(skb, par) -> str:
        return f"state {'! ' if inv else ''}{_names(mask, STATE_BITS)}: {_names(state_bit(skb, U), STATE_BITS)}"
    return XtMatch("state", check, why, conntrack=True)


def build_conntrack(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    U = untracked_sentinel()
    tests: list[tuple[str, Any]] = []   # (label, fn(skb, ct) -> bool) on a real conn
    state = None
    for o in opts:
        inv = o.invert
        if o.name == "--ctstate":
            state = (parse_states(o.arg, STATE_BITS), inv, o.arg)
        elif o.name == "--ctproto":
            p = parse_proto(o.arg)
            tests.append((f"ctproto {o.arg}", lambda skb, ct, p=p, inv=inv: (ct_tuple(ct, 0).proto == p) != inv))
        elif o.name in ("--ctorigsrc", "--ctorigdst", "--ctreplsrc", "--ctrepldst"):
            a, m = parse_addr_mask(o.arg)
            d = 0 if "orig" in o.name else 1
            field = "src" if o.name.endswith("src") else "dst"
            tests.append((f"{o.name[2:]} {o.arg}", lambda skb, ct, a=a, m=m, d=d, f=field, inv=inv:
                          ((getattr(ct_tuple(ct, d), f) & m) == a) != inv))
        elif o.name in ("--ctorigsrcport", "--ctorigdstport", "--ctreplsrcport", "--ctrepldstport"):
            lo, hi = parse_port_range(o.arg)
            d = 0 if "orig" in o.name else 1
            field = "sport" if "srcport" in o.name else "dport"
            tests.append((f"{o.name[2:]} {o.arg}", lambda skb, ct, lo=lo, hi=hi, d=d, f=field, inv=inv:
                          (lo <= getattr(ct_tuple(ct, d), f) <= hi) != inv))
        elif o.name == "--ctstatus":
            m = parse_states(o.arg, STATUS_BITS)
            tests.append((f"ctstatus {o.arg}", lambda skb, ct, m=m, inv=inv:
                          bool(m & getattr(ct, "status", 0)) != inv))
        elif o.name == "--ctdir":
            if o.arg.upper() not in ("ORIGINAL", "REPLY"):
                raise XtError(f"conntrack: unknown --ctdir {o.arg!r}")
            want_orig = o.arg.upper() == "ORIGINAL"
            tests.append((f"ctdir {o.arg}", lambda skb, ct, w=want_orig: (skb.ctinfo < IP_CT_IS_REPLY) == w))
        elif o.name == "--ctexpire":
            raise XtError("conntrack --ctexpire is not supported by pathtrace")
    checks = tuple(tests)

    def bits(skb) -> int:
        b = state_bit(skb, U)
        ct = skb.ct
        if ct is not None and ct is not U:
            st = getattr(ct, "status", 0)
            if st & IPS_SRC_NAT:
                b |= ST_SNAT
            if st & IPS_DST_NAT:
                b |= ST_DNAT
        return b

    def first_miss(skb) -> str | None:
        if state is not None and bool(state[0] & bits(skb)) == state[1]:
            return f"ctstate {'! ' if state[1] else ''}{state[2]}: {_names(bits(skb), STATE_BITS)}"
        ct = skb.ct
        if ct is None or ct is U:
            return None if state is not None else "no conntrack entry"
        for label, fn in checks:
            if not fn(skb, ct):
                return label
        return None

    def check(skb, par) -> bool:
        if state is not None and bool(state[0] & bits(skb)) == state[1]:
            return False
        ct = skb.ct
        if ct is None or ct is U:
            return state is not None
        for _, fn in checks:
            if not fn(skb, ct):
                return False
        return True

    def why(skb, par) -> str:
        return first_miss(skb) or "conntrack"
    return XtMatch("conntrack", check, why, conntrack=True)


MATCHES = {
    "state": ExtSpec("state", {"--state": 1}, build_state),
    "conntrack": ExtSpec("conntrack", {
        "--ctstate": 1, "--ctproto": 1, "--ctorigsrc": 1, "--ctorigdst": 1, "--ctreplsrc": 1, "--ctrepldst": 1,
        "--ctorigsrcport": 1, "--ctorigdstport": 1, "--ctreplsrcport": 1, "--ctrepldstport": 1,
        "--ctstatus": 1, "--ctexpire": 1, "--ctdir": 1}, build_conntrack),
}
