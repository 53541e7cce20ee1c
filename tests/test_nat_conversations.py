"""Whole conversations through the stack with a stateful NAT router (DNAT in, MASQUERADE out)."""
from __future__ import annotations

import struct

import pytest

from helpers import Rig, fns
from pathtrace.lib.checksum import l4_checksum
from pathtrace.net.netfilter.nf_conntrack_list import format_conntrack_list
from pathtrace.packet import build

ROUTER = """
interfaces:
  - name: wan0
    driver: e1000e
    mac: 02:00:00:00:00:01
    addresses: [198.51.100.1/24]
  - name: lan0
    driver: e1000e
    mac: 02:00:00:00:01:01
    addresses: [192.168.1.1/24]
sysctl:
  net.ipv4.ip_forward: 1
routes:
  - default via 198.51.100.254 dev wan0
neighbours:
  - 198.51.100.254 dev wan0 lladdr 02:00:00:00:00:fe permanent
  - 192.168.1.10 dev lan0 lladdr 02:00:00:00:01:10 permanent
  - 192.168.1.20 dev lan0 lladdr 02:00:00:00:01:20 permanent
iptables: |
  *nat
  :PREROUTING ACCEPT [0:0]
  :INPUT ACCEPT [0:0]
  :OUTPUT ACCEPT [0:0]
  :POSTROUTING ACCEPT [0:0]
  -A PREROUTING -i wan0 -p tcp --dport 8080 -j DNAT --to-destination 192.168.1.20:80
  -A POSTROUTING -o wan0 -j MASQUERADE
  COMMIT
  *filter
  :INPUT DROP [0:0]
  :FORWARD DROP [0:0]
  :OUTPUT ACCEPT [0:0]
  -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
  -A FORWARD -m conntrack --ctstate INVALID -j DROP
  -A FORWARD -i lan0 -o wan0 -j ACCEPT
  -A FORWARD -i wan0 -o lan0 -p tcp -d 192.168.1.20 --dport 80 -m conntrack --ctstate NEW,DNAT -j ACCEPT
  COMMIT
"""
WAN_PEER_MAC = "02:00:00:00:00:fe"
LAN_MAC = "02:00:00:00:01:10"
SERVER = "203.0.113.5"


@pytest.fixture
def rig(tmp_path):
    return Rig(tmp_path, ROUTER)


def ip_of(record, n=0):
    return record.emitted[n].frame[14:]


def addrs_ports(ip: bytes) -> tuple[str, int, str, int]:
    src = ".".join(map(str, ip[12:16]))
    dst = ".".join(map(str, ip[16:20]))
    sport, dport = struct.unpack("!HH", ip[20:24])
    return src, sport, dst, dport


def test_masquerade_conversation_both_ways_with_fin(rig):
    out = lambda flags, **kw: rig.send("lan0", build.tcp_packet("192.168.1.10", SERVER, 40000, 443, flags, **kw),
                                       src_mac=LAN_MAC)
    back = lambda flags, sport_to, **kw: rig.send("wan0", build.tcp_packet(SERVER, "198.51.100.1", 443, sport_to,
                                                                         flags, **kw), src_mac=WAN_PEER_MAC)
    syn = out("S", seq=100)
    assert syn.verdict == "FORWARD" and syn.egress == "wan0"
    src, sport, dst, dport = addrs_ports(ip_of(syn))
    assert (src, dst, dport) == ("198.51.100.1", SERVER, 443)
    synack = back("SA", sport, seq=900, ack=101)
    assert synack.verdict == "FORWARD" and synack.egress == "lan0"
    assert addrs_ports(ip_of(synack)) == (SERVER, 443, "192.168.1.10", 40000)
    assert synack.emitted[0].frame[:6] == bytes.fromhex("020000000110")
    for record in (out("A", seq=101, ack=901), out("PA", seq=101, ack=901, payload=b"GET /"),
                   back("A", sport, seq=901, ack=106), back("FA", sport, seq=901, ack=106),
                   out("FA", seq=106, ack=902), back("A", sport, seq=902, ack=107)):
        assert record.verdict == "FORWARD", (record.verdict, record.reason, fns(record))
    # checksums stay valid after NAT (incremental updates)
    pkt = ip_of(synack)
    assert l4_checksum(int.from_bytes(pkt[12:16], "big"), int.from_bytes(pkt[16:20], "big"), 6, pkt[20:]) == 0
    listing = format_conntrack_list(rig.net.nf.conntrack, rig.t)
    assert "TIME_WAIT" in listing and "ASSURED" in listing


def test_unsolicited_wan_packet_is_dropped_by_forward_policy(rig):
    rec = rig.send("wan0", build.tcp_packet(SERVER, "192.168.1.10", 443, 40000, "S"), src_mac=WAN_PEER_MAC)
    assert (rec.verdict, rec.reason) == ("DROP", "NETFILTER_DROP")


def test_dnat_port_forward_conversation(rig):
    syn = rig.send("wan0", build.tcp_packet("203.0.113.77", "198.51.100.1", 50000, 8080, "S", seq=1),
                   src_mac=WAN_PEER_MAC)
    assert (syn.verdict, syn.egress) == ("FORWARD", "lan0")
    assert addrs_ports(ip_of(syn)) == ("203.0.113.77", 50000, "192.168.1.20", 80)
    reply = rig.send("lan0", build.tcp_packet("192.168.1.20", "203.0.113.77", 80, 50000, "SA", seq=5, ack=2),
                     src_mac="02:00:00:00:01:20")
    assert (reply.verdict, reply.egress) == ("FORWARD", "wan0")
    assert addrs_ports(ip_of(reply)) == ("198.51.100.1", 8080, "203.0.113.77", 50000)


def test_icmp_error_for_natted_flow_is_related_and_un_natted(rig):
    syn = rig.send("lan0", build.udp_packet("192.168.1.10", SERVER, 5353, 53, b"q"), src_mac=LAN_MAC)
    natted = ip_of(syn)
    src, sport, _, _ = addrs_ports(natted)
    err = build.icmp_error_packet(SERVER, "198.51.100.1", 3, 3, natted) if hasattr(build, "icmp_error_packet") \
        else build.icmp_packet(SERVER, "198.51.100.1", 3, 3, payload=natted[:28])
    rec = rig.send("wan0", err, src_mac=WAN_PEER_MAC)
    assert (rec.verdict, rec.egress) == ("FORWARD", "lan0"), (rec.verdict, rec.reason, fns(rec))
    assert any(v.get("rule", 0) == 1 for v in rec.rules if v.get("chain") == "FORWARD")   # the RELATED rule
    out = ip_of(rec)
    assert ".".join(map(str, out[16:20])) == "192.168.1.10"
    inner = out[28:]
    assert ".".join(map(str, inner[12:16])) == "192.168.1.10" and struct.unpack("!H", inner[20:22])[0] == 5353


def test_udp_flow_times_out(rig):
    first = rig.send("lan0", build.udp_packet("192.168.1.10", SERVER, 6000, 53, b"q"), src_mac=LAN_MAC)
    _, sport, _, _ = addrs_ports(ip_of(first))
    answer = rig.send("wan0", build.udp_packet(SERVER, "198.51.100.1", 53, sport, b"a"), src_mac=WAN_PEER_MAC)
    assert answer.verdict == "FORWARD"
    late = rig.send("wan0", build.udp_packet(SERVER, "198.51.100.1", 53, sport, b"a"), src_mac=WAN_PEER_MAC,
                    dt=31.0)
    assert (late.verdict, late.reason) == ("DROP", "NETFILTER_DROP")     # entry expired: no longer ESTABLISHED
