"""Read addresses, ports and flags back out of packet bytes (input frames, emitted frames).

Checks and diffs compare what left the host (after NAT) with what came in, so
they need the header fields, not the one-line summary.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from pathtrace.lib.inet import ntoa


@dataclass(frozen=True, slots=True)
class Headers:
    proto: int
    src: int
    dst: int
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0
    tcp_seq: int = 0
    icmp_type: int = -1
    tcp_len: int = 0            # TCP payload bytes (sequence space used, besides SYN/FIN)

    @property
    def seq_end(self) -> int:
        """The sequence number following this segment (SYN and FIN count as one)."""
        return (self.tcp_seq + self.tcp_len + (1 if self.tcp_flags & 0x03 else 0)) & 0xFFFFFFFF

    def endpoint(self, which: str) -> str:
        addr, port = (self.src, self.sport) if which == "src" else (self.dst, self.dport)
        return f"{ntoa(addr)}:{port}" if self.proto in (6, 17) else ntoa(addr)

    def describe(self) -> str:
        name = {6: "tcp", 17: "udp", 1: "icmp"}.get(self.proto, str(self.proto))
        return f"{name} {self.endpoint('src')} -> {self.endpoint('dst')}"


def ip_headers(data: bytes) -> Headers | None:
    """Headers of an IPv4 packet, None when it is not one (or too short)."""
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0xF) * 4
    proto = data[9]
    src, dst = struct.unpack_from("!II", data, 12)
    frag = struct.unpack_from("!H", data, 6)[0] & 0x1FFF
    l4 = data[ihl:]
    if frag:
        return Headers(proto, src, dst)
    if proto in (6, 17) and len(l4) >= 4:
        sport, dport = struct.unpack_from("!HH", l4)
        if proto == 6 and len(l4) >= 14:
            tot_len = struct.unpack_from("!H", data, 2)[0]
            paylen = max(0, min(tot_len, len(data)) - ihl - (l4[12] >> 4) * 4)
            return Headers(proto, src, dst, sport, dport, l4[13], struct.unpack_from("!I", l4, 4)[0],
                           tcp_len=paylen)
        return Headers(proto, src, dst, sport, dport)
    if proto == 1 and len(l4) >= 1:
        return Headers(proto, src, dst, icmp_type=l4[0])
    return Headers(proto, src, dst)


def frame_headers(frame: bytes) -> Headers | None:
    """Headers of an Ethernet frame carrying IPv4 (VLAN tags skipped)."""
    pos = 12
    while len(frame) >= pos + 2:
        etype = struct.unpack_from("!H", frame, pos)[0]
        if etype in (0x8100, 0x88A8):
            pos += 4
            continue
        return ip_headers(frame[pos + 2:]) if etype == 0x0800 else None
    return None
