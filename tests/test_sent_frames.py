"""Frames a capture shows the host sending: predicted ones matched, others through the send paths."""
from __future__ import annotations

from helpers import Rig, eth_frame, fns
from pathtrace.packet import build

ROUTER = """
interfaces:
  - name: lan0
    driver: veth
    mac: 02:00:00:00:01:01
    addresses: [192.168.1.1/24]
  - name: wan0
    driver: veth
    mac: 02:00:00:00:02:01
    addresses: [198.51.100.2/24]
sysctl:
  net.ipv4.ip_forward: 1
routes:
  - default via 198.51.100.1 dev wan0
neighbours:
  - 198.51.100.1 dev wan0 lladdr 02:00:00:00:02:fe reachable
  - 192.168.1.10 dev lan0 lladdr 02:00:00:00:01:10 reachable
iptables: |
  *nat
  -A POSTROUTING -o wan0 -j MASQUERADE
  COMMIT
"""

SERVER = """
interfaces:
  - name: eth0
    driver: veth
    mac: 02:00:00:00:00:10
    addresses: [203.0.113.10/24]
routes:
  - default via 203.0.113.1 dev eth0
neighbours:
  - 203.0.113.1 dev eth0 lladdr 02:00:00:00:00:01 reachable
iptables: |
  *filter
  :INPUT DROP [0:0]
  :OUTPUT {output} [0:0]
  -A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
  -A INPUT -p icmp --icmp-type echo-request -j ACCEPT
  -A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
  -A OUTPUT -p udp --dport 53 -j ACCEPT
  COMMIT
"""
GW_MAC = "02:00:00:00:00:01"
HOST_MAC = "02:00:00:00:00:10"


def _out(rig: Rig, dev: str, l3: bytes, dst_mac: str, dt: float = 0.0005):
    """A frame the host sent on dev, as a capture on dev shows it."""
    return rig.send_frame(build.ether(dst_mac, rig.mac(dev), 0x0800, l3), dt)


def _forwarded_copy(record) -> bytes:
    (e,) = [e for e in record.emitted if e.kind == "forwarded"]
    return e.frame


def test_forwarded_copy_is_matched_not_replayed_again(tmp_path):
    rig = Rig(tmp_path, ROUTER)
    ping = build.icmp_packet("192.168.1.10", "192.0.2.99", id=7, seq=1, ttl=64)
    first = rig.send("lan0", ping, src_mac="02:00:00:00:01:10")
    assert first.verdict == "FORWARD" and first.egress == "wan0"
    copy = rig.send_frame(_forwarded_copy(first), 0.0001)
    assert copy.verdict == "SENT" and copy.egress == "wan0"
    assert copy.agreement["predicted_by"] == first.index and copy.agreement["as"] == "forward"
    assert "differences" not in copy.agreement
    assert fns(copy) == []                      # not run through the receive path a second time
    figures = rig.replayer.agreement.figures()
    assert figures["sent"] == 1 and figures["predicted"] == 1 and figures["differ"] == 0


def test_forwarded_copy_that_differs_is_reported(tmp_path):
    rig = Rig(tmp_path, ROUTER)
    first = rig.send("lan0", build.icmp_packet("192.168.1.10", "192.0.2.99", id=9, seq=1, ttl=64),
                     src_mac="02:00:00:00:01:10")
    frame = bytearray(_forwarded_copy(first))
    frame[14 + 8] -= 1                           # one hop more than the model took off
    copy = rig.send_frame(bytes(frame), 0.0001)
    assert copy.agreement["predicted_by"] == first.index
    assert copy.agreement["differences"] == ["ttl: model 63, capture 62"]
    assert rig.replayer.agreement.figures()["differ"] == 1


def test_forward_the_model_did_not_make_is_not_predicted(tmp_path):
    rig = Rig(tmp_path, ROUTER)
    # the capture covers lan0 (a frame arrived there), so the model must have seen this one arrive
    rig.send("lan0", build.arp("request", "02:00:00:00:01:10", "192.168.1.10", "00:00:00:00:00:00", "192.168.1.1"),
             src_mac="02:00:00:00:01:10", dst_mac=b"\xff" * 6, ethertype=0x0806)
    fwd = build.icmp_packet("192.168.1.10", "192.0.2.99", id=11, seq=1, ttl=63)
    rec = _out(rig, "wan0", fwd, "02:00:00:00:02:fe")
    assert rec.agreement["predicted_by"] is None and rec.agreement["origin"] == "forwarded"
    assert fns(rec) == [] and any("did not forward" in w for w in rec.warnings)
    rig.replayer.agreement.finish()
    assert rig.replayer.agreement.figures()["unpredicted_kernel_or_forwarded"] == 1


def test_echo_reply_the_kernel_sent_is_predicted(tmp_path):
    rig = Rig(tmp_path, SERVER.format(output="ACCEPT"))
    req = rig.send("eth0", build.icmp_packet("198.51.100.23", "203.0.113.10", id=5, seq=1), src_mac=GW_MAC)
    assert req.verdict == "LOCAL_DELIVER"
    (reply,) = req.emitted
    rec = rig.send_frame(reply.frame, 0.0001)
    assert rec.agreement == {"direction": "out", "origin": "kernel", "predicted_by": req.index, "as": "sent"}


def test_hosts_own_dns_query_goes_through_output_and_its_answer_is_established(tmp_path):
    rig = Rig(tmp_path, SERVER.format(output="DROP"))
    query = build.udp_packet("203.0.113.10", "192.0.2.53", 41000, 53, b"q" * 20)
    rec = _out(rig, "eth0", query, GW_MAC)
    assert rec.verdict == "SENT" and rec.agreement["predicted_by"] is None
    assert rec.agreement["origin"] == "application"
    path = fns(rec)
    assert path[:6] == ["__sys_sendto", "sock_sendmsg", "inet_sendmsg", "udp_sendmsg", "inet_autobind",
                        "udp_v4_get_port"]
    assert path.index("ipt_do_table") > path.index("__ip_local_out") and "ip_send_skb" in path
    answer = rig.send("eth0", build.udp_packet("192.0.2.53", "203.0.113.10", 53, 41000, b"a" * 40), src_mac=GW_MAC)
    assert answer.verdict == "LOCAL_DELIVER", fns(answer)
    assert any(r["chain"] == "INPUT" and r["rule"] == 1 for r in answer.rules)   # ESTABLISHED, not policy


def test_output_drop_of_the_hosts_own_packet_is_a_disagreement_with_eperm(tmp_path):
    rig = Rig(tmp_path, SERVER.format(output="DROP"))
    rec = _out(rig, "eth0", build.udp_packet("203.0.113.10", "192.0.2.7", 41001, 123, b"n" * 48), GW_MAC)
    assert rec.verdict == "DROP" and rec.reason == "NETFILTER_DROP"
    assert any("EPERM" in w for w in rec.warnings)
    assert any("the model drops it" in d for d in rec.agreement["differences"])


def test_hosts_ping_gets_a_ping_socket_for_its_reply(tmp_path):
    rig = Rig(tmp_path, SERVER.format(output="ACCEPT"))
    rec = _out(rig, "eth0", build.icmp_packet("203.0.113.10", "192.0.2.1", id=77, seq=1), GW_MAC)
    assert "ping_v4_sendmsg" in fns(rec) and rec.verdict == "SENT"
    reply = rig.send("eth0", build.icmp_packet("192.0.2.1", "203.0.113.10", type=0, id=77, seq=1), src_mac=GW_MAC)
    assert reply.verdict == "LOCAL_DELIVER" and "ping_queue_rcv_skb" in fns(reply)
    other = rig.send("eth0", build.icmp_packet("192.0.2.1", "203.0.113.10", type=0, id=78, seq=1), src_mac=GW_MAC)
    assert other.verdict == "DROP"


def test_neighbour_resolved_before_the_capture_is_taken_from_the_frame(tmp_path):
    text = SERVER.format(output="ACCEPT").replace("neighbours:\n  - 203.0.113.1 dev eth0 lladdr 02:00:00:00:00:01 "
                                                  "reachable\n", "")
    rig = Rig(tmp_path, text)
    rec = _out(rig, "eth0", build.udp_packet("203.0.113.10", "192.0.2.53", 41002, 53, b"q"), GW_MAC)
    assert rec.verdict == "SENT", fns(rec)
    assert any("taken from this frame's destination MAC" in w for w in rec.warnings)
    assert not [e for e in rec.emitted if e.frame[12:14] == b"\x08\x06"]   # no ARP request predicted


def test_sll_outgoing_frames_are_sent(tmp_path):
    from pathtrace.capture.frame import Frame
    rig = Rig(tmp_path, SERVER.format(output="ACCEPT"))
    l3 = build.udp_packet("203.0.113.10", "192.0.2.53", 41003, 53, b"q")
    frame = Frame(index=0, ts=1.0, ifname=None, linktype=113, dst_mac=None, src_mac=bytes.fromhex("020000000010"),
                  pkt_type=4, vlan=(), ethertype=0x0800, payload=l3, wirelen=len(l3) + 16, caplen=len(l3) + 16,
                  error=None)
    rec = rig.replayer.process(frame)
    assert rec.agreement is not None and rec.verdict == "SENT" and rec.egress == "eth0"


def test_received_frames_keep_their_records(tmp_path):
    rig = Rig(tmp_path, SERVER.format(output="ACCEPT"))
    rec = rig.send("eth0", build.icmp_packet("198.51.100.23", "203.0.113.10", id=5, seq=1), src_mac=GW_MAC)
    assert rec.agreement is None and fns(rec)[0] == "veth_xmit"


def test_prediction_never_seen_on_a_captured_interface_counts_as_not_in_capture(tmp_path):
    rig = Rig(tmp_path, SERVER.format(output="ACCEPT"))
    rig.send("eth0", build.icmp_packet("198.51.100.23", "203.0.113.10", id=5, seq=1), src_mac=GW_MAC)
    _out(rig, "eth0", build.udp_packet("203.0.113.10", "192.0.2.53", 41000, 53, b"q"), GW_MAC)
    rig.replayer.agreement.finish()
    f = rig.replayer.agreement.figures()
    assert f["model_predictions_on_covered"] == 1 and f["model_predictions_not_in_capture"] == 1
    assert "1 are not" in rig.replayer.agreement.summary_text()


def test_sent_frame_from_an_ethernet_pcap_is_told_by_source_mac(tmp_path):
    rig = Rig(tmp_path, SERVER.format(output="ACCEPT"))
    l3 = build.udp_packet("203.0.113.10", "192.0.2.53", 41000, 53, b"q")
    sent = rig.replayer.direction.sent_by_host(eth_frame(build.ether(GW_MAC, HOST_MAC, 0x0800, l3), 1.0))
    received = rig.replayer.direction.sent_by_host(eth_frame(build.ether(HOST_MAC, GW_MAC, 0x0800, l3), 1.0))
    assert sent is not None and sent.name == "eth0" and received is None


def test_forward_from_an_interface_the_capture_does_not_cover_is_replayed_as_its_arrival(tmp_path):
    rig = Rig(tmp_path, ROUTER)
    out = rig.send("lan0", build.icmp_packet("192.168.1.10", "192.0.2.99", id=12, seq=1, ttl=64),
                   src_mac="02:00:00:00:01:10")
    rig.send_frame(_forwarded_copy(out), 0.0001)          # wan0: the capture covers it too now
    # the reply as it left lan0 (de-masqueraded): the capture covers lan0 and wan0, no inference
    reply = build.icmp_packet("192.0.2.99", "192.168.1.10", type=0, id=12, seq=1, ttl=63)
    rec = _out(rig, "lan0", reply, "02:00:00:00:01:10")
    assert rec.agreement["predicted_by"] is None and "inferred_arrival" not in rec.agreement


def test_reply_forwarded_out_of_the_only_captured_interface_is_inferred_through_conntrack(tmp_path):
    rig = Rig(tmp_path, ROUTER)
    rig.send("lan0", build.icmp_packet("192.168.1.10", "192.0.2.99", id=13, seq=1, ttl=64),
             src_mac="02:00:00:00:01:10")                 # forwarded out of wan0, masqueraded
    reply = build.icmp_packet("192.0.2.99", "192.168.1.10", type=0, id=13, seq=1, ttl=63)
    rec = _out(rig, "lan0", reply, "02:00:00:00:01:10")
    assert rec.agreement["inferred_arrival"] == "wan0"
    assert rec.verdict == "SENT" and rec.agreement["predicted_by"] == rec.index
    ip_rcv = [s.detail for s in rec.path if s.fn == "ip_rcv_core"][0]
    assert ip_rcv["daddr"] == "198.51.100.2" and ip_rcv["ttl"] == 64      # before de-masquerading, one hop earlier
    assert rig.replayer.agreement.figures()["inferred_arrivals_forwarded"] == 1
