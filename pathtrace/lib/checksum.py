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
