"""Neighbour output and the NUD state machine (net/core/neighbour.c, arp_constructor).

neigh_output → neigh_hh_output when the entry is connected and its header cached,
else neigh_resolve_output → neigh_event_send, which may queue the packet and probe.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pathtrace.kernel.time.timer import timer_expiry
from pathtrace.lib.inet import ipv4_is_lbcast, ipv4_is_multicast, mac_ntoa, ntoa
from pathtrace.net.core.dev import BROADCAST_MAC, dev_queue_xmit
from pathtrace.net.core.neighbour import (
    NUD_CONNECTED, NUD_DELAY, NUD_FAILED, NUD_INCOMPLETE, NUD_NOARP, NUD_NONE, NUD_PROBE, NUD_REACHABLE,
    NUD_STALE, NUD_VALID, Neighbour,
)
from pathtrace.net.core.skbuff import SkBuff, kfree_skb_reason

if TYPE_CHECKING:  # pragma: no cover
    from pathtrace.net.core.net_namespace import Net
    from pathtrace.net.core.netdevice import NetDevice
    from pathtrace.trace import PacketContext


def _arp_constructor(net: "Net", n: Neighbour, dev: "NetDevice") -> None:
    """Broadcast, multicast and loopback destinations need no resolution (NUD_NOARP)."""
    if dev.loopback:
        n.state, n.lladdr = NUD_NOARP, b"\0" * 6
    elif ipv4_is_lbcast(n.addr) or any(n.addr == ifa.broadcast for ifa in dev.addrs):
        n.state, n.lladdr = NUD_NOARP, BROADCAST_MAC
    elif ipv4_is_multicast(n.addr):
        n.state = NUD_NOARP
        n.lladdr = bytes([0x01, 0x00, 0x5E, (n.addr >> 16) & 0x7F, (n.addr >> 8) & 0xFF, n.addr & 0xFF])


def neigh_output_for(skb: SkBuff, dev: "NetDevice", nexthop: int) -> None:
    """ip_neigh_for_gw + neigh_output."""
    net = skb.ctx_net
    n = net.neigh.lookup(nexthop, dev.name)
    ctx = skb.ctx
    if ctx.learn is not None:
        ctx.learn.neighbour(n)
    if n is None:
        n = net.neigh.create(nexthop, dev.name)
        _arp_constructor(net, n, dev)
        ctx.step("__neigh_create", neighbour=ntoa(nexthop), dev=dev.name, state=n.state)
    if n.state in NUD_CONNECTED and n.hh_cached:
        ctx.step("neigh_hh_output", neighbour=ntoa(nexthop), state=n.state, lladdr=mac_ntoa(n.lladdr))
        n.updated = ctx.now
        dev_queue_xmit(skb, dev, n.lladdr)
        return
    if n.state == NUD_NOARP:
        ctx.step("neigh_direct_output" if dev.loopback else "neigh_resolve_output", neighbour=ntoa(nexthop),
                 state=n.state)
        if not n.hh_cached and not dev.loopback:
            net.neigh.hh_inits.append((n.addr, n.dev))
        n.hh_cached = not dev.loopback
        dev_queue_xmit(skb, dev, n.lladdr)
        return
    neigh_resolve_output(skb, n, dev)


def neigh_resolve_output(skb: SkBuff, n: Neighbour, dev: "NetDevice") -> None:
    ctx = skb.ctx
    ctx.step("neigh_resolve_output", neighbour=ntoa(n.addr), state=n.state)
    if __neigh_event_send(skb.ctx_net, n, skb, dev):
        return
    if not n.hh_cached:
        skb.ctx_net.neigh.hh_inits.append((n.addr, n.dev))
    n.hh_cached = True
    dev_queue_xmit(skb, dev, n.lladdr)


def __neigh_event_send(net: "Net", n: Neighbour, skb: SkBuff | None, dev: "NetDevice",
                       ctx: "PacketContext | None" = None) -> bool:
    """True when the packet did not go out now (queued or dropped).  Without an skb (a capture shows
    the host resolving for a packet the model has not seen yet) only the entry's state and probe run."""
    if n.state in NUD_CONNECTED or n.state in (NUD_DELAY, NUD_PROBE):
        return False
    ctx = skb.ctx if skb is not None else ctx
    now = ctx.now if ctx else 0.0
    parms = net.neigh.parms
    immediate_probe = False
    if n.state in (NUD_NONE, NUD_FAILED):
        if parms.mcast_probes + parms.app_probes:
            n.probes = parms.ucast_probes
            n.state = NUD_INCOMPLETE
            n.updated = now
            n.timer = timer_expiry(now, max(parms.retrans_time, 0.01))
            immediate_probe = True
        else:
            n.state = NUD_FAILED
            if skb is not None:
                kfree_skb_reason(skb, "NEIGH_FAILED")
            return True
    elif n.state == NUD_STALE:
        n.state = NUD_DELAY
        n.updated = now
        n.timer = timer_expiry(now, parms.delay_probe_time)
    if ctx is not None:
        ctx.step("__neigh_event_send", neighbour=ntoa(n.addr), state=n.state)
    if n.state == NUD_INCOMPLETE:
        if skb is not None:
            size = skb.len + 14 + 768      # skb->truesize: data plus sk_buff overhead, as the kernel counts it
            while n.arp_queue and n.queue_bytes + size > parms.unres_qlen_bytes:
                old = n.arp_queue.pop(0)
                n.queue_bytes -= old.cb.get("truesize", 0)
                ctx.step("__neigh_event_send", dropped_from_queue=True)
                ctx.warnings.append("a queued packet was dropped: NEIGH_QUEUEFULL")
            skb.cb["truesize"] = size
            n.arp_queue.append(skb)
            n.queue_bytes += size
            skb.verdict = skb.verdict if skb.verdict not in (None, "TRANSMIT") else "QUEUED"
            skb.cb["egress"] = dev.name
            ctx.step("__skb_queue_tail", queue="arp_queue", neighbour=ntoa(n.addr), queued=len(n.arp_queue))
        if immediate_probe and ctx is not None:
            neigh_probe(net, n, dev, ctx, skb)
        return True
    return False


def neigh_probe(net: "Net", n: Neighbour, dev: "NetDevice", ctx: "PacketContext", skb: SkBuff | None) -> None:
    from pathtrace.net.ipv4.arp import arp_solicit
    ctx.step("neigh_probe", neighbour=ntoa(n.addr))
    source_skb = n.arp_queue[-1] if n.arp_queue else skb
    arp_solicit(net, n, dev, ctx, source_skb)
    n.probes += 1


def neigh_timer_handler(net: "Net", n: Neighbour, ctx: "PacketContext") -> None:
    """Run one due timer of a neighbour entry on capture time."""
    parms = net.neigh.parms
    now = n.timer
    ctx.step("neigh_timer_handler", neighbour=ntoa(n.addr), state=n.state, at=round(now, 6))
    n.timer = None
    dev = net.devices[n.dev]
    if n.state == NUD_REACHABLE:
        if now - n.updated < parms.delay_probe_time:
            n.state = NUD_DELAY
            n.timer = timer_expiry(now, parms.delay_probe_time)
        else:
            n.state = NUD_STALE
        return
    if n.state == NUD_DELAY:
        if n.confirmed >= n.updated and now <= n.confirmed + parms.delay_probe_time:
            n.state = NUD_REACHABLE
            n.timer = timer_expiry(now, n.confirmed + parms.base_reachable_time - now)
            return
        n.state = NUD_PROBE
        n.updated = now
        n.probes = 0
    max_probes = parms.ucast_probes + parms.app_probes + (0 if n.state == NUD_PROBE else parms.mcast_probes)
    if n.state in (NUD_INCOMPLETE, NUD_PROBE) and n.probes >= max_probes:
        n.state = NUD_FAILED
        neigh_invalidate(net, n, ctx)
        return
    if n.state in (NUD_INCOMPLETE, NUD_PROBE):
        n.timer = timer_expiry(now, parms.retrans_time)
        neigh_probe(net, n, dev, ctx, None)


def neigh_invalidate(net: "Net", n: Neighbour, ctx: "PacketContext") -> None:
    """Resolution failed: every queued packet gets ICMP host unreachable and NEIGH_FAILED."""
    from pathtrace.net.ipv4.icmp import ICMP_DEST_UNREACH, ICMP_HOST_UNREACH, icmp_send
    ctx.step("neigh_invalidate", neighbour=ntoa(n.addr), queued=len(n.arp_queue))
    queue, n.arp_queue, n.queue_bytes = n.arp_queue, [], 0
    for skb in queue:
        skb.ctx = ctx
        ctx.step("arp_error_report")
        ctx.step("ipv4_link_failure")
        icmp_send(skb, ICMP_DEST_UNREACH, ICMP_HOST_UNREACH)
        skb.verdict = None
        kfree_skb_reason(skb, "NEIGH_FAILED")
        ctx.warnings.append(f"a packet queued for {ntoa(n.addr)} was dropped: NEIGH_FAILED")


def neigh_update(net: "Net", n: Neighbour, lladdr: bytes, new: str, override: bool, ctx: "PacketContext") -> None:
    """__neigh_update from ARP: new state, and release of the queue when the entry becomes valid."""
    old = n.state
    if old in (NUD_NOARP, "PERMANENT"):
        ctx.step("__neigh_update", neighbour=ntoa(n.addr), result=f"{old} entry unchanged")
        return
    if n.lladdr is not None and lladdr != n.lladdr and old in NUD_VALID and not override:
        new = old if new != NUD_REACHABLE else NUD_STALE
        lladdr = n.lladdr
    elif lladdr == n.lladdr and new == NUD_STALE and old in NUD_VALID:
        new = old
    if lladdr != n.lladdr:
        n.hh_cached = False
    n.lladdr = lladdr
    n.state = new
    n.updated = ctx.now
    if new == NUD_REACHABLE:
        n.confirmed = ctx.now
        n.timer = timer_expiry(ctx.now, net.neigh.parms.base_reachable_time)
    elif new == NUD_STALE:
        n.timer = None
    ctx.step("__neigh_update", neighbour=ntoa(n.addr), old=old, new=new, lladdr=mac_ntoa(lladdr))
    if old not in NUD_VALID and new in NUD_VALID and n.arp_queue:
        queue, n.arp_queue, n.queue_bytes = n.arp_queue, [], 0
        dev = net.devices[n.dev]
        for skb in queue:
            skb.ctx = ctx
            ctx.step("neigh_resolve_output", neighbour=ntoa(n.addr), state=n.state, released=True)
            n.hh_cached = True
            dev_queue_xmit(skb, dev, n.lladdr, kind="released")
