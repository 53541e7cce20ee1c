"""struct nf_conntrack_tuple: what identifies one direction of a connection.

A tuple is an immutable value used as the key of the conntrack hash, so it is a
NamedTuple (hashable, cheap to build per packet).  For ICMP the kernel keeps the
echo id in the source part and type/code in the destination part; `dport` holds
(type << 8) | code so one shape serves every protocol.  nf_ct_tuple_equal ignores
the direction, and so does equality here (direction lives in the hash entry).
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from pathtrace.lib.inet import ntoa

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_UDPLITE = 136
IPPROTO_SCTP = 132
IPPROTO_GRE = 47

# Protocols whose tuple carries 16-bit source/destination ports (nf_ct_get_tuple_ports).
PORT_PROTOS = frozenset((IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, IPPROTO_SCTP))

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 136: "udplite", 132: "sctp", 47: "gre"}

# nf_conntrack_proto_icmp.c invmap: request <-> reply types that may form a connection.
ICMP_INVMAP = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17}


class Tuple(NamedTuple):
    src: int
    dst: int
    proto: int
    sport: int   # port, or ICMP echo id
    dport: int   # port, or (ICMP type << 8) | code

    def __str__(self) -> str:
        return fmt_tuple(self)


def fmt_tuple(t: Tuple) -> str:
    """'tcp 10.0.0.2:40000 -> 203.0.113.5:80' (step details and messages)."""
    name = PROTO_NAMES.get(t.proto, f"proto {t.proto}")
    if t.proto in PORT_PROTOS:
        return f"{name} {ntoa(t.src)}:{t.sport} -> {ntoa(t.dst)}:{t.dport}"
    if t.proto == IPPROTO_ICMP:
        return f"icmp {ntoa(t.src)} -> {ntoa(t.dst)} type={t.dport >> 8} code={t.dport & 0xFF} id={t.sport}"
    return f"{name} {ntoa(t.src)} -> {ntoa(t.dst)}"


def fmt_manip(maniptype: int, old: Tuple, new: Tuple) -> str:
    """'src 10.0.0.2:40000 -> 198.51.100.1:40000' for a NAT binding."""
    if maniptype == 0:
        a, pa, b, pb, what = old.src, old.sport, new.src, new.sport, "src"
    else:
        a, pa, b, pb, what = old.dst, old.dport, new.dst, new.dport, "dst"
    if old.proto in PORT_PROTOS:
        return f"{what} {ntoa(a)}:{pa} -> {ntoa(b)}:{pb}"
    if old.proto == IPPROTO_ICMP:
        return f"{what} {ntoa(a)} id={old.sport} -> {ntoa(b)} id={new.sport}"
    return f"{what} {ntoa(a)} -> {ntoa(b)}"


def nf_ct_invert_tuple(t: Tuple) -> Tuple | None:
    """The tuple of the other direction; None when ICMP type cannot have a reply."""
    if t.proto == IPPROTO_ICMP:
        rtype = ICMP_INVMAP.get(t.dport >> 8)
        if rtype is None:
            return None
        return Tuple(t.dst, t.src, IPPROTO_ICMP, t.sport, (rtype << 8) | (t.dport & 0xFF))
    return Tuple(t.dst, t.src, t.proto, t.dport, t.sport)


def ipv4_get_l4proto(data: bytes | bytearray, off: int = 0) -> tuple[int, int] | None:
    """(dataoff, protocol) of the IPv4 header at `off`, None for a non-first fragment or bogus header."""
    if len(data) < off + 20:
        return None
    frag_off = struct.unpack_from("!H", data, off + 6)[0]
    if frag_off & 0x1FFF:
        return None
    dataoff = off + (data[off] & 0x0F) * 4
    if dataoff > len(data):
        return None
    return dataoff, data[off + 9]


def tuple_from_bytes(data: bytes | bytearray, off: int = 0) -> Tuple | None:
    """nf_ct_get_tuplepr on an IPv4 header in a buffer (the packet quoted inside an ICMP error)."""
    got = ipv4_get_l4proto(data, off)
    if got is None:
        return None
    dataoff, proto = got
    saddr, daddr = struct.unpack_from("!II", data, off + 12)
    return _l4_tuple(saddr, daddr, proto, data, dataoff)


def _l4_tuple(saddr: int, daddr: int, proto: int, data: bytes | bytearray, dataoff: int) -> Tuple | None:
    if proto in PORT_PROTOS:
        if len(data) < dataoff + 4:
            return None
        sport, dport = struct.unpack_from("!HH", data, dataoff)
        return Tuple(saddr, daddr, proto, sport, dport)
    if proto == IPPROTO_ICMP:
        if len(data) < dataoff + 8:
            return None
        itype, code = data[dataoff], data[dataoff + 1]
        ident = struct.unpack_from("!H", data, dataoff + 4)[0]
        return Tuple(saddr, daddr, proto, ident, (itype << 8) | code)
    return Tuple(saddr, daddr, proto, 0, 0)


def tuple_from_skb(skb) -> Tuple | None:
    """nf_ct_get_tuple for the packet itself (payload is everything after the IP header)."""
    iph = skb.iph
    return _l4_tuple(iph.saddr, iph.daddr, iph.protocol, skb.payload, 0)
