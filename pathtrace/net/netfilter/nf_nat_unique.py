"""Choosing the NAT tuple (nf_nat_core.c: get_unique_tuple and helpers).

Address choice in a range is the kernel's: jhash2 of the source address seeded with
the destination (find_best_ips_proto), computed on the little-endian in-memory value
of the big-endian address as on x86, then reciprocal_scale into the range — so the
same client maps to the same address as on a real 6.x host.
Port choice on a clash starts at get_random_u16() for source NAT (and --random /
--random-fully) and at the range start for destination NAT; the kernel's random
number is replaced by the table's seeded RNG, so the port is reproducible per run
but not equal to the one a real kernel would pick.  nf_nat_used_tuple_harder's
eviction of TIME_WAIT entries and nf_nat_used_tuple_new's reverse-clash exception
are not modelled (plain "tuple taken" checks are used).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pathtrace.net.netfilter.nf_conntrack_tuple import (
    IPPROTO_GRE, IPPROTO_ICMP, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, Tuple,
    nf_ct_invert_tuple,
)

if TYPE_CHECKING:  # pragma: no cover
    from pathtrace.net.netfilter.nf_conntrack_core import NfConn
    from pathtrace.net.netfilter.nf_nat_core import NatRange

NF_NAT_MANIP_SRC = 0
NF_NAT_MANIP_DST = 1

NF_NAT_RANGE_MAP_IPS = 1 << 0
NF_NAT_RANGE_PROTO_SPECIFIED = 1 << 1
NF_NAT_RANGE_PROTO_RANDOM = 1 << 2
NF_NAT_RANGE_PERSISTENT = 1 << 3
NF_NAT_RANGE_PROTO_RANDOM_FULLY = 1 << 4
NF_NAT_RANGE_PROTO_OFFSET = 1 << 5
NF_NAT_RANGE_NETMAP = 1 << 6
NF_NAT_RANGE_PROTO_RANDOM_ALL = NF_NAT_RANGE_PROTO_RANDOM | NF_NAT_RANGE_PROTO_RANDOM_FULLY

NF_NAT_MAX_ATTEMPTS = 128
_PORTED = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, IPPROTO_SCTP)
M32 = 0xFFFFFFFF


# ---- include/linux/jhash.h ------------------------------------------------------------------
def _rol32(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & M32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & M32; a ^= _rol32(c, 4); c = (c + b) & M32
    b = (b - a) & M32; b ^= _rol32(a, 6); a = (a + c) & M32
    c = (c - b) & M32; c ^= _rol32(b, 8); b = (b + a) & M32
    a = (a - c) & M32; a ^= _rol32(c, 16); c = (c + b) & M32
    b = (b - a) & M32; b ^= _rol32(a, 19); a = (a + c) & M32
    c = (c - b) & M32; c ^= _rol32(b, 4); b = (b + a) & M32
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c ^= b; c = (c - _rol32(b, 14)) & M32
    a ^= c; a = (a - _rol32(c, 11)) & M32
    b ^= a; b = (b - _rol32(a, 25)) & M32
    c ^= b; c = (c - _rol32(b, 16)) & M32
    a ^= c; a = (a - _rol32(c, 4)) & M32
    b ^= a; b = (b - _rol32(a, 14)) & M32
    c ^= b; c = (c - _rol32(b, 24)) & M32
    return c


def jhash2(words: list[int], initval: int) -> int:
    a = b = c = (0xDEADBEEF + (len(words) << 2) + initval) & M32
    k = list(words)
    while len(k) > 3:
        a = (a + k[0]) & M32; b = (b + k[1]) & M32; c = (c + k[2]) & M32
        a, b, c = _mix(a, b, c)
        k = k[3:]
    if not k:
        return c
    if len(k) == 3:
        c = (c + k[2]) & M32
    if len(k) >= 2:
        b = (b + k[1]) & M32
    a = (a + k[0]) & M32
    return _final(a, b, c)


def _raw(addr: int) -> int:
    """The u32 the kernel reads from a __be32 on a little-endian CPU."""
    return int.from_bytes(addr.to_bytes(4, "big"), "little")


def reciprocal_scale(val: int, ep_ro: int) -> int:
    return (val * (ep_ro & M32)) >> 32


# ---- range checks ---------------------------------------------------------------------------
def l4proto_in_range(t: Tuple, maniptype: int, lo: int, hi: int) -> bool:
    if t.proto == IPPROTO_ICMP:
        return lo <= t.sport <= hi
    if t.proto in _PORTED or t.proto == IPPROTO_GRE:
        port = t.sport if maniptype == NF_NAT_MANIP_SRC else t.dport
        return lo <= port <= hi
    return True


def nf_in_range(t: Tuple, rng: "NatRange") -> bool:
    if rng.flags & NF_NAT_RANGE_MAP_IPS and not rng.min_addr <= t.src <= rng.max_addr:
        return False
    if not rng.flags & NF_NAT_RANGE_PROTO_SPECIFIED:
        return True
    return l4proto_in_range(t, NF_NAT_MANIP_SRC, rng.min_proto, rng.max_proto)


def nf_nat_used_tuple(t: Tuple, ct: "NfConn") -> bool:
    """nf_nat_used_tuple: is the reply of tuple t some other confirmed connection's?  (The inverse
    of a ported tuple is built here directly: this runs for every candidate of a port search.)"""
    if t.proto in _PORTED:
        reply = Tuple(t.dst, t.src, t.proto, t.dport, t.sport)
    else:
        reply = nf_ct_invert_tuple(t)
        if reply is None:
            return False
    table = ct.table
    return table.tuple_taken(reply, ct, table.now)


def find_appropriate_src(ct: "NfConn", t: Tuple, rng: "NatRange") -> Tuple | None:
    """An existing SNAT mapping of the same source (ip, port, proto) that fits the range; the newest
    first, as nf_nat_setup_info adds to the head of the nf_nat_bysource chain (hlist_add_head_rcu)."""
    for other in reversed(ct.table.bysource.get((t.proto, t.src, t.sport), ())):
        if other is ct:
            continue
        inv = nf_ct_invert_tuple(other.reply)
        if inv is None:
            continue
        result = Tuple(inv.src, t.dst, t.proto, inv.sport, t.dport)
        if nf_in_range(result, rng):
            return result
    return None


def find_best_ips_proto(t: Tuple, rng: "NatRange", maniptype: int, zone: int = 0) -> Tuple:
    """Hash the source (and destination unless --persistent) into the address range."""
    if not rng.flags & NF_NAT_RANGE_MAP_IPS:
        return t
    if rng.min_addr == rng.max_addr:
        addr = rng.min_addr
    else:
        initval = 0 if rng.flags & NF_NAT_RANGE_PERSISTENT else (_raw(t.dst) ^ zone)
        j = jhash2([_raw(t.src), 0, 0, 0], initval)
        dist = (rng.max_addr - rng.min_addr + 1) & M32
        addr = (rng.min_addr + reciprocal_scale(j, dist)) & M32
    if maniptype == NF_NAT_MANIP_SRC:
        return Tuple(addr, t.dst, t.proto, t.sport, t.dport)
    return Tuple(t.src, addr, t.proto, t.sport, t.dport)


def nf_nat_l4proto_unique_tuple(t: Tuple, rng: "NatRange", maniptype: int, ct: "NfConn") -> Tuple:
    """Search the port (or ICMP id) range for a tuple nobody uses."""
    proto = t.proto
    if proto == IPPROTO_ICMP:
        key_src = True
        if not rng.flags & NF_NAT_RANGE_PROTO_SPECIFIED:
            lo, size = 0, 65536
        else:
            lo, size = rng.min_proto, rng.max_proto - rng.min_proto + 1
    elif proto in _PORTED:
        key_src = maniptype == NF_NAT_MANIP_SRC
        if not rng.flags & NF_NAT_RANGE_PROTO_SPECIFIED:
            if maniptype == NF_NAT_MANIP_DST:
                return t
            port = t.sport
            if port < 1024:
                lo, size = (1, 511) if port < 512 else (600, 1023 - 600 + 1)
            else:
                lo, size = 1024, 65535 - 1024 + 1
        else:
            lo, hi = sorted((rng.min_proto, rng.max_proto))
            size = hi - lo + 1
    else:
        return t
    key = t.sport if key_src else t.dport
    if rng.flags & NF_NAT_RANGE_PROTO_OFFSET:
        off = (key - rng.base_proto) & 0xFFFF
    elif rng.flags & NF_NAT_RANGE_PROTO_RANDOM_ALL or maniptype != NF_NAT_MANIP_DST:
        off = ct.table.rng.getrandbits(16)
    else:
        off = 0
    attempts = min(size, NF_NAT_MAX_ATTEMPTS)
    cand = t
    while True:
        for _ in range(attempts):
            value = lo + off % size
            cand = Tuple(t.src, t.dst, proto, value, t.dport) if key_src else Tuple(t.src, t.dst, proto, t.sport, value)
            off = (off + 1) & 0xFFFF
            if not nf_nat_used_tuple(cand, ct):
                return cand
        if attempts >= size or attempts < 16:
            return cand
        attempts //= 2
        off = ct.table.rng.getrandbits(16)


def get_unique_tuple(orig: Tuple, rng: "NatRange", ct: "NfConn", maniptype: int) -> Tuple:
    """Keep the original if it fits and is free; reuse a source mapping; else hash and search."""
    if maniptype == NF_NAT_MANIP_SRC and not rng.flags & NF_NAT_RANGE_PROTO_RANDOM_ALL:
        if nf_in_range(orig, rng):
            if not nf_nat_used_tuple(orig, ct):
                return orig
        else:
            found = find_appropriate_src(ct, orig, rng)
            if found is not None and not nf_nat_used_tuple(found, ct):
                return found
    t = find_best_ips_proto(orig, rng, maniptype, ct.zone)
    if not rng.flags & NF_NAT_RANGE_PROTO_RANDOM_ALL:
        if rng.flags & NF_NAT_RANGE_PROTO_SPECIFIED:
            if (not rng.flags & NF_NAT_RANGE_PROTO_OFFSET
                    and l4proto_in_range(t, maniptype, rng.min_proto, rng.max_proto)
                    and (rng.min_proto == rng.max_proto or not nf_nat_used_tuple(t, ct))):
                return t
        elif not nf_nat_used_tuple(t, ct):
            return t
    return nf_nat_l4proto_unique_tuple(t, rng, maniptype, ct)
