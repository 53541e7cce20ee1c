"""REJECT (ipt_REJECT.c reject_tg -> nf_reject_ipv4.c nf_send_unreach / nf_send_reset).

The target always returns NF_DROP; the reply is sent first (icmp_send, with its
rate limit, or a TCP RST built like the kernel's and sent with ip_local_out).
"""
from __future__ import annotations

from pathtrace.net.netfilter.x_tables import (
    NF_DROP, NF_INET_FORWARD, NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT, NF_INET_PRE_ROUTING, ExtSpec, Opt, RuleCtx,
    XtError, XtTarget, hook_mask,
)

ICMP_DEST_UNREACH = 3
# --reject-with name, alias -> ICMP code (None = tcp-reset)
REJECT_WITH: tuple[tuple[str, str, int | None], ...] = (
    ("icmp-net-unreachable", "net-unreach", 0), ("icmp-host-unreachable", "host-unreach", 1),
    ("icmp-proto-unreachable", "proto-unreach", 2), ("icmp-port-unreachable", "port-unreach", 3),
    ("icmp-net-prohibited", "net-prohib", 9), ("icmp-host-prohibited", "host-prohib", 10),
    ("tcp-reset", "tcp-rst", None), ("icmp-admin-prohibited", "admin-prohib", 13),
)


def parse_with(text: str) -> tuple[str, int | None]:
    t = text.lower()
    for name, alias, code in REJECT_WITH:
        if t and (name.startswith(t) or alias == t):
            return name, code
    raise XtError(f"unknown reject type {text!r}")


def _l4_csum_ok(skb, proto: int) -> bool:
    """nf_reject_verify_csum + nf_ip_checksum: a TCP/UDP segment with a bad checksum gets no reply."""
    if proto not in (6, 17):
        return True
    if proto == 17 and len(skb.payload) >= 8 and skb.payload[6:8] == b"\0\0":
        return True
    try:
        from pathtrace.net.netfilter.nf_conntrack_checksum import nf_ip_checksum
    except ImportError:  # pragma: no cover
        return True
    return not nf_ip_checksum(skb, proto)      # like the kernel: nonzero = bad checksum


def nf_send_unreach(skb, code: int, hook: int) -> None:
    ctx = skb.ctx
    ctx.step("nf_send_unreach", code=code)
    if skb.iph.frag_off & 0x1FFF:
        return
    if hook == NF_INET_PRE_ROUTING and skb.dst is None:
        return
    if not _l4_csum_ok(skb, skb.iph.protocol):
        if ctx.record:
            ctx.step("nf_ip_checksum", result="bad checksum: no ICMP error")
        return
    from pathtrace.net.ipv4.icmp import icmp_send
    icmp_send(skb, ICMP_DEST_UNREACH, code, 0)


def nf_send_reset(skb, hook: int) -> None:
    ctx = skb.ctx
    ctx.step("nf_send_reset")
    if skb.iph.frag_off & 0x1FFF or skb.iph.protocol != 6 or len(skb.payload) < 20:
        return
    if skb.payload[13] & 0x04:        # never answer an RST
        return
    if not _l4_csum_ok(skb, 6):
        if ctx.record:
            ctx.step("nf_ip_checksum", result="bad checksum: no RST")
        return
    from pathtrace.net.ipv4.tcp_ipv4 import tcp_v4_build_reset
    nskb = tcp_v4_build_reset(skb)
    if nskb is None:
        return
    try:
        from pathtrace.net.netfilter.nf_conntrack_core import nf_ct_attach
        nf_ct_attach(nskb, skb)
    except ImportError:  # pragma: no cover
        pass
    from pathtrace.net.ipv4.ip_output import ip_local_out
    with ctx.nested():
        ip_local_out(nskb)


def build(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    name, code = "icmp-port-unreachable", 3
    for o in opts:
        name, code = parse_with(o.arg)
    if code is None and (ctx.proto != 6 or ctx.inv_proto):
        raise XtError("x_tables: ip_tables: REJECT: TCP_RESET invalid for non-tcp (use -p tcp)")

    def fn(skb, par) -> int:
        skb.ctx.step("reject_tg", reject_with=name)
        if code is None:
            nf_send_reset(skb, par.hook)
        else:
            nf_send_unreach(skb, code, par.hook)
        return NF_DROP
    return XtTarget("REJECT", "ext", fn=fn, hooks=hook_mask(NF_INET_LOCAL_IN, NF_INET_FORWARD, NF_INET_LOCAL_OUT))


TARGETS = {"REJECT": ExtSpec("REJECT", {"--reject-with": 1}, build)}
