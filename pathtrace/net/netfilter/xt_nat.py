"""NAT targets: DNAT, SNAT (xt_nat.c), MASQUERADE, REDIRECT, NETMAP.

Each builds a NatRange at load time and hands the binding to NF-B's nf_nat code
(nf_nat_setup_info / nf_nat_masquerade_ipv4 / nf_nat_redirect_ipv4 /
nf_nat_netmap_ipv4); these targets only run for a connection's first packet,
from the nat chain traversal nf_nat_inet_fn asks for.
"""
from __future__ import annotations

from pathtrace.lib.inet import ntoa
from pathtrace.net.netfilter.x_tables import (
    NF_ACCEPT, NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING, NF_INET_PRE_ROUTING, ExtSpec, Opt,
    RuleCtx, XtError, XtTarget, hook_mask,
)
from pathtrace.net.netfilter.xt_util import parse_addr, parse_addr_mask, parse_port

MAP_IPS, PROTO_SPECIFIED, PROTO_RANDOM, PERSISTENT, PROTO_RANDOM_FULLY = 1, 2, 4, 8, 16
_PORT_PROTOS = {6, 17, 132, 33, 136}


def _flags(opts: list[Opt]) -> int:
    f = 0
    for o in opts:
        if o.name == "--random":
            f |= PROTO_RANDOM
        elif o.name == "--random-fully":
            f |= PROTO_RANDOM_FULLY
        elif o.name == "--persistent":
            f |= PERSISTENT
    return f


def _ports(text: str, ctx: RuleCtx) -> tuple[int, int]:
    if ctx.proto not in _PORT_PROTOS or ctx.inv_proto:
        raise XtError("Need TCP, UDP, SCTP or DCCP with port specification")
    lo_t, dash, hi_t = text.partition("-")
    lo = parse_port(lo_t)
    hi = parse_port(hi_t) if dash else lo
    if hi < lo:
        raise XtError(f"invalid port range {text!r}")
    return lo, hi


def parse_to(text: str, ctx: RuleCtx, flags: int) -> tuple[int, int, int, int, int]:
    """'a.b.c.d[-e.f.g.h][:port[-port]]' -> (flags, min_ip, max_ip, min_port, max_port)."""
    addr_t, colon, port_t = text.partition(":")
    lo = hi = 0
    pmin = pmax = 0
    if addr_t:
        a, dash, b = addr_t.partition("-")
        lo = parse_addr(a)
        hi = parse_addr(b) if dash else lo
        if hi < lo:
            raise XtError(f"bad IP range {addr_t!r}")
        flags |= MAP_IPS
    if colon:
        pmin, pmax = _ports(port_t, ctx)
        flags |= PROTO_SPECIFIED
    return flags, lo, hi, pmin, pmax


def _range(flags: int, lo: int, hi: int, pmin: int, pmax: int):
    from pathtrace.net.netfilter.nf_nat_core import NatRange
    return NatRange(flags, lo, hi, pmin, pmax)


def _describe(r) -> str:
    s = ntoa(r.min_addr) if r.flags & MAP_IPS else ""
    if r.flags & MAP_IPS and r.max_addr != r.min_addr:
        s += f"-{ntoa(r.max_addr)}"
    if r.flags & PROTO_SPECIFIED:
        s += f":{r.min_proto}" + (f"-{r.max_proto}" if r.max_proto != r.min_proto else "")
    return s


def _ct(skb):
    from pathtrace.net.netfilter.nf_conntrack_core import nf_ct_get
    return nf_ct_get(skb)


def _build_xnat(opts: list[Opt], ctx: RuleCtx, which: str) -> XtTarget:
    to = [o for o in opts if o.name == f"--to-{'destination' if which == 'DNAT' else 'source'}"]
    if len(to) > 1:
        raise XtError(f"{which}: multiple --to-{'destination' if which == 'DNAT' else 'source'} are not supported "
                      "by the kernel (since 2.6.11)")
    if not to:
        raise XtError(f"{which}: --to-{'destination' if which == 'DNAT' else 'source'} is required")
    r = _range(*parse_to(to[0].arg, ctx, _flags(opts)))
    manip = 1 if which == "DNAT" else 0
    fname = "xt_dnat_target_v2" if which == "DNAT" else "xt_snat_target_v2"

    def fn(skb, par) -> int:
        from pathtrace.net.netfilter.nf_nat_core import nf_nat_setup_info
        ct = _ct(skb)
        if skb.ctx.record:
            skb.ctx.step(fname, to=_describe(r))
        if ct is None:
            return NF_ACCEPT
        return nf_nat_setup_info(ct, r, manip)
    hooks = (hook_mask(NF_INET_PRE_ROUTING, NF_INET_LOCAL_OUT) if which == "DNAT"
             else hook_mask(NF_INET_POST_ROUTING, NF_INET_LOCAL_IN))
    return XtTarget(which, "ext", fn=fn, hooks=hooks, table="nat", conntrack=True)


def build_dnat(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    return _build_xnat(opts, ctx, "DNAT")


def build_snat(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    return _build_xnat(opts, ctx, "SNAT")


def _to_ports(opts: list[Opt], ctx: RuleCtx):
    flags = _flags(opts)
    pmin = pmax = 0
    for o in opts:
        if o.name == "--to-ports":
            pmin, pmax = _ports(o.arg, ctx)
            flags |= PROTO_SPECIFIED
    return _range(flags, 0, 0, pmin, pmax)


def build_masquerade(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    r = _to_ports(opts, ctx)

    def fn(skb, par) -> int:
        from pathtrace.net.netfilter.nf_nat_masquerade import nf_nat_masquerade_ipv4
        skb.ctx.step("masquerade_tg", out=par.outdev.name if par.outdev else "")
        return nf_nat_masquerade_ipv4(skb, r, par.outdev)
    return XtTarget("MASQUERADE", "ext", fn=fn, hooks=hook_mask(NF_INET_POST_ROUTING), table="nat", conntrack=True)


def build_redirect(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    r = _to_ports(opts, ctx)

    def fn(skb, par) -> int:
        from pathtrace.net.netfilter.nf_nat_redirect import nf_nat_redirect_ipv4
        skb.ctx.step("redirect_tg4", to_ports=_describe(r))
        return nf_nat_redirect_ipv4(skb, r, par.hook)
    return XtTarget("REDIRECT", "ext", fn=fn, hooks=hook_mask(NF_INET_PRE_ROUTING, NF_INET_LOCAL_OUT), table="nat",
                    conntrack=True)


def build_netmap(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    to = [o for o in opts if o.name == "--to"]
    if not to:
        raise XtError("NETMAP: --to address[/mask] is required")
    addr, mask = parse_addr_mask(to[-1].arg)
    r = _range(MAP_IPS, addr, addr | (~mask & 0xFFFFFFFF), 0, 0)

    def fn(skb, par) -> int:
        from pathtrace.net.netfilter.nf_nat_netmap import nf_nat_netmap_ipv4
        skb.ctx.step("netmap_tg4", to=to[-1].arg)
        return nf_nat_netmap_ipv4(skb, r, par.hook)
    return XtTarget("NETMAP", "ext", fn=fn, hooks=hook_mask(NF_INET_PRE_ROUTING, NF_INET_POST_ROUTING,
                                                            NF_INET_LOCAL_OUT, NF_INET_LOCAL_IN),
                    table="nat", conntrack=True)


_F = {"--random": 0, "--random-fully": 0, "--persistent": 0}
TARGETS = {
    "DNAT": ExtSpec("DNAT", {"--to-destination": 1, **_F}, build_dnat, {"--to": "--to-destination"}),
    "SNAT": ExtSpec("SNAT", {"--to-source": 1, **_F}, build_snat, {"--to": "--to-source"}),
    "MASQUERADE": ExtSpec("MASQUERADE", {"--to-ports": 1, **_F}, build_masquerade, {"--to-port": "--to-ports"}),
    "REDIRECT": ExtSpec("REDIRECT", {"--to-ports": 1, **_F}, build_redirect, {"--to-port": "--to-ports"}),
    "NETMAP": ExtSpec("NETMAP", {"--to": 1}, build_netmap),
}
