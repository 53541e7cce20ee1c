"""Benchmark workloads: a NAT router host with N rules and a capture of F TCP conversations.

The host is a small-office router: LAN eth1 masqueraded out of WAN eth0, a stateful
FORWARD chain (ESTABLISHED first, then N-ish corporate rules that the traffic does not
hit, then LAN->WAN accept, policy DROP), DNAT port forwards in PREROUTING.  The capture
holds F conversations LAN client -> WAN server:443, each a real handshake (SYN from the
LAN, SYN-ACK from the server to the masqueraded address, ACK) and then data both ways
with correct sequence numbers, acknowledgements and checksums, so conntrack tracks the
windows as the kernel would.  Flows are interleaved round robin.
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ROUTER_WAN_MAC, ROUTER_LAN_MAC = "02:00:00:00:00:01", "02:00:00:00:01:01"
GATEWAY_MAC, CLIENT_MAC = "02:00:00:00:00:fe", "02:11:11:11:11:11"
PUBLIC = "198.51.100.1"


def host_yaml(rules: int) -> str:
    """The router with about `rules` iptables rules in total (at least 4)."""
    filler = max(rules - 4, 0)
    dnat = min(filler // 10, 200)
    fwd = filler - dnat
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             ":POSTROUTING ACCEPT [0:0]"]
    for i in range(dnat):
        lines.append(f"-A PREROUTING -i eth0 -p tcp --dport {20000 + i} -j DNAT "
                     f"--to-destination 192.168.2.{1 + i % 250}:{8000 + i}")
    lines += ["-A POSTROUTING -o eth0 -j MASQUERADE", "COMMIT",
              "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]",
              "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
              "-A FORWARD -m conntrack --ctstate INVALID -j DROP"]
    for i in range(fwd):
        a, b = divmod(i, 250)
        lines.append(f"-A FORWARD -s 10.{a % 250}.{b}.0/24 -d 172.16.{a % 250}.{b + 1}/32 -p tcp "
                     f"--dport {1000 + i % 50000} -j {'ACCEPT' if i % 3 else 'DROP'}")
    lines += ["-A FORWARD -i eth1 -o eth0 -j ACCEPT", "COMMIT"]
    body = "\n".join("  " + line for line in lines)
    return f"""name: bench-nat-router
interfaces:
  - name: eth0
    driver: ixgbe
    mac: {ROUTER_WAN_MAC}
    addresses: [{PUBLIC}/24]
  - name: eth1
    driver: ixgbe
    mac: {ROUTER_LAN_MAC}
    addresses: [192.168.1.1/24]
sysctl:
  net.ipv4.ip_forward: 1
routes:
  - default via 198.51.100.254 dev eth0
neighbours:
  - 198.51.100.254 dev eth0 lladdr {GATEWAY_MAC} permanent
{_lan_neighbours()}iptables: |
{body}
"""


def _lan_neighbours() -> str:
    return "".join(f"  - 192.168.1.{h} dev eth1 lladdr 02:11:11:11:11:{h:02x} permanent\n" for h in range(2, 252))


def _fix_tcp_checksum(pkt: bytearray) -> None:
    """Recompute the TCP checksum of an IPv4 packet without options, in place."""
    pkt[36:38] = b"\0\0"
    seg_len = len(pkt) - 20
    total = int.from_bytes(pkt[12:20], "big") + 6 + seg_len
    body = int.from_bytes(pkt[20:], "big")
    if seg_len & 1:
        body <<= 8
    s = (total + body) % 0xFFFF
    pkt[36:38] = struct.pack("!H", (~s) & 0xFFFF if s else 0)


def write_capture(path: Path, packets: int, flows: int, payload: int = 100, gap: float = 0.00001) -> None:
    """F interleaved TCP conversations through the router (see the module docstring)."""
    from pathtrace.packet import build
    eth_lan = build.mac_bytes(ROUTER_LAN_MAC) + build.mac_bytes(CLIENT_MAC) + b"\x08\x00"
    eth_wan = build.mac_bytes(ROUTER_WAN_MAC) + build.mac_bytes(GATEWAY_MAC) + b"\x08\x00"
    state = []
    for f in range(flows):
        client = f"192.168.1.{2 + f % 250}"
        server = f"203.0.113.{1 + (f // 250) % 250 if flows > 250 else 1 + f % 250}"
        sport = 10000 + f
        c_isn, s_isn = (f * 7919) & 0xFFFFFFFF, (f * 104729 + 1) & 0xFFFFFFFF
        c_data = bytearray(build.tcp_packet(client, server, sport, 443, "PA", seq=0, ack=0, window=65535,
                                            payload=b"c" * payload))
        s_data = bytearray(build.tcp_packet(server, PUBLIC, 443, sport, "PA", seq=0, ack=0, window=65535,
                                            payload=b"s" * payload))
        hs = [eth_lan + build.tcp_packet(client, server, sport, 443, "S", seq=c_isn, window=65535),
              eth_wan + build.tcp_packet(server, PUBLIC, 443, sport, "SA", seq=s_isn, ack=c_isn + 1, window=65535),
              eth_lan + build.tcp_packet(client, server, sport, 443, "A", seq=c_isn + 1, ack=s_isn + 1,
                                         window=65535)]
        state.append([hs, c_data, s_data, (c_isn + 1) & 0xFFFFFFFF, (s_isn + 1) & 0xFFFFFFFF, 0])
    t = 1_700_000_000.0
    rec = struct.Struct("<IIII")
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i in range(packets):
            st = state[i % flows]
            k = st[5]
            st[5] = k + 1
            if k < 3:
                frame = st[0][k]
            elif k & 1:
                pkt = st[1]
                struct.pack_into("!II", pkt, 24, st[3], st[4])
                _fix_tcp_checksum(pkt)
                st[3] = (st[3] + payload) & 0xFFFFFFFF
                frame = eth_lan + pkt
            else:
                pkt = st[2]
                struct.pack_into("!II", pkt, 24, st[4], st[3])
                _fix_tcp_checksum(pkt)
                st[4] = (st[4] + payload) & 0xFFFFFFFF
                frame = eth_wan + pkt
            sec = int(t)
            fh.write(rec.pack(sec, int((t - sec) * 1e6), len(frame), len(frame)))
            fh.write(frame)
            t += gap


def write_bidir(oneway: Path, host: Path, path: Path) -> int:
    """The bidirectional capture of `oneway` as a capture taken on the router would show it: each
    received frame followed, 5 us later, by the frames the model sent for it.  Returns the frame count."""
    from pathtrace.capture import read_frames
    from pathtrace.host.loader import load_host
    from pathtrace.replay import Replayer, ReplayOptions, create_namespace
    r = Replayer(create_namespace(load_host(str(host))), ReplayOptions(record=False, emit_frames=True))
    rec = struct.Struct("<IIII")
    raw = oneway.read_bytes()
    pos, count = 24, 0
    with open(path, "wb") as fh:
        fh.write(raw[:24])
        for frame in read_frames(str(oneway)):
            sec, usec, cap, wire = rec.unpack_from(raw, pos)
            fh.write(raw[pos:pos + 16 + cap])
            pos += 16 + cap
            count += 1
            for e in r.process(frame).emitted:
                u = usec + 5
                fh.write(rec.pack(sec + u // 1_000_000, u % 1_000_000, len(e.frame), len(e.frame)))
                fh.write(e.frame)
                count += 1
    return count


# ---- workloads that defeat a per-flow cache (issue 14) ------------------------------------------

def _pcap_writer(path: Path):
    """A classic pcap file and a function that appends one frame at capture time t."""
    rec = struct.Struct("<IIII")
    fh = open(path, "wb")
    fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))

    def put(t: float, frame: bytes) -> None:
        sec = int(t)
        fh.write(rec.pack(sec, int((t - sec) * 1e6), len(frame), len(frame)))
        fh.write(frame)
    return fh, put


def _lan_eth(host: int) -> bytes:
    from pathtrace.packet import build
    return build.mac_bytes(ROUTER_LAN_MAC) + build.mac_bytes(f"02:11:11:11:11:{host:02x}") + b"\x08\x00"


def write_scan(path: Path, packets: int, gap: float = 0.001) -> None:
    """Every packet a new flow: SYNs from the LAN's 250 hosts to ever new (server, port) pairs on the
    WAN side, as a scan or the first packets of many short connections look.  Each is a new conntrack
    entry, masqueraded; the 5-tuple repeats only after 250 x 64,500 packets.  1,000 SYNs a second: with
    SYN_SENT's 120 s timeout at most ~120,000 entries are alive at once (below the default
    nf_conntrack_max, 262,144, which bounds a faster scan's table as the kernel's)."""
    from pathtrace.packet import build

    def syn(i: int, h: int, j: int) -> bytes:
        server = f"203.0.{113 + (j // 64500) % 8}.{1 + j % 250}"
        return build.tcp_packet(f"192.168.1.{2 + h}", server, 1024 + j % 64500, 1 + (j * 7) % 65535, "S",
                                seq=(i * 2654435761) & 0xFFFFFFFF, window=64240)
    _write_new_flows(path, packets, gap, syn)


def _write_new_flows(path: Path, packets: int, gap: float, make) -> None:
    """Packet i from the LAN's host 2 + i % 250, made by make(i, host index, round i // 250), `gap` apart."""
    eths = [_lan_eth(h) for h in range(2, 252)]
    fh, put = _pcap_writer(path)
    t = 1_700_000_000.0
    with fh:
        for i in range(packets):
            h = i % 250
            put(t, eths[h] + make(i, h, i // 250))
            t += gap


def write_udp_flood(path: Path, packets: int, gap: float = 0.001) -> None:
    """Every datagram a new flow: DNS queries from the LAN's 250 hosts, each from a new source port, to
    eight WAN resolvers that do not answer (a resolver farm's uplink, a flood, a reflection attempt).
    Each is a new conntrack entry, masqueraded; 1,000 a second and UDP's 30 s timeout keep ~30,000 alive."""
    from pathtrace.packet import build
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
    _write_new_flows(path, packets, gap, lambda i, h, j: build.udp_packet(
        f"192.168.1.{2 + h}", f"203.0.113.{1 + i % 8}", 1024 + j % 64500, 53, query))


def write_midstream(path: Path, packets: int, flows: int, payload: int = 100, gap: float = 0.00001) -> None:
    """One way only, TCP picked up mid-stream: F LAN clients' uploads to WAN servers as a capture on the
    LAN side of the router with `tcpdump -Q in` shows them - in-sequence data segments with ACK set and
    no handshake, interleaved round robin.  Conntrack picks each flow up (nf_conntrack_tcp_loose) as
    ESTABLISHED [UNREPLIED]; the stateful FORWARD chain sees every packet as NEW."""
    from pathtrace.packet import build
    fh, put = _pcap_writer(path)
    state = []
    for f in range(flows):
        h = f % 250
        server = f"203.0.113.{1 + (f // 250) % 250 if flows > 250 else 1 + f % 250}"
        pkt = bytearray(build.tcp_packet(f"192.168.1.{2 + h}", server, 20000 + f, 443, "A", seq=0, ack=0,
                                         window=65535, payload=b"u" * payload))
        state.append([_lan_eth(2 + h), pkt, (f * 7919) & 0xFFFFFFFF, (f * 104729 + 1) & 0xFFFFFFFF])
    t = 1_700_000_000.0
    with fh:
        for i in range(packets):
            st = state[i % flows]
            pkt = st[1]
            struct.pack_into("!II", pkt, 24, st[2], st[3])
            _fix_tcp_checksum(pkt)
            st[2] = (st[2] + payload) & 0xFFFFFFFF
            put(t, st[0] + pkt)
            t += gap


def write_udp(path: Path, packets: int, flows: int, payload: int = 120, gap: float = 0.00001) -> None:
    """One-way UDP from many clients: F (LAN host, source port) pairs sending syslog, telemetry and DNS
    (ports 514, 4739, 53 in turn) to WAN collectors that never answer, interleaved round robin."""
    from pathtrace.packet import build
    fh, put = _pcap_writer(path)
    frames = []
    for f in range(flows):
        h = f % 250
        server = f"203.0.113.{1 + (f // 250) % 250 if flows > 250 else 1 + f % 250}"
        dport = (514, 4739, 53)[f % 3]
        frames.append(_lan_eth(2 + h) + build.udp_packet(f"192.168.1.{2 + h}", server, 30000 + f, dport,
                                                          payload=bytes([f & 0xFF]) * payload))
    t = 1_700_000_000.0
    with fh:
        for i in range(packets):
            put(t, frames[i % flows])
            t += gap


def write_ping(path: Path, packets: int, flows: int, gap: float = 0.00001) -> None:
    """Unanswered pings from many clients: F (LAN host, echo id) pairs sending echo requests with 56 bytes
    of data and a rising sequence number to WAN hosts that never answer, interleaved round robin."""
    from pathtrace.packet import build
    fh, put = _pcap_writer(path)
    heads = []
    for f in range(flows):
        h = f % 250
        server = f"203.0.113.{1 + (f // 250) % 250 if flows > 250 else 1 + f % 250}"
        heads.append((_lan_eth(2 + h), f"192.168.1.{2 + h}", server, 0x4000 + f))
    t = 1_700_000_000.0
    with fh:
        for i in range(packets):
            eth, src, dst, ident = heads[i % flows]
            seq = (i // flows) & 0xFFFF
            put(t, eth + build.icmp_packet(src, dst, 8, 0, bytes((seq + k) & 0xFF for k in range(56)), id=ident,
                                           seq=seq))
            t += gap
