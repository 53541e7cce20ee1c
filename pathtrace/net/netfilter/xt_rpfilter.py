"""rpfilter (net/ipv4/netfilter/ipt_rpfilter.c): reverse-path check as a match, raw/mangle PREROUTING.

rpfilter_mt: loopback traffic matches; a 0.0.0.0 source to the limited broadcast or a local
multicast group matches (DHCP); otherwise the route back to the source (iif lo, saddr = the
packet's daddr unless multicast/broadcast/zeronet, mark with --validmark) must be unicast (or
local with --accept-local) and leave through the input device, unless --loose.
"""
from __future__ import annotations

from pathtrace.lib.inet import ipv4_is_lbcast, ipv4_is_multicast, ntoa
from pathtrace.net.netfilter.x_tables import NF_INET_PRE_ROUTING, ExtSpec, Opt, RuleCtx, XtError, XtMatch, hook_mask


def _local_multicast(addr: int) -> bool:
    return (addr & 0xFFFFFF00) == 0xE0000000          # 224.0.0.0/24


def rpfilter_lookup_reverse(net, saddr: int, daddr: int, tos: int, mark: int, indev, loose: bool,
                            accept_local: bool) -> tuple[bool, str]:
    """(passes, what the reverse lookup found)."""
    from pathtrace.net.ipv4.fib_rules import Flowi4
    from pathtrace.net.ipv4.route import _dev_for_gateway, fib_lookup
    back_src = 0 if ipv4_is_multicast(daddr) or ipv4_is_lbcast(daddr) or daddr >> 24 == 0 else daddr
    res = fib_lookup(net, Flowi4(daddr=saddr, saddr=back_src, iif="lo", mark=mark, tos=tos & 0x1C))
    if res.error is not None or res.fa is None:
        return False, f"no route back to {ntoa(saddr)}"
    fa = res.fa
    if fa.type != "unicast" and not (fa.type == "local" and accept_local):
        return False, f"route back to {ntoa(saddr)} is {fa.type}"
    dev = fa.dev or (d.name if (d := _dev_for_gateway(net, fa.gateway, res.table)) is not None else None)
    if dev == (indev.name if indev is not None else None) or loose:
        return True, f"route back via {dev}"
    return False, f"route back to {ntoa(saddr)} leaves via {dev}, not {indev.name if indev else '-'}"


def build(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    if ctx.table not in ("raw", "mangle"):
        raise XtError(f"rpfilter: only valid in the 'raw' or 'mangle' table, not '{ctx.table}'")
    names = {o.name for o in opts}
    loose, validmark = "--loose" in names, "--validmark" in names
    accept_local, invert = "--accept-local" in names, "--invert" in names

    def evaluate(skb, par) -> tuple[bool, str]:
        indev = par.indev
        if indev is not None and indev.loopback:
            return True, "from loopback"
        iph = skb.iph
        if iph.saddr == 0 and (ipv4_is_lbcast(iph.daddr) or _local_multicast(iph.daddr)):
            return True, "0.0.0.0 to broadcast or local multicast"
        return rpfilter_lookup_reverse(par.nf.net, iph.saddr, iph.daddr, iph.tos, skb.mark if validmark else 0,
                                       indev, loose, accept_local)

    def check(skb, par) -> bool:
        return evaluate(skb, par)[0] != invert

    def why(skb, par) -> str:
        return f"rpfilter{' --invert' if invert else ''}: {evaluate(skb, par)[1]}"
    return XtMatch("rpfilter", check, why, hooks=hook_mask(NF_INET_PRE_ROUTING))


MATCHES = {"rpfilter": ExtSpec("rpfilter", {"--loose": 0, "--validmark": 0, "--accept-local": 0, "--invert": 0},
                               build)}
