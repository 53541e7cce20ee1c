"""tcp, udp and icmp matches (xt_tcpudp.c, ip_tables.c icmp_match).

Non-first fragments never match; a truncated header (or the 'evil' TCP fragment at
offset 1) sets hotdrop, which ends ipt_do_table with NF_DROP as the kernel does.
"""
from __future__ import annotations

import struct

from pathtrace.net.netfilter.x_tables import ExtSpec, Opt, RuleCtx, XtError, XtMatch
from pathtrace.net.netfilter.xt_util import fmt_range, no_invert, parse_int, parse_port_range

TCP_FLAGS = {"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10, "URG": 0x20,
             "ECE": 0x40, "CWR": 0x80, "ALL": 0xFF, "NONE": 0}


def parse_flags(text: str) -> int:
    v = 0
    for name in text.split(","):
        if name.upper() not in TCP_FLAGS:
            raise XtError(f"unknown TCP flag {name!r}")
        v |= TCP_FLAGS[name.upper()]
    return v


def fmt_flags(v: int) -> str:
    names = [n for n, b in TCP_FLAGS.items() if b and b != 0xFF and v & b]
    return ",".join(names) or "NONE"


def _ports(opts: list[Opt], name: str) -> tuple[int, int, bool] | None:
    o = [x for x in opts if x.name == name]
    if not o:
        return None
    lo, hi = parse_port_range(o[-1].arg)
    return lo, hi, o[-1].invert


def _need_proto(ctx: RuleCtx, proto: int, name: str) -> None:
    if ctx.proto != proto or ctx.inv_proto:
        raise XtError(f"x_tables: ip_tables: {name} match: only valid for protocol {proto} (use -p {name})")


def _tcp_find_option(payload: bytearray, doff: int, option: int) -> bool | None:
    """Walk the TCP options; None when the header is truncated (hotdrop)."""
    if len(payload) < doff:
        return None
    i = 20
    while i < doff:
        kind = payload[i]
        if kind == option:
            return True
        if kind < 2:
            i += 1
        else:
            ln = payload[i + 1] if i + 1 < doff else 0
            i += ln or 1
    return False


def build_tcp(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    _need_proto(ctx, 6, "tcp")
    sp = _ports(opts, "--sport") or (0, 65535, False)
    dp = _ports(opts, "--dport") or (0, 65535, False)
    fmask = fcmp = 0
    finv = False
    have_flags = False
    option = 0
    oinv = False
    for o in opts:
        if o.name == "--tcp-flags":
            fmask, fcmp, finv, have_flags = parse_flags(o.args[0]), parse_flags(o.args[1]), o.invert, True
        elif o.name == "--syn":
            fmask, fcmp, finv, have_flags = 0x17, 0x02, o.invert, True
        elif o.name == "--tcp-option":
            option, oinv = parse_int(o.arg, 1, 255, "TCP option"), o.invert
    slo, shi, sinv = sp
    dlo, dhi, dinv = dp

    def check(skb, par) -> bool:
        if par.fragoff:
            if par.fragoff == 1:
                par.hotdrop = True
            return False
        p = skb.payload
        if len(p) < 20:
            par.hotdrop = True
            return False
        sport, dport = struct.unpack_from("!HH", p, 0)
        if (slo <= sport <= shi) == sinv or (dlo <= dport <= dhi) == dinv:
            return False
        if ((p[13] & fmask) == fcmp) == finv:
            return False
        if option:
            doff = (p[12] >> 4) * 4
            if doff < 20:
                par.hotdrop = True
                return False
            found = _tcp_find_option(p, doff, option)
            if found is None:
                par.hotdrop = True
                return False
            return found != oinv
        return True

    def why(skb, par) -> str:
        if par.fragoff or len(skb.payload) < 20:
            return "tcp: non-first fragment or truncated header"
        sport, dport = struct.unpack_from("!HH", skb.payload, 0)
        if (slo <= sport <= shi) == sinv:
            return f"sport {'! ' if sinv else ''}{fmt_range(slo, shi)} != {sport}"
        if (dlo <= dport <= dhi) == dinv:
            return f"dport {'! ' if dinv else ''}{fmt_range(dlo, dhi)} != {dport}"
        if have_flags and ((skb.payload[13] & fmask) == fcmp) == finv:
            return (f"tcp-flags {'! ' if finv else ''}{fmt_flags(fmask)} {fmt_flags(fcmp)}: "
                    f"{fmt_flags(skb.payload[13])}")
        return f"tcp-option {'! ' if oinv else ''}{option} not satisfied"
    # flg_*: for TCPMSS's SYN check; proto/sport/dport (lo, hi, inv): for the chain index (xt_chain_index)
    return XtMatch("tcp", check, why, info={"flg_cmp": fcmp if have_flags else 0, "flg_inv": finv, "proto": 6,
                                            "sport": sp, "dport": dp})


def build_udp(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    _need_proto(ctx, 17, "udp")
    slo, shi, sinv = _ports(opts, "--sport") or (0, 65535, False)
    dlo, dhi, dinv = _ports(opts, "--dport") or (0, 65535, False)

    def check(skb, par) -> bool:
        if par.fragoff:
            return False
        p = skb.payload
        if len(p) < 8:
            par.hotdrop = True
            return False
        sport, dport = struct.unpack_from("!HH", p, 0)
        return (slo <= sport <= shi) != sinv and (dlo <= dport <= dhi) != dinv

    def why(skb, par) -> str:
        if par.fragoff or len(skb.payload) < 8:
            return "udp: non-first fragment or truncated header"
        sport, dport = struct.unpack_from("!HH", skb.payload, 0)
        if (slo <= sport <= shi) == sinv:
            return f"sport {'! ' if sinv else ''}{fmt_range(slo, shi)} != {sport}"
        return f"dport {'! ' if dinv else ''}{fmt_range(dlo, dhi)} != {dport}"
    return XtMatch("udp", check, why, info={"proto": 17, "sport": (slo, shi, sinv), "dport": (dlo, dhi, dinv)})


# libipt_icmp.c icmp_codes: name -> (type, min code, max code)
ICMP_TYPES: dict[str, tuple[int, int, int]] = {
    "any": (0xFF, 0, 0xFF), "echo-reply": (0, 0, 0xFF), "pong": (0, 0, 0xFF),
    "destination-unreachable": (3, 0, 0xFF), "network-unreachable": (3, 0, 0), "host-unreachable": (3, 1, 1),
    "protocol-unreachable": (3, 2, 2), "port-unreachable": (3, 3, 3), "fragmentation-needed": (3, 4, 4),
    "source-route-failed": (3, 5, 5), "network-unknown": (3, 6, 6), "host-unknown": (3, 7, 7),
    "network-prohibited": (3, 9, 9), "host-prohibited": (3, 10, 10), "TOS-network-unreachable": (3, 11, 11),
    "TOS-host-unreachable": (3, 12, 12), "communication-prohibited": (3, 13, 13),
    "host-precedence-violation": (3, 14, 14), "precedence-cutoff": (3, 15, 15), "source-quench": (4, 0, 0xFF),
    "redirect": (5, 0, 0xFF), "network-redirect": (5, 0, 0), "host-redirect": (5, 1, 1),
    "TOS-network-redirect": (5, 2, 2), "TOS-host-redirect": (5, 3, 3), "echo-request": (8, 0, 0xFF),
    "ping": (8, 0, 0xFF), "router-advertisement": (9, 0, 0xFF), "router-solicitation": (10, 0, 0xFF),
    "time-exceeded": (11, 0, 0xFF), "ttl-exceeded": (11, 0, 0xFF), "ttl-zero-during-transit": (11, 0, 0),
    "ttl-zero-during-reassembly": (11, 1, 1), "parameter-problem": (12, 0, 0xFF), "ip-header-bad": (12, 0, 0),
    "required-option-missing": (12, 1, 1), "timestamp-request": (13, 0, 0xFF), "timestamp-reply": (14, 0, 0xFF),
    "address-mask-request": (17, 0, 0xFF), "address-mask-reply": (18, 0, 0xFF),
}


def parse_icmp_type(text: str) -> tuple[int, int, int]:
    for name, v in ICMP_TYPES.items():
        if name.lower() == text.lower():
            return v
    t, slash, c = text.partition("/")
    if not t.isdigit():
        matches = [v for n, v in ICMP_TYPES.items() if n.startswith(text)]
        if len(matches) == 1:
            return matches[0]
        raise XtError(f"invalid ICMP type {text!r}")
    typ = parse_int(t, 0, 255, "ICMP type")
    if slash:
        code = parse_int(c, 0, 255, "ICMP code")
        return typ, code, code
    return typ, 0, 0xFF


def build_icmp(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    _need_proto(ctx, 1, "icmp")
    o = [x for x in opts if x.name == "--icmp-type"]
    typ, cmin, cmax = parse_icmp_type(o[-1].arg) if o else (0xFF, 0, 0xFF)
    inv = o[-1].invert if o else False

    def check(skb, par) -> bool:
        if par.fragoff:
            return False
        p = skb.payload
        if len(p) < 8:
            par.hotdrop = True
            return False
        return (typ == 0xFF or (p[0] == typ and cmin <= p[1] <= cmax)) != inv

    def why(skb, par) -> str:
        if par.fragoff or len(skb.payload) < 8:
            return "icmp: non-first fragment or truncated header"
        want = f"{typ}" if (cmin, cmax) == (0, 0xFF) else f"{typ}/{cmin}"
        return f"icmp-type {'! ' if inv else ''}{want} != {skb.payload[0]}/{skb.payload[1]}"
    return XtMatch("icmp", check, why)


MATCHES = {
    "tcp": ExtSpec("tcp", {"--sport": 1, "--dport": 1, "--tcp-flags": 2, "--syn": 0, "--tcp-option": 1}, build_tcp,
                   {"--source-port": "--sport", "--destination-port": "--dport"}),
    "udp": ExtSpec("udp", {"--sport": 1, "--dport": 1}, build_udp,
                   {"--source-port": "--sport", "--destination-port": "--dport"}),
    "icmp": ExtSpec("icmp", {"--icmp-type": 1}, build_icmp),
}
