"""Route lookups (net/ipv4/route.c, fib_frontend.c, fib_trie.c): input, output, source validation.

A lookup returns a RouteResult, the model's `struct rtable`: the type, the device,
the gateway, and for the trace the route and table that decided.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pathtrace.lib.inet import (
    ipv4_is_lbcast, ipv4_is_loopback, ipv4_is_multicast, ipv4_is_zeronet, ntoa,
)
from pathtrace.net.ipv4.fib import FibAlias, fib_info_nh_uses_dev, fib_nh_view, fib_select_multipath
from pathtrace.net.ipv4.fib_rules import Flowi4, fib_rule_match

if TYPE_CHECKING:  # pragma: no cover
    from pathtrace.net.core.net_namespace import Net
    from pathtrace.net.core.netdevice import NetDevice
    from pathtrace.net.core.skbuff import SkBuff
    from pathtrace.trace import PacketContext

# fib_props[].error: what a lookup hitting these types returns
ENETUNREACH = "ENETUNREACH"
EHOSTUNREACH = "EHOSTUNREACH"
EACCES = "EACCES"
EINVAL = "EINVAL"
TYPE_ERRORS = {"blackhole": EINVAL, "unreachable": EHOSTUNREACH, "prohibit": EACCES, "throw": "EAGAIN"}


@dataclass(slots=True)
class FibResult:
    fa: FibAlias | None
    table: int
    rule: str
    error: str | None = None       # fib_lookup's error (ENETUNREACH, EHOSTUNREACH, EACCES, EINVAL)

    @property
    def type(self) -> str:
        return self.fa.type if self.fa is not None else "unreachable"


@dataclass(slots=True, eq=False)
class RouteResult:
    """struct rtable for one packet: where it goes and why."""

    type: str                       # local unicast broadcast multicast unreachable (ip_error)
    dev: "NetDevice | None" = None
    gateway: int | None = None
    prefsrc: int | None = None
    error: str | None = None        # dst.error for ip_error
    route: str = ""                 # the route's text
    table: int = 254
    rule: str = ""                  # the policy rule that led to the table
    redirect: bool = False          # IPSKB_DOREDIRECT
    input: str = ""                 # dst.input: ip_local_deliver | ip_forward | ip_error
    mtu: int = 1500
    rtax_mtu: int = 0               # the route's `mtu` metric: forwarding and output use it before the device's
    mtu_locked: bool = False        # `mtu lock`: ip_dont_fragment is false for IP_PMTUDISC_WANT sockets
    advmss: int = 0                 # the route's `advmss` metric (dst_metric_advmss)

    def nexthop(self, daddr: int) -> int:
        """rt_nexthop: the gateway, or the destination itself on a connected route."""
        return self.gateway if self.gateway is not None else daddr


def fib_lookup(net: "Net", fl: Flowi4, oif_strict: bool = False) -> FibResult:
    """fib_lookup / __fib_lookup: walk the policy rules, look up each rule's table."""
    last_error = ENETUNREACH
    for rule in net.fib_rules:
        if not fib_rule_match(rule, fl):
            continue
        rule_text = f"{rule.priority}: {rule.text}"
        if rule.action != "lookup":
            return FibResult(None, 0, rule_text, TYPE_ERRORS[rule.action])
        table = net.fib_tables.get(rule.table)
        if table is None:
            continue
        usable = None
        if fl.oif is not None:
            usable = lambda fa, oif=fl.oif: fa.dev is None or fa.dev == oif or fa.type != "unicast"
        fa = table.lookup(fl.daddr, usable, fl.tos)
        if fa is None:
            continue
        if fa.type == "throw":
            last_error = ENETUNREACH
            continue
        return FibResult(fa, rule.table, rule_text, TYPE_ERRORS.get(fa.type))
    return FibResult(None, 0, "", last_error)


def _describe(res: FibResult) -> dict:
    return {"route": res.fa.describe() if res.fa else None, "table": _table_name(res.table), "rule": res.rule,
            "type": res.type if res.fa else None, "error": res.error}


def _table_name(table: int) -> str:
    return {255: "local", 254: "main", 253: "default"}.get(table, str(table))


def fib_validate_source(net: "Net", skb: "SkBuff", saddr: int, daddr: int, oif: str | None,
                        dev: "NetDevice") -> str | None:
    """fib_validate_source_reason: rp_filter and local-source checks; returns a drop reason or None."""
    return fib_validate_source_ret(net, skb, saddr, daddr, oif, dev)[0]


def _nh_on_link(fa: "FibAlias | None") -> bool:
    """FIB_RES_NHC(res)->nhc_scope >= RT_SCOPE_HOST: a nexthop without gateway (fib_check_nh_nongw)."""
    return fa is not None and fa.type == "unicast" and fa.gateway is None


def fib_validate_source_ret(net: "Net", skb: "SkBuff", saddr: int, daddr: int, oif: str | None,
                            dev: "NetDevice") -> tuple[str | None, bool]:
    """(drop reason, source on-link): the second is __fib_validate_source's positive return, 1 when
    the reverse route reaches the source without a gateway; __mkroute_input needs it for a redirect."""
    sysctl = net.sysctl
    rpf = sysctl.dev(dev.name, "rp_filter")
    accept_local = sysctl.dev(dev.name, "accept_local")
    if not rpf and (dev.name != oif or not sysctl.dev(dev.name, "send_redirects")):
        if accept_local:
            return None, False
        if not net.has_custom_local_routes and not net.has_custom_rules:
            return ("IP_LOCAL_SOURCE" if saddr in net.local_addrs else None), False
    # __fib_validate_source
    mark = skb.mark if sysctl.dev(dev.name, "src_valid_mark") else 0
    fl = Flowi4(daddr=saddr, saddr=daddr, iif=oif or "lo", mark=mark)
    res = fib_lookup(net, fl)
    if res.error is not None:          # fib_lookup failed, a blackhole/unreachable/prohibit route too
        return ("IP_RPFILTER" if rpf else None), False                 # last_resort
    if res.type != "unicast" and res.type != "local":
        return "IP_INVALID_SOURCE", False                             # e_inval: e.g. a broadcast source
    if res.type == "local" and not accept_local:
        return "IP_LOCAL_SOURCE", False
    if fib_info_nh_uses_dev(res.fa, dev.name) or (res.type == "local" and dev.loopback):
        return None, _nh_on_link(res.fa)
    if not dev.addrs:
        return ("IP_RPFILTER" if rpf else None), False
    if rpf == 1:
        return "IP_RPFILTER", False                                   # e_rpf
    # loose mode: is the source reachable through this device at all?
    res = fib_lookup(net, Flowi4(daddr=saddr, saddr=daddr, iif=oif or "lo", oif=dev.name, mark=mark))
    return None, res.error is None and res.fa is not None and fib_info_nh_uses_dev(res.fa, dev.name) \
        and _nh_on_link(res.fa)


IGMP_ALL_HOSTS = 0xE0000001      # 224.0.0.1: every IPv4 interface joins it when it comes up (ip_mc_up)


def ip_check_mc_rcu(dev: "NetDevice", daddr: int) -> bool:
    """Whether the interface has joined the group.  A host file names no memberships, so only the
    all-hosts group every interface joins (ip_mc_up → ip_mc_inc_group(IGMP_ALL_HOSTS)) is ours."""
    return daddr == IGMP_ALL_HOSTS and bool(dev.addrs)


def ip_route_input_rcu(skb: "SkBuff", daddr: int, saddr: int, dev: "NetDevice") -> str | None:
    """ip_route_input_rcu: a multicast destination is ours only for a joined group (no multicast
    routing is modelled: IN_DEV_MFORWARD is off) and then routed by ip_route_input_mc; anything
    else to a group is dropped with NOT_SPECIFIED.  Other destinations take ip_route_input_slow."""
    ctx = skb.ctx
    if not ipv4_is_multicast(daddr):
        ctx.step("ip_route_input_slow")
        return ip_route_input_slow(skb, daddr, saddr, dev)
    if not ip_check_mc_rcu(dev, daddr):
        ctx.step("ip_check_mc_rcu", group=ntoa(daddr), result="not a member")
        return "NOT_SPECIFIED"
    return ip_route_input_mc(skb, daddr, saddr, dev)


def ip_mc_validate_source(skb: "SkBuff", daddr: int, saddr: int, dev: "NetDevice") -> str | None:
    net = skb.ctx_net
    if ipv4_is_multicast(saddr) or ipv4_is_lbcast(saddr):
        return "IP_INVALID_SOURCE"
    if ipv4_is_loopback(saddr) and not net.sysctl.dev(dev.name, "route_localnet"):
        return "IP_LOCALNET"
    if ipv4_is_zeronet(saddr):
        local_mc = daddr & 0xFFFFFF00 == 0xE0000000
        return None if local_mc or skb.iph.protocol == 2 else "IP_INVALID_SOURCE"
    return fib_validate_source(net, skb, saddr, 0, None, dev)


def ip_route_input_mc(skb: "SkBuff", daddr: int, saddr: int, dev: "NetDevice") -> str | None:
    """ip_route_input_mc: validate the source, then an RTCF_MULTICAST|RTCF_LOCAL route to ip_local_deliver."""
    reason = ip_mc_validate_source(skb, daddr, saddr, dev)
    skb.ctx.step("ip_route_input_mc", group=ntoa(daddr), result=reason or "ours")
    if reason:
        return _martian(skb.ctx, "source", reason, saddr, daddr)
    net = skb.ctx_net
    skb.dst = RouteResult(type="multicast", dev=net.loopback, input="ip_local_deliver",
                          route=f"multicast {ntoa(daddr)} (joined on {dev.name})", table=255)
    return None


def ip_route_input_slow(skb: "SkBuff", daddr: int, saddr: int, dev: "NetDevice") -> str | None:
    """Input route lookup: sets skb.dst (possibly ip_error) or returns a drop reason."""
    net = skb.ctx_net
    ctx = skb.ctx
    sysctl = net.sysctl
    localnet = sysctl.dev(dev.name, "route_localnet")
    if ipv4_is_multicast(saddr) or ipv4_is_lbcast(saddr):
        return _martian(ctx, "source", "IP_INVALID_SOURCE", saddr, daddr)
    if ipv4_is_lbcast(daddr) or (saddr == 0 and daddr == 0):
        return _brd_input(skb, daddr, saddr, dev, None)
    if ipv4_is_zeronet(saddr):
        return _martian(ctx, "source", "IP_INVALID_SOURCE", saddr, daddr)
    if ipv4_is_zeronet(daddr):
        return _martian(ctx, "destination", "IP_INVALID_DEST", saddr, daddr)
    if ipv4_is_loopback(daddr):
        if not localnet:
            return _martian(ctx, "destination", "IP_LOCALNET", saddr, daddr)
    elif ipv4_is_loopback(saddr) and not localnet:
        return _martian(ctx, "source", "IP_LOCALNET", saddr, daddr)
    fl = Flowi4(daddr=daddr, saddr=saddr, iif=dev.name, mark=skb.mark, tos=skb.iph.tos)
    res = fib_lookup(net, fl)
    forwarding = sysctl.dev(dev.name, "forwarding")
    ctx.step("fib_lookup", **_describe(res)) if ctx.record else None
    if res.error is not None:
        err = res.error if forwarding else EHOSTUNREACH
        return _local_input(skb, dev, res, "unreachable", err)
    if res.type == "broadcast":
        return _brd_input(skb, daddr, saddr, dev, res)
    if res.type == "local":
        reason = fib_validate_source(net, skb, saddr, daddr, None, dev)
        if ctx.record:
            ctx.step("fib_validate_source", result=reason or "ok",
                     rp_filter=sysctl.dev(dev.name, "rp_filter"))
        if reason:
            return _martian(ctx, "source", reason, saddr, daddr)
        return _local_input(skb, dev, res, "local", None)
    if not forwarding:
        return _local_input(skb, dev, res, "unreachable", EHOSTUNREACH)
    if res.type != "unicast":
        return _martian(ctx, "destination", "IP_INVALID_DEST", saddr, daddr)
    return ip_mkroute_input(skb, res, daddr, saddr, dev)


def _martian(ctx: "PacketContext", which: str, reason: str, saddr: int, daddr: int) -> str:
    if ctx.record:
        ctx.step("ip_handle_martian_source" if which == "source" else "ip_route_input_slow",
                 martian=which, saddr=ntoa(saddr), daddr=ntoa(daddr), reason=reason)
    return reason


def _brd_input(skb: "SkBuff", daddr: int, saddr: int, dev: "NetDevice", res: FibResult | None) -> str | None:
    net = skb.ctx_net
    if not ipv4_is_zeronet(saddr):    # brd_input validates with dst 0: policy rules see no destination
        reason = fib_validate_source(net, skb, saddr, 0, None, dev)
        if reason:
            return _martian(skb.ctx, "source", reason, saddr, daddr)
    skb.dst = RouteResult(type="broadcast", dev=dev, input="ip_local_deliver",
                          route=res.fa.describe() if res and res.fa else "limited broadcast",
                          table=res.table if res else 255, rule=res.rule if res else "")
    return None


def _local_input(skb: "SkBuff", dev: "NetDevice", res: FibResult, rtype: str, err: str | None) -> None:
    """local_input: a route whose input is ip_local_deliver, or ip_error for no_route."""
    skb.dst = RouteResult(type=rtype, dev=skb.ctx_net.loopback, error=err,
                          input="ip_error" if rtype == "unreachable" else "ip_local_deliver",
                          route=res.fa.describe() if res.fa else "", table=res.table, rule=res.rule)
    return None


def _select_path(ctx: "PacketContext | None", fa: FibAlias, saddr: int, daddr: int, oif: str | None = None) -> FibAlias:
    """fib_select_path: a multipath route's nexthop for this flow (the one on `oif` when the socket
    is bound to a device); single-path routes as they are."""
    if not fa.nexthops:
        return fa
    on_oif = [n for n in fa.nexthops if oif is not None and n.dev == oif]
    chosen = fib_nh_view(fa, on_oif[0]) if on_oif else fib_select_multipath(fa, saddr, daddr)
    if ctx is not None and ctx.record:
        ctx.step("fib_select_multipath", nexthop=(f"via {ntoa(chosen.gateway)} " if chosen.gateway is not None
                                                  else "") + f"dev {chosen.dev}",
                 note="the kernel hashes with a per-boot random key: another nexthop is as likely")
    return chosen


def ip_mkroute_input(skb: "SkBuff", res: FibResult, daddr: int, saddr: int, in_dev: "NetDevice") -> str | None:
    """ip_mkroute_input → __mkroute_input: a forwarding route, source validated, redirect flagged."""
    net = skb.ctx_net
    fa = _select_path(skb.ctx, res.fa, saddr, daddr)
    out_dev = net.devices.get(fa.dev) if fa.dev else None
    if out_dev is None:
        out_dev = _dev_for_gateway(net, fa.gateway, res.table)
    reason, on_link = fib_validate_source_ret(net, skb, saddr, daddr, out_dev.name if out_dev else None, in_dev)
    if skb.ctx.record:
        skb.ctx.step("fib_validate_source", result=reason or "ok",
                     rp_filter=net.sysctl.dev(in_dev.name, "rp_filter"))
    if reason:
        return _martian(skb.ctx, "source", reason, saddr, daddr)
    redirect = False
    if out_dev is in_dev and on_link and net.sysctl.dev(in_dev.name, "send_redirects"):
        # inet_addr_onlink(out_dev, saddr, gw): gw 0 (a connected route) is not checked
        redirect = net.sysctl.dev(out_dev.name, "shared_media") or net.inet_addr_onlink(out_dev, saddr, fa.gateway or 0)
    skb.dst = RouteResult(type="unicast", dev=out_dev, gateway=fa.gateway, prefsrc=fa.prefsrc,
                          route=fa.describe(), table=res.table, rule=res.rule, redirect=bool(redirect),
                          input="ip_forward", mtu=fa.mtu or (out_dev.mtu if out_dev else 1500),
                          rtax_mtu=fa.mtu, mtu_locked=fa.mtu_lock, advmss=fa.advmss)
    return None


def _dev_for_gateway(net: "Net", gateway: int | None, table: int) -> "NetDevice | None":
    if gateway is None:
        return None
    for dev in net.devices.values():
        for ifa in dev.addrs:
            if gateway & ifa.mask == ifa.address & ifa.mask:
                return dev
    return None


def ip_route_output(net: "Net", daddr: int, saddr: int = 0, oif: str | None = None, mark: int = 0,
                    tos: int = 0, ctx: "PacketContext | None" = None) -> RouteResult:
    """ip_route_output_key_hash_rcu: route for a packet the host sends."""
    if ipv4_is_lbcast(daddr) or ipv4_is_multicast(daddr):
        dev = net.devices.get(oif) if oif else None
        return RouteResult(type="broadcast" if ipv4_is_lbcast(daddr) else "multicast", dev=dev,
                           prefsrc=saddr or (dev.addrs[0].local if dev and dev.addrs else 0),
                           route="broadcast", table=255)
    fl = Flowi4(daddr=daddr, saddr=saddr, iif="lo", oif=oif, mark=mark, tos=tos)
    res = fib_lookup(net, fl)
    if ctx is not None and ctx.record:
        ctx.step("fib_lookup", **_describe(res))
    if res.error is not None or res.fa is None:
        return RouteResult(type="unreachable", error=res.error or ENETUNREACH, table=res.table, rule=res.rule,
                           route=res.fa.describe() if res.fa else "")
    fa = _select_path(ctx, res.fa, saddr, daddr, oif)
    if fa.type == "broadcast" and fa.dev in net.devices:
        # __mkroute_output: a directed broadcast leaves on the route's device with RTCF_BROADCAST |
        # RTCF_LOCAL (dst.output ip_mc_output loops a copy back; dst.input ip_local_deliver)
        dev = net.devices[fa.dev]
        src = saddr or fa.prefsrc or net.inet_select_addr(dev, daddr)
        return RouteResult(type="broadcast", dev=dev, prefsrc=src, route=fa.describe(), table=res.table,
                           rule=res.rule, input="ip_local_deliver", mtu=dev.mtu)
    if fa.type in ("local", "broadcast"):
        src = saddr or daddr
        return RouteResult(type=fa.type, dev=net.loopback, prefsrc=src, route=fa.describe(), table=res.table,
                           rule=res.rule, mtu=net.loopback.mtu)
    dev = net.devices.get(fa.dev) if fa.dev else _dev_for_gateway(net, fa.gateway, res.table)
    src = saddr or fa.prefsrc or (net.inet_select_addr(dev, fa.gateway or daddr) if dev else 0)
    return RouteResult(type="unicast", dev=dev, gateway=fa.gateway, prefsrc=src, route=fa.describe(),
                       table=res.table, rule=res.rule, mtu=fa.mtu or (dev.mtu if dev else 1500),
                       rtax_mtu=fa.mtu, mtu_locked=fa.mtu_lock, advmss=fa.advmss)


def fib_compute_spec_dst(skb: "SkBuff") -> int:
    """fib_compute_spec_dst: the address a reply to this packet comes from.  Its own destination when
    it was routed to a local address; for a broadcast or multicast, the preferred source of the route
    back to the sender (fib_result_prefsrc), else the input device's address."""
    net = skb.ctx_net
    iph = skb.iph
    if skb.dst is not None and skb.dst.type == "local":
        return iph.daddr
    if not ipv4_is_zeronet(iph.saddr):
        mark = skb.mark if skb.dev is not None and net.sysctl.dev(skb.dev.name, "src_valid_mark") else 0
        res = fib_lookup(net, Flowi4(daddr=iph.saddr, saddr=0, iif="lo", mark=mark, tos=iph.tos))
        if res.error is None and res.fa is not None:
            fa = _select_path(None, res.fa, 0, iph.saddr)
            if fa.prefsrc:
                return fa.prefsrc
            dev = net.devices.get(fa.dev) if fa.dev else _dev_for_gateway(net, fa.gateway, res.table)
            return net.inet_select_addr(dev, fa.gateway or iph.saddr)
    return net.inet_select_addr(skb.dev, iph.saddr, "link")


def ip_route_me_harder(skb: "SkBuff") -> bool:
    """Re-route a locally generated packet after netfilter changed its addresses or mark."""
    net = skb.ctx_net
    iph = skb.iph
    saddr = iph.saddr if iph.saddr in net.local_addrs else 0
    rt = ip_route_output(net, iph.daddr, saddr, mark=skb.mark, tos=iph.tos, ctx=skb.ctx)
    skb.ctx.step("ip_route_me_harder", route=rt.route, dev=rt.dev.name if rt.dev else None)
    if rt.error:
        from pathtrace.net.core.skbuff import kfree_skb_reason
        kfree_skb_reason(skb, "IP_OUTNOROUTES")
        return False
    skb.dst = rt
    return True


def inet_addr_type_dev_table(net: "Net", dev: "NetDevice | None", addr: int) -> str:
    """inet_addr_type_dev_table: the type of `addr` as the local table (or dev's l3 table) sees it."""
    return inet_addr_type(net, addr)


def inet_addr_type(net: "Net", addr: int) -> str:
    """inet_addr_type: LOCAL, BROADCAST, MULTICAST, UNICAST, … from the local then main table."""
    if ipv4_is_zeronet(addr) or ipv4_is_lbcast(addr):
        return "BROADCAST"
    if ipv4_is_multicast(addr):
        return "MULTICAST"
    fa = net.fib_tables[255].lookup(addr)
    return fa.type.upper() if fa is not None else "UNICAST"
