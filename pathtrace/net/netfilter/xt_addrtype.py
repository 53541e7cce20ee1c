"""addrtype (xt_addrtype.c rev 1): the route type of saddr/daddr, optionally per device."""
from __future__ import annotations

from pathtrace.lib.inet import ntoa
from pathtrace.net.netfilter.x_tables import (
    NF_INET_FORWARD, NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING, NF_INET_PRE_ROUTING, ExtSpec, Opt,
    RuleCtx, XtError, XtMatch, hook_mask,
)

RTN_TYPES = ("UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE", "UNREACHABLE",
             "PROHIBIT", "THROW", "NAT", "XRESOLVE")


def _types(text: str) -> int:
    m = 0
    for t in text.split(","):
        if t.upper() not in RTN_TYPES:
            raise XtError(f"addrtype: unknown address type {t!r}")
        m |= 1 << RTN_TYPES.index(t.upper())
    return m


def build(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    src = dst = None
    iface = ""
    for o in opts:
        if o.name == "--src-type":
            src = (_types(o.arg), o.invert, o.arg)
        elif o.name == "--dst-type":
            dst = (_types(o.arg), o.invert, o.arg)
        else:
            if iface:
                raise XtError("addrtype: you can't specify both --limit-iface-in and --limit-iface-out")
            iface = o.name
    hooks = 0
    if iface == "--limit-iface-in":
        hooks = hook_mask(NF_INET_PRE_ROUTING, NF_INET_LOCAL_IN, NF_INET_FORWARD)
    elif iface == "--limit-iface-out":
        hooks = hook_mask(NF_INET_POST_ROUTING, NF_INET_LOCAL_OUT, NF_INET_FORWARD)

    def addr_type(par, addr: int) -> str:
        from pathtrace.net.ipv4 import route
        net = par.nf.net
        if iface == "--limit-iface-in" and par.indev is not None:
            return route.inet_addr_type_dev_table(net, par.indev, addr)
        if iface == "--limit-iface-out" and par.outdev is not None:
            return route.inet_addr_type_dev_table(net, par.outdev, addr)
        return route.inet_addr_type(net, addr)

    def hit(spec, par, addr: int) -> bool:
        return bool(spec[0] & (1 << RTN_TYPES.index(addr_type(par, addr)))) != spec[1]

    def check(skb, par) -> bool:
        if src is not None and not hit(src, par, skb.iph.saddr):
            return False
        if dst is not None and not hit(dst, par, skb.iph.daddr):
            return False
        return True

    def why(skb, par) -> str:
        if src is not None and not hit(src, par, skb.iph.saddr):
            return f"src-type {'! ' if src[1] else ''}{src[2]}: {ntoa(skb.iph.saddr)} is {addr_type(par, skb.iph.saddr)}"
        return f"dst-type {'! ' if dst[1] else ''}{dst[2]}: {ntoa(skb.iph.daddr)} is {addr_type(par, skb.iph.daddr)}"
    return XtMatch("addrtype", check, why, hooks=hooks)


MATCHES = {"addrtype": ExtSpec("addrtype", {"--src-type": 1, "--dst-type": 1, "--limit-iface-in": 0,
                                            "--limit-iface-out": 0}, build)}
