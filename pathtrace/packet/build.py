"""Packet crafting for tests and for frames the model emits (RSTs, ICMP errors, ARP).

Pure functions returning bytes.  Checksums and lengths are correct by default;
every one can be overridden so tests can build exactly the malformed packet a
kernel check is meant to catch.  Addresses are dotted strings or host-order ints,
MACs "aa:bb:cc:dd:ee:ff" strings or 6 bytes.
"""
from __future__ import annotations

import socket
import struct
from typing import Sequence

from pathtrace.lib.checksum import csum_fold, csum_partial, l4_checksum
from pathtrace.lib.inet import aton, parse_mac

Addr = str | int
Mac = str | bytes

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58

TCP_FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, ".": 0x10,
                 "U": 0x20, "E": 0x40, "C": 0x80, "W": 0x80}
ARP_OPS = {"request": 1, "reply": 2}


def addr_int(addr: Addr) -> int:
    return addr if isinstance(addr, int) else aton(addr)


def mac_bytes(mac: Mac) -> bytes:
    if isinstance(mac, (bytes, bytearray)):
        if len(mac) != 6:
            raise ValueError(f"MAC must be 6 bytes, got {len(mac)}")
        return bytes(mac)
    return parse_mac(mac)


def tcp_flag_bits(flags: str | int) -> int:
    """'SA' / 'S.' / 'FPA' (letters FSRPAUEC, '.' = ACK, 'W' = CWR) or an int."""
    if isinstance(flags, int):
        return flags
    bits = 0
    for ch in flags.upper():
        if ch not in TCP_FLAG_BITS:
            raise ValueError(f"unknown TCP flag {ch!r} in {flags!r}")
        bits |= TCP_FLAG_BITS[ch]
    return bits


def ether(dst: Mac, src: Mac, ethertype: int, payload: bytes = b"",
          vlan: int | Sequence[int] | None = None) -> bytes:
    """Ethernet II frame.  vlan: one TCI, or TCIs outer->inner; the outer tags of a
    stack are 802.1ad (0x88a8) and the innermost 802.1Q (0x8100), as QinQ switches do."""
    tags = b""
    if vlan is not None:
        tcis = [vlan] if isinstance(vlan, int) else list(vlan)
        for i, tci in enumerate(tcis):
            tpid = ETH_P_8021Q if i == len(tcis) - 1 else ETH_P_8021AD
            tags += struct.pack("!HH", tpid, tci & 0xFFFF)
    return mac_bytes(dst) + mac_bytes(src) + tags + struct.pack("!H", ethertype) + bytes(payload)


def ipv4(src: Addr, dst: Addr, proto: int, payload: bytes = b"", ttl: int = 64, tos: int = 0,
         id: int = 0, df: bool = False, mf: bool = False, frag_offset: int = 0,
         options: bytes = b"", ihl: int | None = None, tot_len: int | None = None,
         check: int | None = None) -> bytes:
    """IPv4 packet.  frag_offset in 8-byte units; options are zero-padded to 4 bytes
    unless ihl is given explicitly."""
    if ihl is None:
        options = bytes(options) + b"\0" * (-len(options) % 4)
        ihl = 5 + len(options) // 4
    hlen = 20 + len(options)
    if tot_len is None:
        tot_len = hlen + len(payload)
    frag = (0x4000 if df else 0) | (0x2000 if mf else 0) | (frag_offset & 0x1FFF)
    header = struct.pack("!BBHHHBBHII", 0x40 | (ihl & 0xF), tos, tot_len & 0xFFFF, id & 0xFFFF, frag,
                         ttl, proto, 0, addr_int(src), addr_int(dst)) + options
    if check is None:
        check = csum_fold(csum_partial(header))
    return header[:10] + struct.pack("!H", check) + header[12:] + bytes(payload)


def _l4_check(src: Addr | None, dst: Addr | None, proto: int, segment: bytes) -> int:
    if src is None or dst is None:
        return 0
    return l4_checksum(addr_int(src), addr_int(dst), proto, segment)


def tcp(sport: int, dport: int, flags: str | int = "S", seq: int = 0, ack: int = 0,
        window: int = 64240, payload: bytes = b"", options: bytes = b"",
        src: Addr | None = None, dst: Addr | None = None, check: int | None = None,
        urg: int = 0, doff: int | None = None) -> bytes:
    """TCP segment.  The checksum needs src/dst (pseudo header); without them it is 0."""
    options = bytes(options) + b"\0" * (-len(options) % 4)
    if doff is None:
        doff = 5 + len(options) // 4
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      (doff & 0xF) << 4, tcp_flag_bits(flags) & 0xFF, window, 0, urg) + options + bytes(payload)
    if check is None:
        check = _l4_check(src, dst, IPPROTO_TCP, seg)
    return seg[:16] + struct.pack("!H", check) + seg[18:]


def udp(sport: int, dport: int, payload: bytes = b"", src: Addr | None = None,
        dst: Addr | None = None, check: int | None = None, length: int | None = None) -> bytes:
    """UDP datagram.  A computed checksum of 0 is sent as 0xffff (RFC 768); without
    src/dst the checksum is 0 (= none)."""
    if length is None:
        length = 8 + len(payload)
    seg = struct.pack("!HHHH", sport, dport, length & 0xFFFF, 0) + bytes(payload)
    if check is None:
        check = _l4_check(src, dst, IPPROTO_UDP, seg)
        if check == 0 and src is not None and dst is not None:
            check = 0xFFFF
    return seg[:6] + struct.pack("!H", check) + seg[8:]


def icmp(type: int, code: int = 0, payload: bytes = b"", id: int = 0, seq: int = 0,
         rest: bytes | int | None = None, check: int | None = None) -> bytes:
    """ICMP message.  `rest` replaces the id/seq word (e.g. the next-hop MTU of
    frag-needed, the gateway of a redirect) as 4 bytes or a 32-bit int."""
    if rest is None:
        word = struct.pack("!HH", id & 0xFFFF, seq & 0xFFFF)
    elif isinstance(rest, int):
        word = struct.pack("!I", rest & 0xFFFFFFFF)
    else:
        word = bytes(rest)
    msg = struct.pack("!BBH", type, code, 0) + word + bytes(payload)
    if check is None:
        check = csum_fold(csum_partial(msg))
    return msg[:2] + struct.pack("!H", check) + msg[4:]


def arp(op: int | str, sha: Mac, spa: Addr, tha: Mac, tpa: Addr) -> bytes:
    """Ethernet/IPv4 ARP payload (28 bytes); op 1/'request' or 2/'reply'."""
    opcode = ARP_OPS[op] if isinstance(op, str) else op
    return struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, opcode) + mac_bytes(sha) + struct.pack(
        "!I", addr_int(spa)) + mac_bytes(tha) + struct.pack("!I", addr_int(tpa))


def ipv6(src: str, dst: str, next_header: int, payload: bytes = b"", hlim: int = 64,
         tclass: int = 0, flow: int = 0, payload_len: int | None = None) -> bytes:
    """IPv6 packet (no checksum help: the model is IPv4-first)."""
    if payload_len is None:
        payload_len = len(payload)
    first = (6 << 28) | ((tclass & 0xFF) << 20) | (flow & 0xFFFFF)
    return (struct.pack("!IHBB", first, payload_len & 0xFFFF, next_header, hlim)
            + socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + bytes(payload))


# ---- whole IPv4 packets -------------------------------------------------------------

def tcp_packet(src: Addr, dst: Addr, sport: int, dport: int, flags: str | int = "S", seq: int = 0,
               ack: int = 0, window: int = 64240, payload: bytes = b"", options: bytes = b"",
               tcp_check: int | None = None, **ip: object) -> bytes:
    """IPv4+TCP; extra keywords go to ipv4() (ttl, id, df, tos, ...)."""
    seg = tcp(sport, dport, flags, seq, ack, window, payload, options, src, dst, tcp_check)
    return ipv4(src, dst, IPPROTO_TCP, seg, **ip)  # type: ignore[arg-type]


def udp_packet(src: Addr, dst: Addr, sport: int, dport: int, payload: bytes = b"",
               udp_check: int | None = None, **ip: object) -> bytes:
    """IPv4+UDP; extra keywords go to ipv4()."""
    return ipv4(src, dst, IPPROTO_UDP, udp(sport, dport, payload, src, dst, udp_check), **ip)  # type: ignore[arg-type]


def icmp_packet(src: Addr, dst: Addr, type: int = 8, code: int = 0, payload: bytes = b"",
                id: int = 0, seq: int = 0, rest: bytes | int | None = None,
                icmp_check: int | None = None, **ip: object) -> bytes:
    """IPv4+ICMP (default an echo request); extra keywords go to ipv4()."""
    return ipv4(src, dst, IPPROTO_ICMP, icmp(type, code, payload, id, seq, rest, icmp_check), **ip)  # type: ignore[arg-type]


def icmp_error_packet(src: Addr, dst: Addr, type: int, code: int, original: bytes,
                      rest: bytes | int = 0, quote: int = 8, **ip: object) -> bytes:
    """ICMP error quoting `original` (an IPv4 packet): its header plus `quote` bytes,
    as icmp_send() does by default for IPv4."""
    ihl = (original[0] & 0xF) * 4 if original else 0
    return icmp_packet(src, dst, type, code, original[:ihl + quote], rest=rest, **ip)
