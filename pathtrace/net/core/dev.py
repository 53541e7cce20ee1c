"""net/core/dev.c and net/ethernet/eth.c: a frame enters through its driver, leaves through a qdisc.

Receive: driver rx → napi_gro_receive (or the backlog for veth/loopback) →
__netif_receive_skb_core (VLAN, protocol dispatch) → ip_rcv / arp_rcv.
Transmit: __dev_queue_xmit → qdisc → dev_hard_start_xmit → the driver's ndo_start_xmit.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from pathtrace.drivers.net import driver_ops
from pathtrace.lib.checksum import is_partial_csum
from pathtrace.net.core.skbuff import (
    CHECKSUM_PARTIAL, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, PACKET_BROADCAST, PACKET_HOST, PACKET_LOOPBACK, PACKET_MULTICAST,
    PACKET_OTHERHOST,
    PKT_TYPE_NAMES, SkBuff, kfree_skb_reason,
)
from pathtrace.trace import Emitted

if TYPE_CHECKING:  # pragma: no cover
    from pathtrace.net.core.netdevice import NetDevice

BROADCAST_MAC = b"\xff" * 6


def eth_type_trans(skb: SkBuff, dev: "NetDevice") -> None:
    """Classify the frame by destination MAC (PACKET_HOST/BROADCAST/MULTICAST/OTHERHOST)."""
    dst = skb.mac_dst
    if dst[0] & 1:
        skb.pkt_type = PACKET_BROADCAST if dst == BROADCAST_MAC else PACKET_MULTICAST
    elif dst != dev.mac:
        skb.pkt_type = PACKET_OTHERHOST
    else:
        skb.pkt_type = PACKET_HOST


def netif_receive(skb: SkBuff, dev: "NetDevice", pkt_type_known: bool = False) -> None:
    """The driver's receive path up to the protocol handler."""
    ctx = skb.ctx
    ops = driver_ops(dev.driver)
    dev.rx_packets += 1
    if ctx.record:
        for fn in ops.rx:
            ctx.step(fn, dev=dev.name)
    if not pkt_type_known:
        eth_type_trans(skb, dev)
    if ops.partial_csum and skb.protocol == ETH_P_IP and is_partial_csum(skb.raw):
        skb.ip_summed = CHECKSUM_PARTIAL     # the peer's offloaded checksum was never filled in
    if ctx.record:
        ctx.step("eth_type_trans", pkt_type=PKT_TYPE_NAMES[skb.pkt_type], protocol=f"0x{skb.protocol:04x}",
                 readdressed_from=skb.cb.get("readdressed_from", ""),
                 **({"ip_summed": "CHECKSUM_PARTIAL"} if skb.ip_summed == CHECKSUM_PARTIAL else {}))
    if ops.napi:
        ctx.step("napi_gro_receive", dev=dev.name)
        ctx.step("__netif_receive_skb_core", dev=dev.name)
    else:
        ctx.step("process_backlog", dev=dev.name)
        ctx.step("__netif_receive_skb", dev=dev.name)
        ctx.step("__netif_receive_skb_one_core", dev=dev.name)
        ctx.step("__netif_receive_skb_core", dev=dev.name)
    __netif_receive_skb_core(skb, dev)


def __netif_receive_skb_core(skb: SkBuff, dev: "NetDevice") -> None:
    ctx = skb.ctx
    if skb.vlan_tci is not None:
        vid = skb.vlan_tci & 0x0FFF
        ctx.step("skb_vlan_untag", vlan=vid)
        # no VLAN device is modelled: vlan_do_receive finds none, a tagged frame is not ours
        if vid:
            ctx.step("vlan_do_receive", vlan=vid, result="no vlan device", pkt_type="OTHERHOST")
            skb.pkt_type = PACKET_OTHERHOST
    if not dev.up:
        kfree_skb_reason(skb, "DEV_READY", dev=dev.name)
        return
    proto = skb.protocol
    if proto == ETH_P_IP:
        from pathtrace.net.ipv4.ip_input import ip_rcv
        ip_rcv(skb, dev)
    elif proto == ETH_P_ARP:
        from pathtrace.net.ipv4.arp import arp_rcv
        arp_rcv(skb, dev)
    elif proto == ETH_P_IPV6:
        skb.verdict = "NOT_MODELLED"
        ctx.step("ipv6_rcv", note="IPv6 is not modelled by pathtrace")
    else:
        kfree_skb_reason(skb, "UNHANDLED_PROTO", protocol=f"0x{proto:04x}")


def dev_queue_xmit(skb: SkBuff, dev: "NetDevice", dst_mac: bytes, ethertype: int = ETH_P_IP,
                   kind: str = "forwarded") -> None:
    """__dev_queue_xmit → qdisc → dev_hard_start_xmit → ndo_start_xmit; records the frame that leaves."""
    ctx = skb.ctx
    ops = driver_ops(dev.driver)
    if ctx.record:
        ctx.step("__dev_queue_xmit", dev=dev.name, qdisc=ops.qdisc)
        if ops.qdisc != "noqueue":
            ctx.step("sch_direct_xmit", qdisc=ops.qdisc)
        ctx.step("dev_hard_start_xmit", dev=dev.name)
        ctx.step(ops.xmit, dev=dev.name)
    if skb.verdict is None:
        skb.verdict = "TRANSMIT"
    skb.cb["egress"] = dev.name
    data = skb.network_bytes() if (ctx.emit_frames or dev.loopback) else b""
    dev.tx_packets += 1
    dev.tx_bytes += skb.len + 14
    if dev.loopback:
        _loopback_xmit(skb, dev, data)
        return
    frame = dst_mac + dev.mac + struct.pack("!H", ethertype) + data if ctx.emit_frames else b""
    if skb.generated_by and kind == "forwarded":
        kind = "generated"
    ctx.emitted.append(Emitted(dev.name, frame, "", kind))


def dev_loopback_xmit(skb: SkBuff, dev: "NetDevice") -> None:
    """dev_loopback_xmit: a broadcast/multicast copy of what the host sends comes back in on the same
    device as PACKET_LOOPBACK, its route kept (ip_rcv_finish skips the input lookup)."""
    from pathtrace.net.ipv4.ip_input import ip_rcv
    ctx = skb.ctx
    ctx.step("dev_loopback_xmit", dev=dev.name)
    new = SkBuff(ctx=ctx, dev=dev, iif=dev, pkt_type=PACKET_LOOPBACK, protocol=skb.protocol,
                 raw=skb.network_bytes(), mark=skb.mark, tstamp=skb.tstamp, ct=skb.ct, ctinfo=skb.ctinfo,
                 dst=skb.dst)
    ctx.step("__netif_rx", dev=dev.name)
    ctx.step("__netif_receive_skb_core", dev=dev.name)
    ip_rcv(new, dev)


def _loopback_xmit(skb: SkBuff, lo: "NetDevice", data: bytes) -> None:
    """loopback_xmit: the packet comes straight back in through lo's backlog."""
    from pathtrace.net.ipv4.ip_input import ip_rcv
    new = SkBuff(ctx=skb.ctx, dev=lo, iif=lo, pkt_type=PACKET_HOST, protocol=skb.protocol, raw=data,
                 mark=skb.mark, tstamp=skb.tstamp, ct=skb.ct, ctinfo=skb.ctinfo, dst=skb.dst)
    ctx = skb.ctx
    ctx.step("__netif_rx", dev="lo")
    ctx.step("__netif_receive_skb_core", dev="lo")
    ip_rcv(new, lo)
