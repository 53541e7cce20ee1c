"""Stateless header matches: length, ttl, tos, dscp, pkttype, mac, comment."""
from __future__ import annotations

from pathtrace.lib.inet import mac_ntoa, parse_mac
from pathtrace.net.netfilter.x_tables import (
    NF_INET_FORWARD, NF_INET_LOCAL_IN, NF_INET_PRE_ROUTING, ExtSpec, Opt, RuleCtx, XtError, XtMatch, hook_mask,
)
from pathtrace.net.netfilter.xt_util import parse_int

PKT_TYPES = {"unicast": 0, "host": 0, "broadcast": 1, "multicast": 2, "otherhost": 3, "outgoing": 4,
             "loopback": 5}
TOS_NAMES = {"minimize-delay": 0x10, "maximize-throughput": 0x08, "maximize-reliability": 0x04,
             "minimize-cost": 0x02, "normal-service": 0x00}
DSCP_CLASSES = {"CS0": 0, "CS1": 8, "CS2": 16, "CS3": 24, "CS4": 32, "CS5": 40, "CS6": 48, "CS7": 56, "BE": 0,
                "AF11": 10, "AF12": 12, "AF13": 14, "AF21": 18, "AF22": 20, "AF23": 22, "AF31": 26, "AF32": 28,
                "AF33": 30, "AF41": 34, "AF42": 36, "AF43": 38, "EF": 46}


def parse_dscp(arg: str, by_class: bool, who: str) -> int:
    """A DSCP as --dscp/--set-dscp (0-63) or --dscp-class/--set-dscp-class (CS1, AF41, EF...) spell it."""
    if by_class:
        if arg.upper() not in DSCP_CLASSES:
            raise XtError(f"{who}: unknown class {arg!r}")
        return DSCP_CLASSES[arg.upper()]
    return parse_int(arg, 0, 0x3F, "DSCP")


def _last(opts: list[Opt], what: str) -> Opt:
    if not opts:
        raise XtError(f"{what} match: an option is required")
    return opts[-1]


def build_length(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    o = _last(opts, "length")
    lo_t, colon, hi_t = o.arg.partition(":")
    lo = parse_int(lo_t or "0", 0, 65535, "length")
    hi = parse_int(hi_t or "65535", 0, 65535, "length") if colon else lo
    inv = o.invert
    return XtMatch("length", lambda skb, par: (lo <= skb.iph.tot_len <= hi) != inv,
                   lambda skb, par: f"length {'! ' if inv else ''}{o.arg}: {skb.iph.tot_len}")


def build_ttl(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    o = _last(opts, "ttl")
    v = parse_int(o.arg, 0, 255, "TTL")
    if o.name == "--ttl-eq":
        fn = (lambda t: t != v) if o.invert else (lambda t: t == v)
    elif o.invert:
        raise XtError(f"ttl: unexpected '!' with {o.name}")
    elif o.name == "--ttl-lt":
        fn = lambda t: t < v
    else:
        fn = lambda t: t > v
    return XtMatch("ttl", lambda skb, par: fn(skb.iph.ttl),
                   lambda skb, par: f"ttl {'! ' if o.invert else ''}{o.name[2:]} {v}: {skb.iph.ttl}")


def build_tos(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    o = _last(opts, "tos")
    name = o.arg.lower()
    if name in TOS_NAMES:
        value, mask = TOS_NAMES[name], 0x3F
    else:
        v_t, slash, m_t = o.arg.partition("/")
        value = parse_int(v_t, 0, 255, "TOS")
        mask = parse_int(m_t, 0, 255, "TOS mask") if slash else 0xFF
    inv = o.invert
    return XtMatch("tos", lambda skb, par: ((skb.iph.tos & mask) == value) != inv,
                   lambda skb, par: f"tos {'! ' if inv else ''}{value:#x}/{mask:#x}: {skb.iph.tos:#x}")


def build_dscp(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    o = _last(opts, "dscp")
    v = parse_dscp(o.arg, o.name == "--dscp-class", "dscp")
    inv = o.invert
    return XtMatch("dscp", lambda skb, par: ((skb.iph.tos >> 2) == v) != inv,
                   lambda skb, par: f"dscp {'! ' if inv else ''}{v:#x}: {skb.iph.tos >> 2:#x}")


def build_pkttype(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    o = _last(opts, "pkttype")
    if o.arg.lower() not in PKT_TYPES:
        raise XtError(f"pkttype: unknown packet type {o.arg!r}")
    want = PKT_TYPES[o.arg.lower()]
    inv = o.invert

    def ptype(skb) -> int:
        if skb.pkt_type != 5:
            return skb.pkt_type
        return 2 if (skb.iph.daddr & 0xF0000000) == 0xE0000000 else 1

    return XtMatch("pkttype", lambda skb, par: (ptype(skb) == want) != inv,
                   lambda skb, par: f"pkt-type {'! ' if inv else ''}{o.arg}: {ptype(skb)}")


def build_mac(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    o = _last(opts, "mac")
    try:
        mac = parse_mac(o.arg)
    except ValueError as e:
        raise XtError(str(e)) from None
    inv = o.invert

    def check(skb, par) -> bool:
        dev = skb.dev
        if dev is None or dev.loopback:          # not ARPHRD_ETHER: no match even inverted
            return False
        return (skb.mac_src == mac) != inv

    return XtMatch("mac", check, lambda skb, par: f"mac-source {'! ' if inv else ''}{o.arg}: {mac_ntoa(skb.mac_src)}",
                   hooks=hook_mask(NF_INET_PRE_ROUTING, NF_INET_LOCAL_IN, NF_INET_FORWARD))


def build_comment(opts: list[Opt], ctx: RuleCtx) -> list[XtMatch]:
    for o in opts:
        if len(o.arg) > 255:
            raise XtError("comment: comment too long (max 255 characters)")
    return []   # xt_comment always matches: nothing to check per packet


MATCHES = {
    "length": ExtSpec("length", {"--length": 1}, build_length),
    "ttl": ExtSpec("ttl", {"--ttl-eq": 1, "--ttl-lt": 1, "--ttl-gt": 1}, build_ttl),
    "tos": ExtSpec("tos", {"--tos": 1}, build_tos),
    "dscp": ExtSpec("dscp", {"--dscp": 1, "--dscp-class": 1}, build_dscp),
    "pkttype": ExtSpec("pkttype", {"--pkt-type": 1}, build_pkttype),
    "mac": ExtSpec("mac", {"--mac-source": 1}, build_mac),
    "comment": ExtSpec("comment", {"--comment": 1}, build_comment),
}
