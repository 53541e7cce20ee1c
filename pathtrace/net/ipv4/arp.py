"""net/ipv4/arp.c: answer requests for our addresses, learn neighbours, resolve next hops."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from pathtrace.lib.inet import ipv4_is_loopback, ipv4_is_multicast, mac_ntoa, ntoa
from pathtrace.net.core.dev import BROADCAST_MAC, dev_queue_xmit
from pathtrace.net.core.neighbour import NUD_REACHABLE, NUD_STALE, Neighbour
from pathtrace.net.core.skbuff import (
    ETH_P_ARP, PACKET_HOST, PACKET_LOOPBACK, PACKET_OTHERHOST, SkBuff, consume_skb, kfree_skb_reason,
)

if TYPE_CHECKING:  # pragma: no cover
    from pathtrace.net.core.net_namespace import Net
    from pathtrace.net.core.netdevice import NetDevice
    from pathtrace.trace import PacketContext

ARPOP_REQUEST = 1
ARPOP_REPLY = 2


def arp_rcv(skb: SkBuff, dev: "NetDevice") -> None:
    ctx = skb.ctx
    ctx.step("arp_rcv", dev=dev.name)
    if skb.pkt_type in (PACKET_OTHERHOST, PACKET_LOOPBACK):
        consume_skb(skb, "CONSUMED", why="ARP frame for another host")
        return
    raw = skb.raw
    if len(raw) < 28:
        kfree_skb_reason(skb, "PKT_TOO_SMALL", why=f"ARP header truncated ({len(raw)} bytes)")
        return
    hrd, pro, hln, pln, op = struct.unpack_from("!HHBBH", raw)
    if hln != 6 or pln != 4:
        kfree_skb_reason(skb, "NOT_SPECIFIED", why=f"hln {hln} pln {pln}")
        return
    arp_process(skb, dev, hrd, pro, op, raw[8:14], struct.unpack_from("!I", raw, 14)[0],
                raw[18:24], struct.unpack_from("!I", raw, 24)[0])


def arp_process(skb: SkBuff, dev: "NetDevice", hrd: int, pro: int, op: int, sha: bytes, sip: int,
                tha: bytes, tip: int) -> None:
    from pathtrace.net.core.neighbour_output import neigh_update
    from pathtrace.net.ipv4.route import inet_addr_type, ip_route_input_slow
    ctx = skb.ctx
    net = skb.ctx_net
    if ctx.record:
        ctx.step("arp_process", op={1: "request", 2: "reply"}.get(op, op), sip=ntoa(sip), sha=mac_ntoa(sha),
                 tip=ntoa(tip))
    if hrd not in (1, 6) or pro != 0x0800 or op not in (ARPOP_REQUEST, ARPOP_REPLY):
        kfree_skb_reason(skb, "NOT_SPECIFIED", why="unsupported ARP hardware/protocol/op")
        return
    if ipv4_is_multicast(tip) or (not net.sysctl.dev(dev.name, "route_localnet") and ipv4_is_loopback(tip)):
        kfree_skb_reason(skb, "NOT_SPECIFIED", why="target is multicast or loopback")
        return
    if sip == 0:
        if op == ARPOP_REQUEST and inet_addr_type(net, tip) == "LOCAL" and not arp_ignore(net, dev, sip, tip):
            arp_send(net, ARPOP_REPLY, sip, dev, tip, sha, dev.mac, sha, ctx)
        consume_skb(skb)
        return
    if op == ARPOP_REQUEST:
        skb.iph = _ArpRouteKey(tip)
        reason = ip_route_input_slow(skb, tip, sip, dev)
        skb.iph = None
        if reason is None and skb.dst is not None and skb.dst.type == "local":
            if not arp_ignore(net, dev, sip, tip):
                n = neigh_event_ns(net, sha, sip, dev, ctx)
                arp_send(net, ARPOP_REPLY, sip, dev, tip, sha, dev.mac, sha, ctx)
                del n
            else:
                ctx.step("arp_ignore", result="not answered (arp_ignore)")
            consume_skb(skb)
            return
    n = net.neigh.lookup(sip, dev.name)
    if n is not None:
        state = NUD_REACHABLE if op == ARPOP_REPLY and skb.pkt_type == PACKET_HOST else NUD_STALE
        neigh_update(net, n, sha, state, override=True, ctx=ctx)
    consume_skb(skb)


class _ArpRouteKey:
    """ip_route_input_noref on an ARP packet reads only the TOS of a header it does not have."""

    __slots__ = ("tos", "daddr")

    def __init__(self, tip: int):
        self.tos = 0
        self.daddr = tip


def arp_ignore(net: "Net", dev: "NetDevice", sip: int, tip: int) -> bool:
    """arp_ignore sysctl: 0 answers for any local address, 1 only for the receiving device's."""
    mode = net.sysctl.dev(dev.name, "arp_ignore")
    if mode == 0:
        return False
    on_dev = [ifa for ifa in dev.addrs if ifa.local == tip]
    if mode == 1:
        return not on_dev
    if mode == 2:
        return not any((sip & ifa.mask) == (ifa.local & ifa.mask) for ifa in on_dev)
    return mode != 0


def neigh_event_ns(net: "Net", sha: bytes, sip: int, dev: "NetDevice", ctx: "PacketContext") -> Neighbour:
    """A request from sip teaches us its address: create or refresh the entry as STALE."""
    from pathtrace.net.core.neighbour_output import neigh_update
    n = net.neigh.lookup(sip, dev.name)
    if n is None:
        n = net.neigh.create(sip, dev.name)
    ctx.step("neigh_event_ns", neighbour=ntoa(sip))
    neigh_update(net, n, sha, NUD_STALE, override=True, ctx=ctx)
    return n


def arp_solicit(net: "Net", n: Neighbour, dev: "NetDevice", ctx: "PacketContext", skb: SkBuff | None) -> None:
    """Send a request for n: broadcast while INCOMPLETE, unicast to the old address while PROBE."""
    from pathtrace.net.ipv4.route import inet_addr_type
    saddr = 0
    if skb is not None and skb.iph is not None and net.sysctl.dev(dev.name, "arp_announce") < 2 \
            and inet_addr_type(net, skb.iph.saddr) == "LOCAL":
        saddr = skb.iph.saddr
    if not saddr:
        saddr = net.inet_select_addr(dev, n.addr, "link")
    probes = n.probes - net.neigh.parms.ucast_probes
    dst_hw = n.lladdr if probes < 0 and n.lladdr else None
    ctx.step("arp_solicit", target=ntoa(n.addr), source=ntoa(saddr), unicast=dst_hw is not None)
    arp_send(net, ARPOP_REQUEST, n.addr, dev, saddr, dst_hw, dev.mac, None, ctx)


def arp_send(net: "Net", op: int, dest_ip: int, dev: "NetDevice", src_ip: int, dest_hw: bytes | None,
             src_hw: bytes, target_hw: bytes | None, ctx: "PacketContext") -> None:
    """arp_send_dst → arp_create → arp_xmit → dev_queue_xmit."""
    ctx.step("arp_send_dst", op="reply" if op == ARPOP_REPLY else "request", to=ntoa(dest_ip))
    ctx.step("arp_create")
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + src_hw + struct.pack("!I", src_ip) + \
        (target_hw or b"\0" * 6) + struct.pack("!I", dest_ip)
    ctx.step("arp_xmit")
    ctx.step("arp_xmit_finish")
    skb = SkBuff(ctx=ctx, dev=dev, protocol=ETH_P_ARP, raw=body)
    skb.generated_by = "arp_send_dst"
    dev_queue_xmit(skb, dev, dest_hw or BROADCAST_MAC, ETH_P_ARP, kind="generated")


def arp_send_from_capture(ctx: "PacketContext", dev: "NetDevice", body: bytes) -> None:
    """An ARP frame the capture shows the host sending that the model did not predict.

    A request means some packet of the host's waited for this neighbour (neigh_resolve_output →
    __neigh_event_send → neigh_probe → arp_solicit): the entry is created INCOMPLETE so that the
    reply resolves it, as it did on the host.  A reply answered a request the model did not answer."""
    from pathtrace.net.core.neighbour_output import __neigh_event_send, _arp_constructor
    net = ctx.net
    if len(body) < 28:
        return
    op = struct.unpack_from("!H", body, 6)[0]
    sip, tip = struct.unpack_from("!I", body, 14)[0], struct.unpack_from("!I", body, 24)[0]
    if op == ARPOP_REQUEST:
        n = net.neigh.lookup(tip, dev.name)
        if n is None:
            n = net.neigh.create(tip, dev.name)
            _arp_constructor(net, n, dev)
            ctx.step("__neigh_create", neighbour=ntoa(tip), dev=dev.name, state=n.state)
        ctx.step("neigh_resolve_output", neighbour=ntoa(tip), state=n.state)
        __neigh_event_send(net, n, None, dev, ctx)
    elif op == ARPOP_REPLY:
        arp_send(net, ARPOP_REPLY, tip, dev, sip, body[18:24], dev.mac, body[18:24], ctx)
