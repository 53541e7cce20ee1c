"""Rewriting packets for NAT (net/netfilter/nf_nat_proto.c).

nf_nat_manip_pkt makes the packet look like the inverse of the other direction's
tuple, with incremental checksum updates (a wrong checksum stays wrong).  For ICMP
errors of a NATed flow, nf_nat_icmp_reply_translation rewrites the quoted packet
(inverse manip), recomputes the ICMP checksum, then rewrites the outer header.
"""
from __future__ import annotations

import struct

from pathtrace.lib.checksum import csum_fold, csum_partial, csum_replace
from pathtrace.net.netfilter.nf_conntrack_core import (
    IP_CT_DIR_REPLY, IPS_DST_NAT, IPS_NAT_DONE_MASK, IPS_NAT_MASK, IPS_SRC_NAT, NF_ACCEPT, NF_DROP,
    NfConn, ctinfo2dir,
)
from pathtrace.net.netfilter.nf_conntrack_tuple import (
    IPPROTO_ICMP, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, Tuple, nf_ct_invert_tuple,
)
from pathtrace.net.netfilter.nf_nat_unique import NF_NAT_MANIP_SRC

ICMP_QUERY_TYPES = frozenset((0, 8, 13, 14, 15, 16, 17, 18))
ICMP_REDIRECT = 5


def hook2manip(hook: int) -> int:
    """HOOK2MANIP: source NAT in POST_ROUTING and LOCAL_IN, destination NAT elsewhere."""
    return NF_NAT_MANIP_SRC if hook in (4, 1) else 1


def nf_nat_ipv4_manip_pkt(skb, target: Tuple, maniptype: int) -> bool:
    """Rewrite the outer header (and its transport ports / ICMP query id) toward target."""
    proto = target.proto
    if proto in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, IPPROTO_SCTP):
        if not skb.l4_available(8):
            return False
        if maniptype == NF_NAT_MANIP_SRC:
            skb.set_port(0, target.sport)
        else:
            skb.set_port(2, target.dport)
    elif proto == IPPROTO_ICMP:
        if not skb.l4_available(8):
            return False
        if skb.payload[0] in ICMP_QUERY_TYPES:
            skb.set_port(4, target.sport)
    if maniptype == NF_NAT_MANIP_SRC:
        skb.set_addr("saddr", target.src)
    else:
        skb.set_addr("daddr", target.dst)
    return True


def nf_nat_manip_pkt(skb, ct: NfConn, mtype: int, direction: int) -> int:
    """Aim at the inverse of the other direction's tuple."""
    target = nf_ct_invert_tuple(ct.tuple(1 - direction))
    if target is None or not nf_nat_ipv4_manip_pkt(skb, target, mtype):
        return NF_DROP
    return NF_ACCEPT


def _put16(buf: bytearray, off: int, value: int) -> int:
    old = struct.unpack_from("!H", buf, off)[0]
    struct.pack_into("!H", buf, off, value)
    return old


def _fix16(buf: bytearray, off: int, old: int, new: int, width: int = 16, udp: bool = False) -> None:
    check = struct.unpack_from("!H", buf, off)[0]
    if udp and check == 0:
        return
    value = csum_replace(check, old, new, width)
    struct.pack_into("!H", buf, off, (value or 0xFFFF) if udp else value)


def _manip_quoted(buf: bytearray, off: int, target: Tuple, maniptype: int) -> bool:
    """nf_nat_ipv4_manip_pkt on the IP packet quoted at buf[off:] (only what is present)."""
    if len(buf) < off + 20:
        return False
    hdroff = off + (buf[off] & 0x0F) * 4
    proto = target.proto
    addr_off = off + (12 if maniptype == NF_NAT_MANIP_SRC else 16)
    old_addr = struct.unpack_from("!I", buf, addr_off)[0]
    new_addr = target.src if maniptype == NF_NAT_MANIP_SRC else target.dst
    port_off = hdroff + (0 if maniptype == NF_NAT_MANIP_SRC else 2)
    new_port = target.sport if maniptype == NF_NAT_MANIP_SRC else target.dport
    if proto == IPPROTO_TCP:
        if len(buf) < hdroff + 8:
            return False
        old_port = _put16(buf, port_off, new_port)
        if len(buf) >= hdroff + 20:
            _fix16(buf, hdroff + 16, old_addr, new_addr, 32)
            _fix16(buf, hdroff + 16, old_port, new_port)
    elif proto in (IPPROTO_UDP, IPPROTO_UDPLITE):
        if len(buf) < hdroff + 8:
            return False
        old_port = _put16(buf, port_off, new_port)
        _fix16(buf, hdroff + 6, old_addr, new_addr, 32, udp=True)
        _fix16(buf, hdroff + 6, old_port, new_port, udp=True)
    elif proto == IPPROTO_SCTP:
        if len(buf) < hdroff + 8:
            return False
        _put16(buf, port_off, new_port)
    elif proto == IPPROTO_ICMP:
        if len(buf) < hdroff + 8:
            return False
        if buf[hdroff] in ICMP_QUERY_TYPES:
            old_id = _put16(buf, hdroff + 4, target.sport)
            _fix16(buf, hdroff + 2, old_id, target.sport)
    struct.pack_into("!I", buf, addr_off, new_addr)
    _fix16(buf, off + 10, old_addr, new_addr, 32)
    return True


def nf_nat_icmp_reply_translation(skb, ct: NfConn, ctinfo: int, hook: int) -> bool:
    """Un-NAT an ICMP error: the quoted packet and the outer header; False means drop."""
    payload = skb.payload
    if len(payload) < 8 + 20:
        return False
    if csum_fold(csum_partial(bytes(payload))) != 0:      # nf_ip_checksum
        return False
    if payload[0] == ICMP_REDIRECT:
        if ct.status & IPS_NAT_DONE_MASK != IPS_NAT_DONE_MASK or ct.status & IPS_NAT_MASK:
            return False
    direction = ctinfo2dir(ctinfo)
    manip = hook2manip(hook)
    statusbit = IPS_SRC_NAT if manip == NF_NAT_MANIP_SRC else IPS_DST_NAT
    if direction == IP_CT_DIR_REPLY:
        statusbit ^= IPS_NAT_MASK
    if not ct.status & statusbit:
        return True
    other = ct.tuple(1 - direction)
    before = bytes(payload[8:28])
    if not _manip_quoted(payload, 8, other, 1 - manip):
        return False
    struct.pack_into("!H", payload, 2, 0)
    struct.pack_into("!H", payload, 2, csum_fold(csum_partial(bytes(payload))))
    target = nf_ct_invert_tuple(other)
    if target is None:
        return False
    target = target._replace(proto=IPPROTO_ICMP)
    old_outer = (skb.iph.saddr, skb.iph.daddr)
    nf_nat_ipv4_manip_pkt(skb, target, manip)
    ctx = skb.ctx
    if ctx.record:
        from pathtrace.lib.inet import ntoa
        ctx.step("nf_nat_icmp_reply_translation",
                 inner=f"{ntoa(struct.unpack_from('!I', before, 12)[0])} -> "
                       f"{ntoa(struct.unpack_from('!I', before, 16)[0])} now "
                       f"{ntoa(struct.unpack_from('!I', payload, 20)[0])} -> "
                       f"{ntoa(struct.unpack_from('!I', payload, 24)[0])}",
                 outer=f"{ntoa(old_outer[0])} -> {ntoa(old_outer[1])} now "
                       f"{ntoa(skb.iph.saddr)} -> {ntoa(skb.iph.daddr)}")
    return True
