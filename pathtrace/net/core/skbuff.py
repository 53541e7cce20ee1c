"""struct sk_buff, reduced to what the modelled paths read and write.

The network header is parsed once (ip_rcv_core needs every field for its checks);
transport fields are read on demand from the payload so packets that never reach
a port match pay nothing for them.  Writers (NAT, TTL) patch the bytes and fix the
checksums incrementally, as the kernel's mangling helpers do.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pathtrace.lib.checksum import csum_replace

if TYPE_CHECKING:  # pragma: no cover
    from pathtrace.net.core.netdevice import NetDevice
    from pathtrace.trace import PacketContext

# include/uapi/linux/if_packet.h
PACKET_HOST = 0
PACKET_BROADCAST = 1
PACKET_MULTICAST = 2
PACKET_OTHERHOST = 3
PACKET_OUTGOING = 4
PACKET_LOOPBACK = 5
PKT_TYPE_NAMES = {0: "HOST", 1: "BROADCAST", 2: "MULTICAST", 3: "OTHERHOST", 4: "OUTGOING", 5: "LOOPBACK"}

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_IPV6 = 0x86DD

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17

IP_CE = 0x8000
IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFSET = 0x1FFF

CHECKSUM_NONE = 0
CHECKSUM_PARTIAL = 3

_L4_CSUM_OFFSET = {IPPROTO_TCP: 16, IPPROTO_UDP: 6}


@dataclass(slots=True)
class Iphdr:
    """struct iphdr with host-order integer fields; options kept as raw bytes."""

    version: int
    ihl: int
    tos: int
    tot_len: int
    id: int
    frag_off: int
    ttl: int
    protocol: int
    check: int
    saddr: int
    daddr: int
    options: bytes = b""

    def pack(self) -> bytes:
        return struct.pack(
            "!BBHHHBBHII", (self.version << 4) | self.ihl, self.tos, self.tot_len, self.id,
            self.frag_off, self.ttl, self.protocol, self.check, self.saddr, self.daddr,
        ) + self.options

    def is_fragment(self) -> bool:
        return bool(self.frag_off & (IP_MF | IP_OFFSET))


@dataclass(slots=True, eq=False)
class SkBuff:
    """One packet in flight.  `ctx` ties it to the trace of the input event that caused it."""

    ctx: "PacketContext"
    dev: "NetDevice | None" = None          # device the packet is on (ingress, then egress)
    iif: "NetDevice | None" = None          # original ingress device
    pkt_type: int = PACKET_HOST
    protocol: int = ETH_P_IP                # skb->protocol (ethertype)
    mac_dst: bytes = b"\xff" * 6
    mac_src: bytes = b"\0" * 6
    vlan_tci: int | None = None
    iph: Iphdr | None = None
    payload: bytearray = field(default_factory=bytearray)  # everything after the IP header
    raw: bytes = b""                        # network-layer bytes as received (for arp / malformed)
    mark: int = 0
    tstamp: float = 0.0
    ct: Any = None                          # nf_conn (pathtrace.net.netfilter.nf_conntrack)
    ctinfo: int = 0
    dst: Any = None                         # RouteResult of the route lookup
    sk: Any = None                          # owning local socket for host-generated packets
    generated_by: str | None = None         # kernel function that built a host-generated packet
    verdict: str | None = None
    reason: str | None = None
    nf_trace: bool = False
    queue_mapping: int = 0
    ip_summed: int = 0                      # CHECKSUM_NONE, or CHECKSUM_PARTIAL as a veth peer hands it over
    cb: dict = field(default_factory=dict)  # per-layer scratch, like skb->cb

    @property
    def ctx_net(self) -> Any:
        """The namespace this packet lives in (skb->dev->nd_net)."""
        return self.ctx.net

    # ---- transport helpers -------------------------------------------------------
    @property
    def len(self) -> int:
        return self.iph.tot_len if self.iph is not None else len(self.raw)

    def l4_available(self, need: int) -> bool:
        """True when the first fragment carries at least `need` transport bytes."""
        return self.iph is not None and not (self.iph.frag_off & IP_OFFSET) and len(self.payload) >= need

    @property
    def sport(self) -> int:
        return struct.unpack_from("!H", self.payload, 0)[0] if self.l4_available(4) else 0

    @property
    def dport(self) -> int:
        return struct.unpack_from("!H", self.payload, 2)[0] if self.l4_available(4) else 0

    @property
    def tcp_flags(self) -> int:
        return self.payload[13] if self.l4_available(14) else 0

    @property
    def tcp_seq(self) -> int:
        return struct.unpack_from("!I", self.payload, 4)[0] if self.l4_available(8) else 0

    @property
    def tcp_ack_seq(self) -> int:
        return struct.unpack_from("!I", self.payload, 8)[0] if self.l4_available(12) else 0

    @property
    def tcp_doff(self) -> int:
        return (self.payload[12] >> 4) * 4 if self.l4_available(13) else 0

    @property
    def icmp_type(self) -> int:
        return self.payload[0] if self.l4_available(1) else -1

    @property
    def icmp_code(self) -> int:
        return self.payload[1] if self.l4_available(2) else -1

    @property
    def icmp_id(self) -> int:
        return struct.unpack_from("!H", self.payload, 4)[0] if self.l4_available(6) else 0

    # ---- mangling (NAT, TTL) -------------------------------------------------------
    def set_addr(self, which: str, new: int) -> None:
        """Rewrite saddr/daddr, fixing the IP and the transport pseudo-header checksum."""
        if self.ctx.learn is not None:
            self.ctx.learn.mangle.append(("set_addr", which, new))
        iph = self.iph
        old = getattr(iph, which)
        if old == new:
            return
        setattr(iph, which, new)
        iph.check = csum_replace(iph.check, old, new, 32)
        off = _L4_CSUM_OFFSET.get(iph.protocol)
        if off is not None and self.l4_available(off + 2):
            l4 = struct.unpack_from("!H", self.payload, off)[0]
            if not (iph.protocol == IPPROTO_UDP and l4 == 0):
                struct.pack_into("!H", self.payload, off, csum_replace(l4, old, new, 32) or (0xFFFF if iph.protocol == IPPROTO_UDP else 0))

    def set_port(self, offset: int, new: int) -> None:
        """Rewrite a 16-bit transport field (port or ICMP id) and its checksum."""
        if self.ctx.learn is not None:
            self.ctx.learn.mangle.append(("set_port", offset, new))
        if not self.l4_available(offset + 2):
            return
        old = struct.unpack_from("!H", self.payload, offset)[0]
        if old == new:
            return
        struct.pack_into("!H", self.payload, offset, new)
        proto = self.iph.protocol
        csum_off = _L4_CSUM_OFFSET.get(proto, 2 if proto == IPPROTO_ICMP else None)
        if csum_off is not None and self.l4_available(csum_off + 2):
            l4 = struct.unpack_from("!H", self.payload, csum_off)[0]
            if not (proto == IPPROTO_UDP and l4 == 0):
                struct.pack_into("!H", self.payload, csum_off, csum_replace(l4, old, new))

    def set_ttl(self, ttl: int) -> None:
        if self.ctx.learn is not None:
            self.ctx.learn.mangle.append(("set_ttl", ttl))
        iph = self.iph
        old = (iph.ttl << 8) | iph.protocol
        iph.ttl = ttl
        iph.check = csum_replace(iph.check, old, (ttl << 8) | iph.protocol)

    def set_tos(self, tos: int) -> None:
        if self.ctx.learn is not None:
            self.ctx.learn.mangle.append(("set_tos", tos))
        iph = self.iph
        old = (iph.version << 12) | (iph.ihl << 8) | iph.tos
        iph.tos = tos
        iph.check = csum_replace(iph.check, old, (iph.version << 12) | (iph.ihl << 8) | tos)

    def network_bytes(self) -> bytes:
        """The IP packet as it stands now (header + payload)."""
        if self.iph is None:
            return bytes(self.raw)
        return self.iph.pack() + bytes(self.payload)

    def clone(self, **changes: Any) -> "SkBuff":
        """skb_copy: an independent packet (own header and payload)."""
        import copy
        new = copy.copy(self)
        new.iph = copy.copy(self.iph) if self.iph is not None else None
        new.payload = bytearray(self.payload)
        new.cb = dict(self.cb)
        new.verdict = new.reason = None
        for key, value in changes.items():
            setattr(new, key, value)
        return new


def kfree_skb_reason(skb: SkBuff, reason: str, **detail: Any) -> None:
    """Free a packet with a drop reason (SKB_DROP_REASON_* without the prefix)."""
    skb.verdict = "DROP"
    skb.reason = reason
    skb.ctx.step("kfree_skb_reason", reason=reason, **detail)


def consume_skb(skb: SkBuff, verdict: str = "CONSUMED", **detail: Any) -> None:
    """Free a packet that was handled successfully (no drop reason)."""
    skb.verdict = verdict
    skb.ctx.step("consume_skb", **detail)
