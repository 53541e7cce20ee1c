"""Header-rewriting targets: TCPMSS, TTL, DSCP, TOS, CHECKSUM, CLASSIFY.

CHECKSUM --checksum-fill only fills checksums left partial by offload; packets in
a replay always carry a complete checksum, so it does nothing (documented).
CLASSIFY sets skb->priority, which no modelled path reads: accepted, noted.
"""
from __future__ import annotations

import struct

from pathtrace.lib.checksum import csum_replace, l4_checksum
from pathtrace.net.netfilter.x_tables import (
    NF_DROP, NF_INET_FORWARD, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING, XT_CONTINUE, ExtSpec, Opt, RuleCtx, XtError,
    XtTarget, hook_mask,
)
from pathtrace.net.netfilter.xt_header import TOS_NAMES, parse_dscp
from pathtrace.net.netfilter.xt_util import parse_int

TCPOPT_MSS, TCPOLEN_MSS = 2, 4


def _tcpmss_mangle(skb, par, mss: int | None) -> int:
    """tcpmss_mangle_packet: 0 = unchanged/rewritten in place, >0 bytes added, <0 drop."""
    if par.fragoff:
        return 0
    p = skb.payload
    if len(p) < 20:
        return -1
    hdrlen = (p[12] >> 4) * 4
    if len(p) < hdrlen or hdrlen < 20:
        return -1
    if mss is None:
        dst_mtu = skb.dst.dev.mtu if skb.dst is not None and getattr(skb.dst, "dev", None) else 0
        in_mtu = skb.iif.mtu if skb.iif is not None else 0xFFFFFFFF
        min_mtu = min(dst_mtu, in_mtu)
        if min_mtu <= 40:
            return -1
        newmss = min_mtu - 40
    else:
        newmss = mss
    i = 20
    while i <= hdrlen - TCPOLEN_MSS:
        if p[i] == TCPOPT_MSS and p[i + 1] == TCPOLEN_MSS:
            old = (p[i + 2] << 8) | p[i + 3]
            if old <= newmss:
                return 0
            struct.pack_into("!H", p, i + 2, newmss)
            check = struct.unpack_from("!H", p, 16)[0]
            struct.pack_into("!H", p, 16, csum_replace(check, old, newmss))
            return 0
        i += 1 if p[i] < 2 else (p[i + 1] or 1)
    if len(p) > hdrlen or hdrlen >= 60:
        return 0
    newmss = min(newmss, 536)
    p[20:20] = bytes((TCPOPT_MSS, TCPOLEN_MSS, newmss >> 8, newmss & 0xFF))
    p[12] = (p[12] & 0x0F) | (((hdrlen + 4) // 4) << 4)
    iph = skb.iph
    old_len = iph.tot_len
    iph.tot_len += TCPOLEN_MSS
    iph.check = csum_replace(iph.check, old_len, iph.tot_len)
    struct.pack_into("!H", p, 16, 0)
    struct.pack_into("!H", p, 16, l4_checksum(iph.saddr, iph.daddr, 6, bytes(p)))
    return TCPOLEN_MSS


def build_tcpmss(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    if ctx.proto != 6 or ctx.inv_proto:
        raise XtError("TCPMSS target: only valid for -p tcp")
    if len(opts) != 1:
        raise XtError("TCPMSS target: exactly one of --set-mss or --clamp-mss-to-pmtu")
    o = opts[0]
    mss = parse_int(o.arg, 0, 65535 - 40, "MSS") if o.name == "--set-mss" else None

    def fn(skb, par) -> int:
        before = bytes(skb.payload[:60])
        ret = _tcpmss_mangle(skb, par, mss)
        if ret < 0:
            return NF_DROP
        if skb.ctx.record:
            skb.ctx.step("tcpmss_tg4", changed=bytes(skb.payload[:60]) != before)
        return XT_CONTINUE
    hooks = hook_mask(NF_INET_FORWARD, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING) if mss is None else 0
    return XtTarget("TCPMSS", "ext", fn=fn, hooks=hooks)


def check_tcpmss_syn(checks) -> bool:
    """tcpmss_tg4_check: the rule must match TCP SYN (a tcp match with SYN in --tcp-flags)."""
    return any(m.name == "tcp" and m.info and m.info["flg_cmp"] & 0x02 and not m.info["flg_inv"] for m in checks)


def build_ttl(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    if len(opts) != 1:
        raise XtError("TTL target: exactly one of --ttl-set, --ttl-dec, --ttl-inc")
    o = opts[0]
    v = parse_int(o.arg, 0, 255, "TTL")
    if v == 0 and o.name != "--ttl-set":
        raise XtError(f"TTL: {o.name} 0 makes no sense")
    mode = o.name

    def fn(skb, par) -> int:
        ttl = skb.iph.ttl
        new = v if mode == "--ttl-set" else max(ttl - v, 0) if mode == "--ttl-dec" else min(ttl + v, 255)
        if new != ttl:
            skb.set_ttl(new)
        if skb.ctx.record:
            skb.ctx.step("ttl_tg", ttl=f"{ttl} -> {new}")
        return XT_CONTINUE
    return XtTarget("TTL", "ext", fn=fn, table="mangle")


def build_dscp(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    if len(opts) != 1:
        raise XtError("DSCP target: exactly one of --set-dscp, --set-dscp-class")
    o = opts[0]
    dscp = parse_dscp(o.arg, o.name == "--set-dscp-class", "DSCP")

    def fn(skb, par) -> int:
        if (skb.iph.tos >> 2) != dscp:
            skb.set_tos((skb.iph.tos & 0x03) | (dscp << 2))
        return XT_CONTINUE
    return XtTarget("DSCP", "ext", fn=fn, table="mangle")


def build_tos(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    if len(opts) != 1:
        raise XtError("TOS target: exactly one of --set-tos, --and-tos, --or-tos, --xor-tos")
    o = opts[0]
    if o.name == "--set-tos":
        if o.arg.lower() in TOS_NAMES:
            value, mask = TOS_NAMES[o.arg.lower()], 0x3F
        else:
            v_t, slash, m_t = o.arg.partition("/")
            value = parse_int(v_t, 0, 255, "TOS")
            mask = parse_int(m_t, 0, 255, "TOS mask") if slash else 0xFF
    else:
        n = parse_int(o.arg, 0, 255, "TOS")
        value, mask = {"--and-tos": (0, ~n & 0xFF), "--or-tos": (n, n), "--xor-tos": (n, 0)}[o.name]

    def fn(skb, par) -> int:
        old = skb.iph.tos
        new = (old & ~mask & 0xFF) ^ value
        if new != old:
            skb.set_tos(new)
        return XT_CONTINUE
    return XtTarget("TOS", "ext", fn=fn, table="mangle")


def build_checksum(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    if not opts:
        raise XtError("CHECKSUM target: --checksum-fill is required")
    return XtTarget("CHECKSUM", "ext", fn=lambda skb, par: XT_CONTINUE, table="mangle")


def build_classify(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    if not opts:
        raise XtError("CLASSIFY target: --set-class MAJOR:MINOR is required")
    major, colon, minor = opts[0].arg.partition(":")
    try:
        if not (major + minor).isascii() or len(major) > 8 or len(minor) > 8:
            raise ValueError
        int(major, 16), int(minor, 16)
    except ValueError:
        raise XtError(f"CLASSIFY: bad class {opts[0].arg!r}") from None

    def fn(skb, par) -> int:
        if skb.ctx.record:
            skb.ctx.step("classify_tg", priority=opts[0].arg, note="skb->priority is not modelled")
        return XT_CONTINUE
    return XtTarget("CLASSIFY", "ext", fn=fn, table="mangle",
                    hooks=hook_mask(NF_INET_LOCAL_OUT, NF_INET_FORWARD, NF_INET_POST_ROUTING))


TARGETS = {
    "TCPMSS": ExtSpec("TCPMSS", {"--set-mss": 1, "--clamp-mss-to-pmtu": 0}, build_tcpmss),
    "TTL": ExtSpec("TTL", {"--ttl-set": 1, "--ttl-dec": 1, "--ttl-inc": 1}, build_ttl),
    "DSCP": ExtSpec("DSCP", {"--set-dscp": 1, "--set-dscp-class": 1}, build_dscp),
    "TOS": ExtSpec("TOS", {"--set-tos": 1, "--and-tos": 1, "--or-tos": 1, "--xor-tos": 1}, build_tos),
    "CHECKSUM": ExtSpec("CHECKSUM", {"--checksum-fill": 0}, build_checksum),
    "CLASSIFY": ExtSpec("CLASSIFY", {"--set-class": 1}, build_classify),
}
