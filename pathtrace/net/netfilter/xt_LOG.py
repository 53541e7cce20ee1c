"""LOG and NFLOG: non-terminating; the path shows what the kernel log / nflog group would get."""
from __future__ import annotations

import struct

from pathtrace.lib.inet import mac_ntoa, ntoa
from pathtrace.net.netfilter.x_tables import XT_CONTINUE, ExtSpec, Opt, RuleCtx, XtError, XtTarget
from pathtrace.net.netfilter.xt_util import parse_int

LEVELS = {"emerg": 0, "alert": 1, "crit": 2, "error": 3, "err": 3, "warning": 4, "warn": 4, "notice": 5,
          "info": 6, "debug": 7, "panic": 0}


def log_line(skb, par) -> str:
    """The start of nf_log_ip_packet's text: IN= OUT= MAC= SRC= DST= LEN= TTL= PROTO= SPT= DPT=."""
    iph = skb.iph
    parts = [f"IN={par.indev.name if par.indev else ''}", f"OUT={par.outdev.name if par.outdev else ''}"]
    if par.indev is not None:
        parts.append(f"MAC={mac_ntoa(skb.mac_dst)}:{mac_ntoa(skb.mac_src)}:08:00")
    parts += [f"SRC={ntoa(iph.saddr)}", f"DST={ntoa(iph.daddr)}", f"LEN={iph.tot_len}", f"TTL={iph.ttl}"]
    names = {1: "ICMP", 6: "TCP", 17: "UDP"}
    parts.append(f"PROTO={names.get(iph.protocol, iph.protocol)}")
    if iph.protocol in (6, 17) and not par.fragoff and len(skb.payload) >= 4:
        sp, dp = struct.unpack_from("!HH", skb.payload, 0)
        parts += [f"SPT={sp}", f"DPT={dp}"]
    elif iph.protocol == 1 and not par.fragoff and len(skb.payload) >= 2:
        parts += [f"TYPE={skb.payload[0]}", f"CODE={skb.payload[1]}"]
    return " ".join(parts)


def build_log(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    prefix, level = "", 4
    for o in opts:
        if o.name == "--log-prefix":
            if len(o.arg) > 29:
                raise XtError("LOG: maximum prefix length 29 for --log-prefix")
            prefix = o.arg
        elif o.name == "--log-level":
            level = LEVELS[o.arg.lower()] if o.arg.lower() in LEVELS else parse_int(o.arg, 0, 7, "log level")

    def fn(skb, par) -> int:
        if skb.ctx.record:
            skb.ctx.step("log_tg", prefix=prefix, level=level, line=prefix + log_line(skb, par))
        return XT_CONTINUE
    return XtTarget("LOG", "ext", fn=fn)


def build_nflog(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    prefix, group = "", 0
    for o in opts:
        if o.name == "--nflog-prefix":
            if len(o.arg) > 63:
                raise XtError("NFLOG: maximum prefix length 63 for --nflog-prefix")
            prefix = o.arg
        elif o.name == "--nflog-group":
            group = parse_int(o.arg, 0, 65535, "nflog group")

    def fn(skb, par) -> int:
        if skb.ctx.record:
            skb.ctx.step("nflog_tg", group=group, prefix=prefix, line=prefix + log_line(skb, par))
        return XT_CONTINUE
    return XtTarget("NFLOG", "ext", fn=fn)


TARGETS = {
    "LOG": ExtSpec("LOG", {"--log-prefix": 1, "--log-level": 1, "--log-tcp-sequence": 0, "--log-tcp-options": 0,
                           "--log-ip-options": 0, "--log-uid": 0, "--log-macdecode": 0}, build_log),
    "NFLOG": ExtSpec("NFLOG", {"--nflog-group": 1, "--nflog-prefix": 1, "--nflog-range": 1, "--nflog-size": 1,
                               "--nflog-threshold": 1}, build_nflog),
}
