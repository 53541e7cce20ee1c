#!/usr/bin/env python3
"""Generate the sample captures in samples/, one per host file in rulesets/.

    python samples/make_samples.py      # rewrites samples/*.pcap and samples/*.pcapng

Each capture holds what the host's interfaces *receive* (frames the host itself
sends are not in it: pathtrace prints those as the frames that left).  The
conversations are plausible and timestamped like a real capture: ARP for the
host's neighbours, DNS, ping, a TCP handshake with data and FIN, a packet to a
closed port, a TTL=1 probe and one malformed packet (bad IP header checksum).
Frames are padded to Ethernet's 60-byte minimum as a NIC delivers them.
The single-interface web server's capture is a classic pcap; the routers' are
pcapng with one interface block per host interface (as `dumpcap -i eth0 -i eth1`
writes them), so pathtrace knows where each broadcast frame came in.

The output is deterministic: running the script again gives identical files.
"""
from __future__ import annotations

import os
import struct
import sys
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pathtrace.lib.inet import aton  # noqa: E402
from pathtrace.packet import build  # noqa: E402
from pathtrace.packet.pcapwriter import PcapWriter  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BROADCAST = "ff:ff:ff:ff:ff:ff"
T0 = 1710408413.0          # 2024-03-14 09:26:53 UTC


def server_isn(client: str, cport: int, server: str, sport: int) -> int:
    """The ISN pathtrace's listener puts in its SYN-ACK for this 4-tuple.

    The model uses a deterministic stand-in for secure_tcp_seq(); the client's
    ACK must acknowledge it for the handshake to complete, so ask the model.
    (If the stand-in changes, rerun this script.)"""
    from pathtrace.net.ipv4.tcp_ipv4 import _iss
    return _iss((aton(client), cport, aton(server), sport))


def syn_options(tsval: int, mss: int = 1460) -> bytes:
    """A Linux client's SYN options: MSS, SACK permitted, timestamps, NOP, window scale 7."""
    return (struct.pack("!BBH", 2, 4, mss) + b"\x04\x02" + struct.pack("!BBII", 8, 10, tsval, 0)
            + b"\x01" + b"\x03\x03\x07")


def synack_options(tsval: int, tsecr: int, mss: int = 1460) -> bytes:
    return (struct.pack("!BBH", 2, 4, mss) + b"\x04\x02" + struct.pack("!BBII", 8, 10, tsval, tsecr)
            + b"\x01" + b"\x03\x03\x07")


def ts_option(tsval: int, tsecr: int) -> bytes:
    return b"\x01\x01" + struct.pack("!BBII", 8, 10, tsval, tsecr)


def dns_query(qid: int, name: str, qtype: int = 1) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def dns_answer(qid: int, name: str, addr: str, ttl: int = 300) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    answer = struct.pack("!HHHIH", 0xC00C, 1, 1, ttl, 4) + struct.pack("!I", aton(addr))
    return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + q + struct.pack("!HH", 1, 1) + answer


class PcapngWriter:
    """Minimal pcapng writer (SHB, one IDB per interface with if_name, EPBs, microseconds).

    Used for the routers' samples: a classic pcap cannot say on which interface a
    broadcast frame arrived, a multi-interface pcapng capture (dumpcap -i eth0 -i eth1)
    can, and pathtrace takes the ingress from its if_name."""

    def __init__(self, path: str, interfaces: list[str]):
        self.f = open(path, "wb")
        self.index = {name: i for i, name in enumerate(interfaces)}
        self._block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
        for name in interfaces:
            raw = name.encode()
            opts = struct.pack("<HH", 2, len(raw)) + raw + b"\0" * (-len(raw) % 4) + struct.pack("<HH", 0, 0)
            self._block(0x00000001, struct.pack("<HHI", 1, 0, 262144) + opts)

    def _block(self, btype: int, body: bytes) -> None:
        body += b"\0" * (-len(body) % 4)
        length = 12 + len(body)
        self.f.write(struct.pack("<II", btype, length) + body + struct.pack("<I", length))

    def write(self, frame: bytes, ts: float, iface: str) -> None:
        ticks = round(ts * 1_000_000)
        self._block(0x00000006, struct.pack("<IIIII", self.index[iface], ticks >> 32, ticks & 0xFFFFFFFF,
                                            len(frame), len(frame)) + frame)

    def close(self) -> None:
        self.f.close()


class Capture:
    """Frames with timestamps; each `dt` advances the clock before the frame.

    Without `interfaces` the result is a classic pcap (PcapWriter); with them a
    pcapng whose interface blocks carry those names, `iface` choosing per frame."""

    def __init__(self, path: str, interfaces: list[str] | None = None):
        self.path = path
        self.interfaces = interfaces
        self.iface = interfaces[0] if interfaces else ""
        self.t = T0
        self.frames: list[tuple[float, bytes, str]] = []
        self.ip_id: dict[str, int] = {}

    def until(self, when: float) -> float:
        """The dt that puts the next frame at absolute time `when`."""
        return when - self.t

    def on(self, iface: str) -> "Capture":
        """Following frames were captured on `iface` (pcapng captures only)."""
        self.iface = iface
        return self

    def next_id(self, src: str) -> int:
        self.ip_id[src] = (self.ip_id.get(src, (aton(src) * 7919) & 0xFFFF) + 1) & 0xFFFF
        return self.ip_id[src]

    def add(self, dt: float, frame: bytes) -> None:
        self.t += dt
        if len(frame) < 60:
            frame = frame + b"\0" * (60 - len(frame))
        self.frames.append((round(self.t, 6), frame, self.iface))

    def ip(self, dt: float, dst_mac: str, src_mac: str, packet: bytes) -> None:
        self.add(dt, build.ether(dst_mac, src_mac, build.ETH_P_IP, packet))

    def arp(self, dt: float, dst_mac: str, src_mac: str, op: str, sha: str, spa: str, tha: str, tpa: str) -> None:
        self.add(dt, build.ether(dst_mac, src_mac, build.ETH_P_ARP, build.arp(op, sha, spa, tha, tpa)))

    def write(self) -> None:
        if self.interfaces:
            ng = PcapngWriter(self.path, self.interfaces)
            for ts, frame, iface in self.frames:
                ng.write(frame, ts, iface)
            ng.close()
        else:
            with PcapWriter(self.path) as w:
                for ts, frame, _ in self.frames:
                    w.write(frame, ts)
        print(f"{os.path.relpath(self.path)}: {len(self.frames)} frames")


class TcpFlow:
    """One side's view of a TCP connection: builds its segments with the right seq/ack."""

    def __init__(self, cap: Capture, src: str, sport: int, dst: str, dport: int, isn: int,
                 ttl: int = 64, ts0: int = 1000):
        self.cap, self.src, self.sport, self.dst, self.dport = cap, src, sport, dst, dport
        self.seq = isn
        self.ack = 0
        self.ttl = ttl
        self.tsval = ts0
        self.peer_ts = 0

    def segment(self, flags: str, payload: bytes = b"", options: bytes | None = None, window: int = 502) -> bytes:
        if options is None:
            options = ts_option(self.tsval, self.peer_ts)
        pkt = build.tcp_packet(self.src, self.dst, self.sport, self.dport, flags, self.seq,
                               self.ack if "A" in flags or "." in flags else 0, window, payload, options,
                               ttl=self.ttl, df=True, id=self.cap.next_id(self.src))
        self.seq = (self.seq + len(payload) + ("S" in flags) + ("F" in flags)) & 0xFFFFFFFF
        self.tsval += 7
        return pkt


def pair(a: TcpFlow, b: TcpFlow) -> None:
    """Exchange sequence numbers after SYN / SYN-ACK as both ends would know them."""
    a.ack = b.seq
    b.ack = a.seq


# ---------------------------------------------------------------------------------------------
# web-server: one interface, gateway 203.0.113.1, all remote traffic arrives through it

def web_server(path: str) -> None:
    c = Capture(path)
    me, me_mac = "203.0.113.10", "52:54:00:12:34:56"
    gw, gw_mac = "203.0.113.1", "52:54:00:00:00:01"
    client = "198.51.100.23"
    inbound: Callable[[float, bytes], None] = lambda dt, pkt: c.ip(dt, me_mac, gw_mac, pkt)

    # 0  the gateway refreshes its entry for us (ARP request, broadcast)
    c.arp(0.0, BROADCAST, gw_mac, "request", gw_mac, gw, "00:00:00:00:00:00", me)
    # 1  an ARP reply from the gateway (the answer to our periodic probe; refreshes the entry)
    c.arp(0.412, me_mac, gw_mac, "reply", gw_mac, gw, me_mac, me)
    # 2-5  HTTP: handshake, GET, FIN from the client
    cl = TcpFlow(c, client, 51514, me, 80, isn=0x3A1C5F00, ttl=52, ts0=2914401)
    inbound(1.203, cl.segment("S", options=syn_options(cl.tsval), window=64240))
    cl.ack = (server_isn(client, 51514, me, 80) + 1) & 0xFFFFFFFF
    cl.peer_ts = 1794201
    inbound(0.0241, cl.segment("A"))
    inbound(0.0003, cl.segment("PA", b"GET / HTTP/1.1\r\nHost: www.example.com\r\n"
                                     b"User-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"))
    inbound(0.0512, cl.segment("FA"))
    # 6  ping from the same client
    inbound(2.118, _echo(c, client, me, 0x1F2A, 1, ttl=52))
    # 7  a DNS query to the stub resolver's port from outside (it only listens on 127.0.0.53)
    inbound(1.734, build.udp_packet(client, me, 41873, 53, dns_query(0x6b1d, "www.example.com"),
                                    ttl=52, id=c.next_id(client)))
    # 8  a SYN to a closed port (SMTP)
    inbound(0.877, build.tcp_packet(client, me, 38311, 25, "S", 0x91E0AB12, 0, 64240,
                                    options=syn_options(2919022), ttl=52, df=True, id=c.next_id(client)))
    # 9  traceroute's probe with TTL=1 (on its last hop here: the TTL only matters when forwarding)
    inbound(1.066, build.udp_packet(client, me, 47001, 33434, b"\0" * 32, ttl=1, id=c.next_id(client)))
    # 10 a malformed packet: IPv4 header checksum wrong
    inbound(0.533, build.tcp_packet(client, me, 51515, 443, "S", 0x0BADC0DE, 0, 64240,
                                    options=syn_options(2921031), ttl=52, df=True, id=c.next_id(client),
                                    check=0x1234))
    c.write()


def _echo(c: Capture, src: str, dst: str, ident: int, seq: int, ttl: int = 64) -> bytes:
    """An echo request as Linux ping sends it: a 16-byte timeval, then 0x10, 0x11, ... (56 bytes)."""
    payload = struct.pack("<QQ", int(c.t), 0) + bytes(range(0x10, 0x38))     # timeval + pattern
    return build.ipv4(src, dst, build.IPPROTO_ICMP, build.icmp(8, 0, payload, ident, seq), ttl=ttl, df=True,
                      id=c.next_id(src))


# ---------------------------------------------------------------------------------------------
# home-router: WAN eth0 192.0.2.10 (gateway 192.0.2.1), LAN eth1 192.168.1.1/24

def home_router(path: str) -> None:
    c = Capture(path, ["eth0", "eth1"])
    wan, wan_mac = "192.0.2.10", "00:e0:4c:68:00:01"
    lan, lan_mac = "192.168.1.1", "00:e0:4c:68:00:02"
    isp_mac = "00:00:5e:00:01:01"
    laptop, laptop_mac = "192.168.1.10", "3c:22:fb:11:22:33"
    nas, nas_mac = "192.168.1.20", "b8:27:eb:aa:bb:cc"
    resolver, website, visitor = "203.0.113.53", "198.51.100.80", "198.51.100.99"
    from_lan = lambda dt, pkt: c.on("eth1").ip(dt, lan_mac, laptop_mac, pkt)  # noqa: E731
    from_wan = lambda dt, pkt: c.on("eth0").ip(dt, wan_mac, isp_mac, pkt)  # noqa: E731

    # 0  the laptop resolves its default gateway (router learns the laptop: neigh_event_ns)
    c.on("eth1").arp(0.0, BROADCAST, laptop_mac, "request", laptop_mac, laptop, "00:00:00:00:00:00", lan)
    # 1-2  DNS through the router: query masqueraded out, answer de-NATed back
    from_lan(0.0021, build.udp_packet(laptop, resolver, 53124, 53, dns_query(0x2f4e, "example.org"),
                                      id=c.next_id(laptop)))
    from_wan(0.0183, build.udp_packet(resolver, wan, 53, 53124, dns_answer(0x2f4e, "example.org", website),
                                      ttl=57, id=c.next_id(resolver)))
    # (forwarding this answer put the router's STALE entry for the laptop into DELAY: 5 s later
    #  the router probes it with a unicast ARP request -- frame 17 is the laptop's answer)
    laptop_probe_due = c.t + 5.0
    # 3-11  HTTPS-ish TCP conversation laptop <-> website, both directions on the wire
    cl = TcpFlow(c, laptop, 40112, website, 443, isn=0x5E1A0001, ttl=64, ts0=88120)
    sv = TcpFlow(c, website, 443, wan, 40112, isn=0x11D04A00, ttl=54, ts0=5012330)
    from_lan(0.0009, cl.segment("S", options=syn_options(cl.tsval), window=64240))
    sv.ack = cl.seq
    sv.peer_ts = cl.tsval - 7
    from_wan(0.0217, sv.segment("SA", options=synack_options(sv.tsval, sv.peer_ts), window=65160))
    pair(cl, sv)
    cl.peer_ts = sv.tsval - 7
    from_lan(0.0002, cl.segment("A"))
    from_lan(0.0004, cl.segment("PA", b"\x16\x03\x01\x00\xc8" + bytes(200)))   # a TLS ClientHello-sized record
    sv.ack = cl.seq
    sv.peer_ts = cl.tsval - 7
    from_wan(0.0221, sv.segment("PA", b"\x16\x03\x03\x00\x7a" + bytes(122)))
    cl.ack = sv.seq
    cl.peer_ts = sv.tsval - 7
    from_lan(0.0003, cl.segment("A"))
    from_lan(0.1502, cl.segment("FA"))
    sv.ack = cl.seq
    from_wan(0.0219, sv.segment("FA"))
    cl.ack = sv.seq
    from_lan(0.0002, cl.segment("A"))
    # 12  the laptop pings the router
    from_lan(1.311, _echo(c, laptop, lan, 0x0C41, 1))
    # 13  port forward: a visitor connects to WAN:8080 -> DNAT 192.168.1.20:80; the router has
    #     no ARP entry for the NAS yet, so the SYN waits in the neighbour queue
    vi = TcpFlow(c, visitor, 40001, wan, 8080, isn=0x7700AA10, ttl=49, ts0=300100)
    from_wan(2.004, vi.segment("S", options=syn_options(vi.tsval), window=64240))
    # 14  the NAS answers the router's ARP request: the queued SYN is sent
    c.on("eth1").arp(0.0004, lan_mac, nas_mac, "reply", nas_mac, nas, lan_mac, lan)
    # 15-16 NAS SYN-ACK (un-DNATed on the way out), visitor's ACK
    na = TcpFlow(c, nas, 80, visitor, 40001, isn=0x2B3C4D5E, ttl=64, ts0=7001)
    na.ack = vi.seq
    na.peer_ts = vi.tsval - 7
    c.on("eth1").ip(0.0003, lan_mac, nas_mac, na.segment("SA", options=synack_options(na.tsval, na.peer_ts), window=65160))
    vi.ack = na.seq
    vi.peer_ts = na.tsval - 7
    from_wan(0.0391, vi.segment("A"))
    # 17 the laptop answers the router's unicast ARP probe (sent when the DELAY timer expired;
    #    pathtrace runs timers on capture time, so the probe shows in this record)
    t16 = c.t
    c.on("eth1").arp(c.until(laptop_probe_due + 0.0011), lan_mac, laptop_mac, "reply", laptop_mac, laptop,
                     lan_mac, lan)
    # 18 a SYN from the internet to a closed port on the router (telnet)
    from_wan(c.until(t16 + 3.127), build.tcp_packet(visitor, wan, 52811, 23, "S", 0x4040AA01, 0, 64240,
                                     options=syn_options(301977), ttl=49, df=True, id=c.next_id(visitor)))
    # 19 traceroute from the laptop: first probe has TTL=1 and expires at the router
    from_lan(0.844, build.udp_packet(laptop, website, 44123, 33434, b"\0" * 32, ttl=1, id=c.next_id(laptop)))
    # 20 a malformed packet from the WAN: bad IPv4 header checksum
    from_wan(0.271, build.udp_packet(resolver, wan, 53, 53124, dns_answer(0x2f4f, "example.org", website),
                                     ttl=57, id=c.next_id(resolver), check=0xBEEF))
    c.write()


# ---------------------------------------------------------------------------------------------
# two-uplink: ISP A eth0 192.0.2.10, ISP B eth1 198.51.100.10, LAN eth2 10.0.0.1/24 (guests .128/25)

def two_uplink(path: str) -> None:
    c = Capture(path, ["eth0", "eth1", "eth2"])
    a_ip, a_mac, a_gw_mac = "192.0.2.10", "a0:36:9f:10:00:01", "00:00:5e:00:01:0a"
    b_ip, b_mac = "198.51.100.10", "a0:36:9f:10:00:02"
    b_gw, b_gw_mac = "198.51.100.1", "00:00:5e:00:01:0b"
    lan_ip, lan_mac = "10.0.0.1", "a0:36:9f:10:00:03"
    pc, pc_mac = "10.0.0.20", "f4:4d:30:00:00:20"
    guest, guest_mac = "10.0.0.150", "9a:11:22:33:44:96"
    resolver, website, prober = "203.0.113.53", "203.0.113.80", "203.0.113.99"
    from_pc = lambda dt, pkt: c.on("eth2").ip(dt, lan_mac, pc_mac, pkt)  # noqa: E731
    from_guest = lambda dt, pkt: c.on("eth2").ip(dt, lan_mac, guest_mac, pkt)  # noqa: E731
    from_a = lambda dt, pkt: c.on("eth0").ip(dt, a_mac, a_gw_mac, pkt)  # noqa: E731
    from_b = lambda dt, pkt: c.on("eth1").ip(dt, b_mac, b_gw_mac, pkt)  # noqa: E731

    # 0  staff PC resolves the router
    c.on("eth2").arp(0.0, BROADCAST, pc_mac, "request", pc_mac, pc, "00:00:00:00:00:00", lan_ip)
    # 1-2 DNS via ISP A (main table), masqueraded to 192.0.2.10
    from_pc(0.0015, build.udp_packet(pc, resolver, 36001, 53, dns_query(0x7a01, "intranet.example"),
                                     id=c.next_id(pc)))
    from_a(0.0122, build.udp_packet(resolver, a_ip, 53, 36001, dns_answer(0x7a01, "intranet.example", website),
                                    ttl=58, id=c.next_id(resolver)))
    pc_probe_due = c.t + 5.0          # the PC's entry is now in DELAY; the router probes it at this time
    # 3  a guest resolves the router
    c.on("eth2").arp(0.733, BROADCAST, guest_mac, "request", guest_mac, guest, "00:00:00:00:00:00", lan_ip)
    # 4  guest SYN: mangle MARK 0x2 -> rule 'fwmark 0x2 lookup 200' -> ISP B, whose gateway
    #    is not resolved yet: queued behind an ARP request
    gu = TcpFlow(c, guest, 49152, website, 443, isn=0x0A0B0C0D, ttl=64, ts0=410000)
    from_guest(0.0011, gu.segment("S", options=syn_options(gu.tsval), window=64240))
    # 5  ISP B's gateway answers: the SYN leaves on eth1, source 198.51.100.10
    c.on("eth1").arp(0.0009, b_mac, b_gw_mac, "reply", b_gw_mac, b_gw, b_mac, b_ip)
    # 6-12 the rest of the guest's connection, replies arrive on eth1
    ws = TcpFlow(c, website, 443, b_ip, 49152, isn=0x66554433, ttl=55, ts0=990000)
    ws.ack = gu.seq
    ws.peer_ts = gu.tsval - 7
    from_b(0.0188, ws.segment("SA", options=synack_options(ws.tsval, ws.peer_ts), window=65160))
    pair(gu, ws)
    gu.peer_ts = ws.tsval - 7
    from_guest(0.0002, gu.segment("A"))
    from_guest(0.0003, gu.segment("PA", b"\x16\x03\x01\x00\x60" + bytes(96)))
    ws.ack = gu.seq
    ws.peer_ts = gu.tsval - 7
    from_b(0.0190, ws.segment("PA", b"\x16\x03\x03\x00\x40" + bytes(64)))
    gu.ack = ws.seq
    gu.peer_ts = ws.tsval - 7
    from_guest(0.0002, gu.segment("FA"))
    ws.ack = gu.seq
    from_b(0.0185, ws.segment("FA"))
    gu.ack = ws.seq
    from_guest(0.0002, gu.segment("A"))
    # 13 ping to the ISP B address: the reply must leave through eth1 ('from 198.51.100.10 lookup 200')
    from_b(1.502, _echo(c, prober, b_ip, 0x3301, 1, ttl=51))
    # 14 ping to the ISP A address: the reply leaves through eth0
    from_a(0.254, _echo(c, prober, a_ip, 0x3302, 1, ttl=51))
    # 15 a SYN to a closed port on ISP B's address: REJECT --reject-with tcp-reset
    from_b(1.880, build.tcp_packet(prober, b_ip, 60123, 3389, "S", 0x12340000, 0, 64240,
                                   options=syn_options(77001), ttl=51, df=True, id=c.next_id(prober)))
    # 16 the staff PC answers the router's unicast ARP probe (its entry went STALE -> DELAY -> PROBE)
    t15 = c.t
    c.on("eth2").arp(c.until(pc_probe_due + 0.0009), lan_mac, pc_mac, "reply", pc_mac, pc, lan_mac, lan_ip)
    # 17 a guest's traceroute: TTL=1 expires at the router (ICMP time exceeded back to the guest)
    from_guest(c.until(t15 + 0.912), build.udp_packet(guest, website, 45001, 33434, b"\0" * 32, ttl=1, id=c.next_id(guest)))
    # 18 malformed: bad IPv4 header checksum from ISP A
    from_a(0.311, build.ipv4(prober, a_ip, build.IPPROTO_ICMP, build.icmp(8, 0, bytes(56), 0x3303, 2), ttl=51,
                             id=c.next_id(prober), check=0x0001))
    c.write()


SAMPLES = {"web-server.pcap": web_server, "home-router.pcapng": home_router, "two-uplink.pcapng": two_uplink}


def main() -> None:
    for name, fn in SAMPLES.items():
        fn(os.path.join(HERE, name))


if __name__ == "__main__":
    main()
