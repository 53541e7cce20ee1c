"""tcpdump-like one-line summaries of frames and packets, for traces and reports.

Every function here takes arbitrary bytes and never raises: captures are full of
malformed packets and the summary is how a user sees what was wrong with one.
Parsing is by hand with explicit bounds checks (no dpkt) so malformed input gives
a precise "truncated"/"bad" note instead of an exception.
"""
from __future__ import annotations

import socket
import struct

from pathtrace.capture.frame import Frame
from pathtrace.capture.linktypes import parse_ethernet

ETH_NAMES = {0x0001: "802.3", 0x0004: "802.2 LLC", 0x8035: "RARP", 0x8847: "MPLS", 0x8848: "MPLS multicast",
             0x8863: "PPPoE discovery", 0x8864: "PPPoE session", 0x888E: "EAPOL", 0x88CC: "LLDP",
             0x88E5: "MACsec", 0x88F7: "PTP", 0x8100: "802.1Q", 0x88A8: "802.1ad"}
PROTO_NAMES = {1: "ICMP", 2: "IGMP", 4: "IPIP", 6: "TCP", 17: "UDP", 41: "IPv6", 47: "GRE", 50: "ESP",
               51: "AH", 58: "ICMPv6", 89: "OSPF", 103: "PIM", 112: "VRRP", 132: "SCTP", 136: "UDPLite"}
ICMP_UNREACH = {0: "net", 1: "host", 2: "protocol", 3: "port", 4: "frag needed", 5: "source route failed",
                6: "net unknown", 7: "host unknown", 8: "source host isolated", 9: "net prohibited",
                10: "host prohibited", 11: "net tos", 12: "host tos", 13: "admin prohibited",
                14: "host precedence violation", 15: "precedence cutoff"}
ICMP_REDIRECT = {0: "net", 1: "host", 2: "tos-net", 3: "tos-host"}
ICMP_SIMPLE = {4: "source quench", 9: "router advertisement", 10: "router solicitation",
               13: "timestamp request", 14: "timestamp reply", 17: "address mask request",
               18: "address mask reply"}
ICMP6_UNREACH = {0: "no route", 1: "admin prohibited", 2: "beyond scope", 3: "address", 4: "port",
                 5: "policy failed", 6: "reject route"}
ICMP6_SIMPLE = {130: "multicast listener query", 131: "multicast listener report",
                132: "multicast listener done", 133: "router solicitation", 134: "router advertisement",
                137: "redirect", 143: "multicast listener report v2"}
IPV6_EXT = {0, 43, 60}  # hop-by-hop, routing, destination options: (len+1)*8 bytes
TCP_FLAG_CHARS = ((0x01, "F"), (0x02, "S"), (0x04, "R"), (0x08, "P"), (0x10, "."), (0x20, "U"),
                  (0x40, "E"), (0x80, "W"))


def _ip4(b: bytes) -> str:
    return socket.inet_ntoa(b)


def _ip6(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6, b)


def _u16(b: bytes, off: int) -> int:
    return (b[off] << 8) | b[off + 1]


def _u32(b: bytes, off: int) -> int:
    return struct.unpack_from("!I", b, off)[0]


def _proto(p: int) -> str:
    return PROTO_NAMES.get(p, f"proto {p}")


def tcp_flags_str(bits: int) -> str:
    """tcpdump's flag letters: [S], [S.], [P.], [F.], [R], [SEW]; [none] when empty."""
    s = "".join(ch for bit, ch in TCP_FLAG_CHARS if bits & bit)
    return f"[{s or 'none'}]"


def _endpoints(src: str, dst: str, l4: bytes, proto: int, v6: bool) -> str:
    """'a.p > b.q' for TCP/UDP with ports present, else 'a > b' (IPv6 uses a.p too, as tcpdump)."""
    if proto in (6, 17, 132, 136) and len(l4) >= 4:
        return f"{src}.{_u16(l4, 0)} > {dst}.{_u16(l4, 2)}"
    return f"{src} > {dst}"


def _tcp(l4: bytes, claimed: int) -> str:
    n = len(l4)
    if n < 20:
        return f"TCP truncated ({n} bytes)"
    seq = _u32(l4, 4)
    ack = _u32(l4, 8)
    doff = (l4[12] >> 4) * 4
    flags = l4[13]
    text = f"TCP {tcp_flags_str(flags)} seq {seq}"
    if flags & 0x10:
        text += f" ack {ack}"
    if doff < 20 or doff > n:
        return text + f" bad data offset {doff}"
    return text + f" len {claimed - doff}"


def _udp(l4: bytes, claimed: int) -> str:
    """Payload length as the IP header claims it; the UDP length field is shown only when it disagrees."""
    n = len(l4)
    if n < 8:
        return f"UDP truncated ({n} bytes)"
    text = f"UDP len {claimed - 8}"
    ulen = _u16(l4, 4)
    if ulen != claimed:
        text += f" [udp length {ulen}]"
    return text


def _quote(inner: bytes) -> str:
    """The packet an ICMP error quotes: 'quoting UDP a.p > b.q'."""
    n = len(inner)
    if n < 20 or inner[0] >> 4 != 4:
        return f"quoting truncated IP ({n} bytes)"
    hl = (inner[0] & 0xF) * 4
    proto = inner[9]
    src, dst = _ip4(inner[12:16]), _ip4(inner[16:20])
    if _u16(inner, 6) & 0x1FFF:  # a non-first fragment quotes no transport header
        return f"quoting {_proto(proto)} frag {src} > {dst}"
    l4 = inner[hl:] if hl >= 20 else b""
    return f"quoting {_proto(proto)} {_endpoints(src, dst, l4, proto, False)}"


def _icmp(l4: bytes) -> str:
    n = len(l4)
    if n < 2:
        return f"ICMP truncated ({n} bytes)"
    t, code = l4[0], l4[1]
    if n < 8:
        return f"ICMP type {t} code {code} truncated ({n} bytes)"
    if t in (0, 8):
        kind = "echo reply" if t == 0 else "echo request"
        text = f"ICMP {kind} id {_u16(l4, 4)} seq {_u16(l4, 6)}"
        return text if code == 0 else text + f" code {code}"
    if t == 3:
        text = f"ICMP dest unreachable {ICMP_UNREACH.get(code, f'code {code}')}"
        if code == 4:
            text += f" mtu {_u16(l4, 6)}"
    elif t == 5:
        text = f"ICMP redirect {ICMP_REDIRECT.get(code, f'code {code}')} to {_ip4(l4[4:8])}"
    elif t == 11:
        text = "ICMP time exceeded " + {0: "in-transit", 1: "reassembly"}.get(code, f"code {code}")
    elif t == 12:
        text = f"ICMP parameter problem pointer {l4[4]}"
        if code:
            text += f" code {code}"
    else:
        name = ICMP_SIMPLE.get(t)
        text = f"ICMP {name}" if name else f"ICMP type {t}"
        return text if name and code == 0 else text + f" code {code}"
    return f"{text} ({_quote(l4[8:])})"


def _icmp6(l4: bytes) -> str:
    n = len(l4)
    if n < 4:
        return f"ICMPv6 truncated ({n} bytes)"
    t, code = l4[0], l4[1]
    if t in (128, 129) and n >= 8:
        kind = "echo request" if t == 128 else "echo reply"
        return f"ICMPv6 {kind} id {_u16(l4, 4)} seq {_u16(l4, 6)}"
    if t == 1:
        return f"ICMPv6 dest unreachable {ICMP6_UNREACH.get(code, f'code {code}')}"
    if t == 2 and n >= 8:
        return f"ICMPv6 packet too big mtu {_u32(l4, 4)}"
    if t == 3:
        return "ICMPv6 time exceeded " + {0: "in-transit", 1: "reassembly"}.get(code, f"code {code}")
    if t == 4 and n >= 8:
        return f"ICMPv6 parameter problem pointer {_u32(l4, 4)} code {code}"
    if t == 135 and n >= 24:
        return f"ICMPv6 neighbor solicitation who-has {_ip6(l4[8:24])}"
    if t == 136 and n >= 24:
        return f"ICMPv6 neighbor advertisement tgt is {_ip6(l4[8:24])}"
    name = ICMP6_SIMPLE.get(t)
    return f"ICMPv6 {name}" if name else f"ICMPv6 type {t} code {code}"


def _l4(proto: int, l4: bytes, claimed: int) -> str:
    """Transport summary; `claimed` is the length the IP header gives (>= len(l4) if cut short)."""
    if proto == 6:
        return _tcp(l4, claimed)
    if proto == 17:
        return _udp(l4, claimed)
    if proto == 1:
        return _icmp(l4)
    if proto == 58:
        return _icmp6(l4)
    return f"{_proto(proto)} len {claimed}"


def _ipv4(data: bytes) -> str:
    n = len(data)
    if n < 20:
        return f"IP truncated ({n} bytes)"
    if data[0] >> 4 != 4:
        return f"IP bad version {data[0] >> 4} ({n} bytes)"
    src, dst = _ip4(data[12:16]), _ip4(data[16:20])
    ihl = data[0] & 0xF
    hl = ihl * 4
    if ihl < 5:
        return f"IP {src} > {dst}: bad ihl {ihl}"
    if hl > n:
        return f"IP {src} > {dst}: truncated header (ihl {ihl}, {n} bytes)"
    tot_len, ipid, frag = _u16(data, 2), _u16(data, 4), _u16(data, 6)
    ttl, proto = data[8], data[9]
    note = ""
    end = tot_len
    if tot_len < hl:
        note, end = f" [bad tot_len {tot_len}]", n
    elif tot_len > n:
        note, end = f" [truncated: tot_len {tot_len}, {n} captured]", n
    l4 = data[hl:end]
    offset = (frag & 0x1FFF) * 8
    mf = " MF" if frag & 0x2000 else ""
    if offset:
        return (f"IP {src} > {dst}: frag id {ipid} off {offset} len {len(l4)} {_proto(proto)}{mf}"
                f" ttl {ttl}{note}")
    frag_note = f" frag id {ipid} off 0{mf}" if mf else ""
    claimed = tot_len - hl if tot_len >= hl else len(l4)
    return f"IP {_endpoints(src, dst, l4, proto, False)}: {_l4(proto, l4, claimed)}{frag_note} ttl {ttl}{note}"


def _ipv6(data: bytes) -> str:
    n = len(data)
    if n < 40:
        return f"IPv6 truncated ({n} bytes)"
    src, dst = _ip6(data[8:24]), _ip6(data[24:40])
    plen, nh, hlim = _u16(data, 4), data[6], data[7]
    note = ""
    end = 40 + plen
    if end > n:
        note, end = f" [truncated: payload length {plen}, {n - 40} captured]", n
    pos = 40
    frag = ""
    for _ in range(16):  # bounded walk over extension headers
        if nh in IPV6_EXT or nh == 51:
            if pos + 2 > end:
                return f"IPv6 {src} > {dst}: truncated extension header {nh} hlim {hlim}{note}"
            nxt = data[pos]
            pos += (data[pos + 1] + 2) * 4 if nh == 51 else (data[pos + 1] + 1) * 8
            nh = nxt
        elif nh == 44:
            if pos + 8 > end:
                return f"IPv6 {src} > {dst}: truncated fragment header hlim {hlim}{note}"
            nxt, offm, ident = data[pos], _u16(data, pos + 2), _u32(data, pos + 4)
            pos += 8
            mf = " MF" if offm & 1 else ""
            if offm & 0xFFF8:
                return (f"IPv6 {src} > {dst}: frag id {ident} off {offm & 0xFFF8} len {max(end - pos, 0)} "
                        f"{_proto(nxt)}{mf} hlim {hlim}{note}")
            frag = f" frag id {ident} off 0{mf}"
            nh = nxt
        else:
            break
    if pos > end:
        return f"IPv6 {src} > {dst}: truncated extension header hlim {hlim}{note}"
    if nh == 59:
        return f"IPv6 {src} > {dst}: no next header{frag} hlim {hlim}{note}"
    l4 = data[pos:end]
    claimed = max(40 + plen - pos, len(l4))
    return f"IPv6 {_endpoints(src, dst, l4, nh, True)}: {_l4(nh, l4, claimed)}{frag} hlim {hlim}{note}"


def describe_ip(data: bytes) -> str:
    """One line for an IPv4 or IPv6 packet (the version nibble decides)."""
    try:
        if data[:1] and data[0] >> 4 == 6:
            return _ipv6(bytes(data))
        return _ipv4(bytes(data))
    except Exception as exc:  # pragma: no cover - the parsers bound-check; last resort
        return f"IP undecodable ({len(data)} bytes: {type(exc).__name__})"


def describe_arp(data: bytes) -> str:
    try:
        return _arp(bytes(data))
    except Exception as exc:  # pragma: no cover
        return f"ARP undecodable ({len(data)} bytes: {type(exc).__name__})"


def _arp(data: bytes) -> str:
    n = len(data)
    if n < 8:
        return f"ARP truncated ({n} bytes)"
    hrd, pro, hln, pln, op = struct.unpack_from("!HHBBH", data)
    if hrd != 1 or pro != 0x0800 or hln != 6 or pln != 4:
        return f"ARP hrd {hrd} pro 0x{pro:04x} hln {hln} pln {pln} op {op}"
    if n < 28:
        return f"ARP op {op} truncated ({n} bytes)"
    sha, spa, tpa = data[8:14], _ip4(data[14:18]), _ip4(data[24:28])
    if op == 1:
        return f"ARP who-has {tpa} tell {spa}"
    if op == 2:
        return f"ARP reply {spa} is-at {':'.join(f'{b:02x}' for b in sha)}"
    return f"ARP op {op} {spa} > {tpa}"


def describe_l3(ethertype: int, payload: bytes) -> str:
    """One line for a network-layer payload of the given ethertype."""
    if ethertype == 0x0800:
        try:
            return _ipv4(bytes(payload))
        except Exception as exc:  # pragma: no cover
            return f"IP undecodable ({len(payload)} bytes: {type(exc).__name__})"
    if ethertype == 0x86DD:
        try:
            return _ipv6(bytes(payload))
        except Exception as exc:  # pragma: no cover
            return f"IPv6 undecodable ({len(payload)} bytes: {type(exc).__name__})"
    if ethertype == 0x0806:
        return describe_arp(payload)
    name = ETH_NAMES.get(ethertype)
    return f"ethertype 0x{ethertype:04x}{f' ({name})' if name else ''} len {len(payload)}"


def _vlan_prefix(vlan: tuple[int, ...]) -> str:
    return "".join(f"vlan {tci & 0xFFF} " for tci in vlan)


def describe_frame(frame: Frame) -> str:
    """One line for a captured Frame: VLAN tags, then the network layer."""
    try:
        prefix = _vlan_prefix(frame.vlan)
        if frame.error:
            if not frame.payload:
                return f"{prefix}[{frame.error}]"
            return f"{prefix}[{frame.error}] {describe_l3(frame.ethertype, frame.payload)}"
        return prefix + describe_l3(frame.ethertype, frame.payload)
    except Exception as exc:  # pragma: no cover
        return f"undecodable frame ({type(exc).__name__})"


def describe_ether(frame_bytes: bytes) -> str:
    """One line for raw Ethernet frame bytes (what the model emits)."""
    try:
        data = bytes(frame_bytes)
        _dst, _src, _pt, vlan, etype, payload, err = parse_ethernet(data, 0, len(data))
        prefix = _vlan_prefix(vlan)
        if err:
            return f"{prefix}[{err}]" if not payload else f"{prefix}[{err}] {describe_l3(etype, payload)}"
        return prefix + describe_l3(etype, payload)
    except Exception as exc:  # pragma: no cover
        return f"undecodable frame ({type(exc).__name__})"
