"""Internet checksum arithmetic (lib/checksum.c, include/net/checksum.h).

NAT rewrites addresses and ports with incremental updates (csum_replace4/2) as the
kernel does, so a packet whose checksum was wrong before NAT stays wrong after it.
"""
from __future__ import annotations

import struct


def csum_partial(data: bytes, initial: int = 0) -> int:
    """One's-complement sum of data (not folded to 16 bits until csum_fold)."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    total = initial + sum(struct.unpack(f"!{len(data) // 2}H", data))
    return total


def csum_fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def ip_fast_csum(header: bytes) -> int:
    """Checksum of an IPv4 header; 0 means the stored checksum verifies."""
    return csum_fold(csum_partial(header))


def pseudo_header_sum(saddr: int, daddr: int, proto: int, length: int) -> int:
    return (saddr >> 16) + (saddr & 0xFFFF) + (daddr >> 16) + (daddr & 0xFFFF) + proto + length


def l4_checksum(saddr: int, daddr: int, proto: int, segment: bytes) -> int:
    """Full TCP/UDP checksum over the pseudo header; 0 means it verifies."""
    return csum_fold(csum_partial(segment, pseudo_header_sum(saddr, daddr, proto, len(segment))))


def csum_replace(check: int, old: int, new: int, width: int = 16) -> int:
    """RFC 1624 incremental update of a stored checksum when a field changes."""
    total = (~check) & 0xFFFF
    if width == 32:
        total += ((~old >> 16) & 0xFFFF) + ((~old) & 0xFFFF) + (new >> 16) + (new & 0xFFFF)
    else:
        total += ((~old) & 0xFFFF) + new
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def is_partial_csum(l3: bytes) -> bool:
    """Whether an IPv4 TCP/UDP packet carries a CHECKSUM_PARTIAL checksum: only the pseudo header's
    folded sum, which the sender's stack leaves for the NIC to complete.  A capture shows it on frames
    a host sent with checksum offload, and on frames received over veth, where the peer's skb arrives
    still CHECKSUM_PARTIAL and the receiver verifies nothing (skb_csum_unnecessary)."""
    if len(l3) < 20 or l3[0] >> 4 != 4 or l3[9] not in (6, 17) or struct.unpack_from("!H", l3, 6)[0] & 0x3FFF:
        return False
    ihl = (l3[0] & 15) * 4
    tot_len = min(struct.unpack_from("!H", l3, 2)[0], len(l3))
    off = ihl + (16 if l3[9] == 6 else 6)
    if tot_len < off + 2:
        return False
    saddr, daddr = struct.unpack_from("!II", l3, 12)
    partial = (~csum_fold(pseudo_header_sum(saddr, daddr, l3[9], tot_len - ihl))) & 0xFFFF
    return struct.unpack_from("!H", l3, off)[0] == partial
