"""Link-layer header parsers, one per supported LINKTYPE.

Each parser takes (buf, start, end) so the reader can parse straight out of its
read buffer and copy only the payload.  It returns
(dst_mac, src_mac, pkt_type, vlan, ethertype, payload, error) and never raises.
"""
from __future__ import annotations

from typing import Callable

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_BSD12 = 12   # DLT_RAW on OpenBSD-ish systems
LINKTYPE_RAW_BSD14 = 14   # DLT_RAW on BSD/OS
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

ETH_P_802_3 = 0x0001      # kernel's protocol for raw Novell 802.3 frames
ETH_P_802_2 = 0x0004      # kernel's protocol for 802.2 LLC frames
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100))

# BSD loopback address families: AF_INET is 2 everywhere, AF_INET6 differs per OS.
_AF_ETHERTYPE = {2: ETH_P_IP, 10: ETH_P_IPV6, 24: ETH_P_IPV6, 28: ETH_P_IPV6, 30: ETH_P_IPV6}

L2Result = tuple  # (dst, src, pkt_type, vlan, ethertype, payload, error)
L2Parser = Callable[[bytes, int, int], L2Result]

_NO_VLAN: tuple[int, ...] = ()


def _vlan_tags(buf: bytes, pos: int, end: int, etype: int) -> tuple[tuple[int, ...], int, int, str | None]:
    """Pop 802.1Q/802.1ad tags starting at pos; returns (tcis, ethertype, new pos, error)."""
    tags = []
    while etype in VLAN_TPIDS:
        if pos + 4 > end:
            return tuple(tags), etype, pos, f"truncated VLAN tag ({end - pos} bytes)"
        tags.append((buf[pos] << 8) | buf[pos + 1])
        etype = (buf[pos + 2] << 8) | buf[pos + 3]
        pos += 4
    return tuple(tags), etype, pos, None


def parse_ethernet(buf: bytes, start: int, end: int) -> L2Result:
    if end - start < 14:
        return None, None, None, _NO_VLAN, 0, b"", f"truncated Ethernet header ({end - start} bytes)"
    etype = (buf[start + 12] << 8) | buf[start + 13]
    pos = start + 14
    vlan = _NO_VLAN
    err = None
    if etype in VLAN_TPIDS:
        vlan, etype, pos, err = _vlan_tags(buf, pos, end, etype)
    if etype < 0x600:  # 802.3 length field: classify as eth_type_trans does
        etype = ETH_P_802_3 if buf[pos:pos + 2] == b"\xff\xff" else ETH_P_802_2
    return buf[start:start + 6], buf[start + 6:start + 12], None, vlan, etype, buf[pos:end], err


def parse_linux_sll(buf: bytes, start: int, end: int) -> L2Result:
    if end - start < 16:
        return None, None, None, _NO_VLAN, 0, b"", f"truncated Linux cooked header ({end - start} bytes)"
    pkt_type = (buf[start] << 8) | buf[start + 1]
    halen = (buf[start + 4] << 8) | buf[start + 5]
    src = buf[start + 6:start + 12] if halen == 6 else None
    etype = (buf[start + 14] << 8) | buf[start + 15]
    vlan, etype, pos, err = _vlan_tags(buf, start + 16, end, etype)
    return None, src, pkt_type, vlan, etype, buf[pos:end], err


def parse_linux_sll2(buf: bytes, start: int, end: int) -> L2Result:
    if end - start < 20:
        return None, None, None, _NO_VLAN, 0, b"", f"truncated Linux cooked v2 header ({end - start} bytes)"
    etype = (buf[start] << 8) | buf[start + 1]
    pkt_type = buf[start + 10]
    src = buf[start + 12:start + 18] if buf[start + 11] == 6 else None
    vlan, etype, pos, err = _vlan_tags(buf, start + 20, end, etype)
    return None, src, pkt_type, vlan, etype, buf[pos:end], err


def sll2_ifindex(buf: bytes, start: int, end: int) -> int | None:
    """The interface index of a LINUX_SLL2 header (the capturing host's ifindex), None if cut short."""
    if end - start < 8:
        return None
    return int.from_bytes(buf[start + 4:start + 8], "big")


def parse_raw(buf: bytes, start: int, end: int) -> L2Result:
    """Raw IP of either version: the version nibble decides."""
    if end <= start:
        return None, None, None, _NO_VLAN, 0, b"", "empty raw IP packet"
    version = buf[start] >> 4
    if version == 4:
        return None, None, None, _NO_VLAN, ETH_P_IP, buf[start:end], None
    if version == 6:
        return None, None, None, _NO_VLAN, ETH_P_IPV6, buf[start:end], None
    return None, None, None, _NO_VLAN, 0, buf[start:end], f"raw packet with IP version {version}"


def parse_ipv4(buf: bytes, start: int, end: int) -> L2Result:
    return None, None, None, _NO_VLAN, ETH_P_IP, buf[start:end], None


def parse_ipv6(buf: bytes, start: int, end: int) -> L2Result:
    return None, None, None, _NO_VLAN, ETH_P_IPV6, buf[start:end], None


def parse_null(buf: bytes, start: int, end: int) -> L2Result:
    """BSD loopback: a 4-byte address family in the capturing host's byte order."""
    if end - start < 4:
        return None, None, None, _NO_VLAN, 0, b"", f"truncated loopback header ({end - start} bytes)"
    family = int.from_bytes(buf[start:start + 4], "big")
    if family > 0xFFFF:
        family = int.from_bytes(buf[start:start + 4], "little")
    etype = _AF_ETHERTYPE.get(family)
    if etype is None:
        return None, None, None, _NO_VLAN, 0, buf[start + 4:end], f"unsupported loopback address family {family}"
    return None, None, None, _NO_VLAN, etype, buf[start + 4:end], None


PARSERS: dict[int, L2Parser] = {
    LINKTYPE_NULL: parse_null,
    LINKTYPE_LOOP: parse_null,
    LINKTYPE_ETHERNET: parse_ethernet,
    LINKTYPE_LINUX_SLL: parse_linux_sll,
    LINKTYPE_LINUX_SLL2: parse_linux_sll2,
    LINKTYPE_RAW: parse_raw,
    LINKTYPE_RAW_BSD12: parse_raw,
    LINKTYPE_RAW_BSD14: parse_raw,
    LINKTYPE_IPV4: parse_ipv4,
    LINKTYPE_IPV6: parse_ipv6,
}


def parser_for(linktype: int) -> L2Parser:
    """The parser for linktype; unsupported ones get a parser that reports the error."""
    parser = PARSERS.get(linktype)
    if parser is not None:
        return parser
    message = f"unsupported link type {linktype}"

    def unsupported(buf: bytes, start: int, end: int) -> L2Result:
        return None, None, None, _NO_VLAN, 0, b"", message

    return unsupported


def frame_from_ethernet(data: bytes, index: int, ts: float, ifname: str | None = None) -> "Frame":
    """A Frame exactly as the reader makes it for one Ethernet record (tests, verify, explain)."""
    from pathtrace.capture.frame import Frame
    dst, src, pkt_type, vlan, etype, payload, err = parse_ethernet(data, 0, len(data))
    return Frame(index, ts, ifname, 1, dst, src, pkt_type, vlan, etype, payload, len(data), len(data), err)
