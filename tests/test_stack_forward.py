"""Forwarding and output branches: TTL, MTU, fragmentation, route types, rp_filter, neighbours."""
from __future__ import annotations

import struct

import pytest

from helpers import Rig, fns, step
from pathtrace.packet import build

BASE = """
interfaces:
  - name: eth0
    driver: ixgbe
    mac: 02:00:00:00:00:01
    addresses: [192.0.2.1/24]
  - name: eth1
    driver: veth
    mac: 02:00:00:00:00:02
    addresses: [198.51.100.1/24]
    mtu: {mtu}
sysctl:
  net.ipv4.ip_forward: {fwd}
  net.ipv4.conf.eth0.rp_filter: {rpf}
routes:
  - default via 198.51.100.254 dev eth1
  - blackhole 10.99.0.0/16
  - unreachable 10.98.0.0/16
  - prohibit 10.97.0.0/16
  - 10.50.0.0/16 via 198.51.100.200 table 100
rules:
  - from 192.0.2.128/25 lookup 100 priority 100
  - to 10.60.0.0/16 unreachable priority 200
neighbours:
  - 198.51.100.254 dev eth1 lladdr 02:00:00:00:00:fe reachable
  - 192.0.2.50 dev eth0 lladdr 02:aa:aa:aa:aa:01 permanent
"""
PEER = "192.0.2.50"


def make(tmp_path, mtu=1500, fwd=1, rpf=0, routes_extra=""):
    return Rig(tmp_path, BASE.format(mtu=mtu, fwd=fwd, rpf=rpf) + routes_extra)


def out_ip(rec, n=0):
    return rec.emitted[n].frame[14:]


def test_forward_decrements_ttl_and_uses_neighbour(tmp_path):
    rig = make(tmp_path)
    rec = rig.send("eth0", build.udp_packet(PEER, "203.0.113.9", 1, 2, b"x", ttl=30))
    assert (rec.verdict, rec.egress) == ("FORWARD", "eth1")
    frame = rec.emitted[0].frame
    assert frame[:6] == bytes.fromhex("0200000000fe") and frame[6:12] == bytes.fromhex("020000000002")
    assert out_ip(rec)[8] == 29
    assert build.csum_fold(build.csum_partial(out_ip(rec)[:20])) == 0   # header checksum still valid
    assert "veth_xmit" in fns(rec) and "ip_forward_finish" in fns(rec)
    # the first packet through an entry initialises its header cache; the second uses neigh_hh_output
    again = rig.send("eth0", build.udp_packet(PEER, "203.0.113.9", 1, 2, b"x"))
    assert "neigh_hh_output" in fns(again) and "neigh_resolve_output" not in fns(again)


def test_forwarding_disabled_drops_silently(tmp_path):
    rig = make(tmp_path, fwd=0)
    rec = rig.send("eth0", build.udp_packet(PEER, "203.0.113.9", 1, 2, b"x"))
    assert (rec.verdict, rec.reason) == ("DROP", "IP_INADDRERRORS")
    assert rec.emitted == []


def test_ttl_expiry_sends_time_exceeded(tmp_path):
    rig = make(tmp_path)
    pkt = build.udp_packet(PEER, "203.0.113.9", 1, 2, b"x", ttl=1)
    rec = rig.send("eth0", pkt)
    assert (rec.verdict, rec.reason) == ("DROP", "IP_INHDR")
    icmp = out_ip(rec)
    assert icmp[20:22] == bytes([11, 0]) and icmp[28:28 + len(pkt)] == pkt
    assert rec.emitted[0].dev == "eth0"


def test_df_over_mtu_sends_frag_needed(tmp_path):
    rig = make(tmp_path, mtu=1400)
    rec = rig.send("eth0", build.udp_packet(PEER, "203.0.113.9", 1, 2, b"x" * 1450, df=True))
    assert (rec.verdict, rec.reason) == ("DROP", "PKT_TOO_BIG")
    icmp = out_ip(rec)
    assert icmp[20:22] == bytes([3, 4]) and struct.unpack("!H", icmp[26:28])[0] == 1400


def test_fragmentation_without_df(tmp_path):
    rig = make(tmp_path, mtu=576)
    payload = b"y" * 1200
    rec = rig.send("eth0", build.udp_packet(PEER, "203.0.113.9", 1, 2, payload))
    assert rec.verdict == "FORWARD"
    frags = [out_ip(rec, i) for i in range(len(rec.emitted))]
    assert len(frags) == 3 and all(len(f) <= 576 for f in frags)
    offsets = [struct.unpack("!H", f[6:8])[0] for f in frags]
    assert [o & 0x1FFF for o in offsets] == [0, 69, 138] and [bool(o & 0x2000) for o in offsets] == [True, True, False]
    assert b"".join(f[20:] for f in frags)[8:] == payload
    assert step(rec, "ip_do_fragment")["fragments"] == 3


@pytest.mark.parametrize("dst,icmp_code,reason", [
    ("10.99.1.1", None, "NOT_SPECIFIED"),        # blackhole: EINVAL, silent
    ("10.98.1.1", 1, "NOT_SPECIFIED"),           # unreachable: host unreachable
    ("10.97.1.1", 13, "NOT_SPECIFIED"),          # prohibit: communication administratively filtered
    ("10.60.1.1", 1, "NOT_SPECIFIED"),           # rule action unreachable
])
def test_route_types(tmp_path, dst, icmp_code, reason):
    rig = make(tmp_path)
    rec = rig.send("eth0", build.udp_packet(PEER, dst, 1, 2, b""))
    assert (rec.verdict, rec.reason) == ("DROP", reason)
    assert "ip_error" in fns(rec)
    if icmp_code is None:
        assert rec.emitted == []
    else:
        assert out_ip(rec)[20:22] == bytes([3, icmp_code])


def test_no_route_is_net_unreachable(tmp_path):
    text = BASE.format(mtu=1500, fwd=1, rpf=0).replace("  - default via 198.51.100.254 dev eth1\n", "")
    rig = Rig(tmp_path, text)
    rec = rig.send("eth0", build.udp_packet(PEER, "203.0.113.9", 1, 2, b""))
    assert (rec.verdict, rec.reason) == ("DROP", "IP_INNOROUTES")
    assert out_ip(rec)[20:22] == bytes([3, 0])


def test_policy_rule_by_source(tmp_path):
    rig = make(tmp_path)
    rec = rig.send("eth0", build.udp_packet("192.0.2.200", "10.50.3.3", 1, 2, b""))
    detail = step(rec, "fib_lookup")
    assert detail["table"] == "100" and detail["rule"].startswith("100:")
    # from a source outside the rule, table 100 is never consulted: the default route wins
    rec2 = rig.send("eth0", build.udp_packet(PEER, "10.50.3.3", 1, 2, b""))
    assert step(rec2, "fib_lookup")["table"] == "main"


@pytest.mark.parametrize("rpf,verdict", [(1, "DROP"), (2, "FORWARD"), (0, "FORWARD")])
def test_rp_filter(tmp_path, rpf, verdict):
    """A source that routes back out eth1 arriving on eth0: strict drops, loose and off pass."""
    rig = make(tmp_path, rpf=rpf)
    rec = rig.send("eth0", build.udp_packet("203.0.113.77", "198.51.100.254", 1, 2, b""))
    assert rec.verdict == verdict
    if verdict == "DROP":
        assert rec.reason == "IP_RPFILTER"


def test_unresolved_neighbour_queues_then_arp_reply_releases(tmp_path):
    rig = make(tmp_path)
    rec = rig.send("eth0", build.udp_packet(PEER, "198.51.100.7", 1, 2, b"q"))
    assert (rec.verdict, rec.egress) == ("QUEUED", "eth1")
    arp = rec.emitted[0].frame
    assert arp[:6] == b"\xff" * 6 and arp[12:14] == b"\x08\x06" and arp[20:22] == b"\x00\x01"
    assert arp[38:42] == bytes([198, 51, 100, 7]) and arp[28:32] == bytes([198, 51, 100, 1])
    reply = build.ether(rig.mac("eth1"), "02:77:77:77:77:77", 0x0806,
                        build.arp(2, "02:77:77:77:77:77", "198.51.100.7", rig.mac("eth1"), "198.51.100.1"))
    rel = rig.send_frame(reply)
    assert rel.verdict == "CONSUMED"
    assert [e.kind for e in rel.emitted] == ["released"]
    assert rel.emitted[0].frame[:6] == bytes.fromhex("027777777777")
    assert rig.net.neigh.lookup(0xC6336407, "eth1").state == "REACHABLE"


def test_neighbour_failure_after_three_probes(tmp_path):
    rig = make(tmp_path)
    rec = rig.send("eth0", build.udp_packet(PEER, "198.51.100.8", 1, 2, b"q"))
    assert rec.verdict == "QUEUED"
    probes = 1
    failed = None
    for _ in range(4):
        r = rig.send("eth0", build.udp_packet(PEER, "192.0.2.1", 1, 53, b""), dt=1.0)
        probes += sum(1 for e in r.emitted if e.frame[12:14] == b"\x08\x06")
        if "neigh_invalidate" in fns(r):
            failed = r
            break
    assert probes == 3
    assert failed is not None
    unreach = [e for e in failed.emitted if e.frame[12:14] == b"\x08\x00"]
    assert unreach and unreach[0].frame[14 + 20:14 + 22] == bytes([3, 1])


def test_arp_request_for_our_address_is_answered(tmp_path):
    rig = make(tmp_path)
    req = build.ether(b"\xff" * 6, "02:55:55:55:55:55", 0x0806,
                      build.arp(1, "02:55:55:55:55:55", "192.0.2.77", b"\0" * 6, "192.0.2.1"))
    rec = rig.send_frame(req)
    assert rec.verdict == "CONSUMED"
    reply = rec.emitted[0].frame
    assert reply[:6] == bytes.fromhex("025555555555") and reply[20:22] == b"\x00\x02"
    assert reply[28:32] == bytes([192, 0, 2, 1]) and reply[22:28] == rig.mac("eth0")
    assert rig.net.neigh.lookup(0xC000024D, "eth0").state == "STALE"


def test_arp_for_other_address_is_not_answered(tmp_path):
    rig = make(tmp_path)
    req = build.ether(b"\xff" * 6, "02:55:55:55:55:55", 0x0806,
                      build.arp(1, "02:55:55:55:55:55", "192.0.2.77", b"\0" * 6, "192.0.2.99"))
    rec = rig.send_frame(req)
    assert rec.verdict == "CONSUMED" and rec.emitted == []


def test_redirect_when_forwarding_out_the_ingress_interface(tmp_path):
    extra = "  - 192.0.2.128/25 via 192.0.2.50 dev eth0\n"
    text = BASE.format(mtu=1500, fwd=1, rpf=0).replace("routes:\n", "routes:\n" + extra)
    rig = Rig(tmp_path, text)
    rec = rig.send("eth0", build.udp_packet("192.0.2.60", "192.0.2.200", 1, 2, b""),
                   src_mac="02:aa:aa:aa:aa:60")
    assert rec.verdict in ("FORWARD", "QUEUED")
    assert "ip_rt_send_redirect" in fns(rec)
