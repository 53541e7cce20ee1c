"""The parts of `pathtrace verify` that need no root: frame summaries, kernel-side
classification, the drop-reason table, ruleset wrapping, the CLI's skip path."""
from __future__ import annotations

from click.testing import CliRunner

from pathtrace.packet import build as b
from pathtrace.trace import Emitted, PacketRecord
from pathtrace.verify.compare import differences, render, agreements
from pathtrace.verify.lab import restore_text
from pathtrace.verify.observe import Observation, classify_kernel, from_model, summarize_frame
from pathtrace.verify.tracing import reason_table

MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"


def test_summary_leaves_out_random_fields() -> None:
    one = b.ether(MAC_A, MAC_B, 0x0800, b.tcp_packet("10.0.0.1", "10.0.0.2", 22, 4000, "SA", seq=1, id=7))
    two = b.ether(MAC_A, MAC_B, 0x0800, b.tcp_packet("10.0.0.1", "10.0.0.2", 22, 4000, "SA", seq=99, id=8))
    assert summarize_frame("eth0", one) == summarize_frame("eth0", two)
    assert summarize_frame("eth0", one).endswith("TCP 22>4000 SA")


def test_summary_of_icmp_error_names_the_quote_and_mtu() -> None:
    inner = b.udp_packet("10.0.0.9", "10.1.0.9", 1, 2, bytes(10))
    err = b.icmp_error_packet("10.0.0.1", "10.0.0.9", 3, 4, inner, rest=1280)
    text = summarize_frame("eth0", b.ether(MAC_A, MAC_B, 0x0800, err))
    assert "ICMP 3/4 mtu=1280 quote=10.0.0.9>10.1.0.9 p=17" in text


def test_summary_of_arp_request() -> None:
    req = b.ether("ff:ff:ff:ff:ff:ff", MAC_A, 0x0806, b.arp("request", MAC_A, "10.0.0.1", "00:00:00:00:00:00", "10.0.0.7"))
    assert summarize_frame("eth1", req).endswith("ARP who-has 10.0.0.7 tell 10.0.0.1")


def test_classify_forward_by_id_and_ttl() -> None:
    pkt = b.udp_packet("10.0.0.9", "10.1.0.9", 1, 2, b"x", id=0x1234, ttl=64)
    fwd = b.ether(MAC_A, MAC_B, 0x0800, b.udp_packet("10.0.0.9", "10.1.0.9", 1, 2, b"x", id=0x1234, ttl=63))
    obs = classify_kernel(0x0800, pkt, set(), [("eth1", fwd)], [], [])
    assert (obs.verdict, obs.egress) == ("FORWARD", "eth1")


def test_classify_drop_wins_and_keeps_location() -> None:
    pkt = b.udp_packet("10.0.0.9", "10.0.0.1", 1, 2, b"x")
    obs = classify_kernel(0x0800, pkt, set(), [], [("NO_SOCKET", "__udp4_lib_rcv")], [])
    assert (obs.verdict, obs.reason, obs.location) == ("DROP", "NO_SOCKET", "__udp4_lib_rcv")


def test_classify_local_by_address_and_fragments_held() -> None:
    local = {bytes([10, 0, 0, 1])}
    whole = b.udp_packet("10.0.0.9", "10.0.0.1", 1, 2, b"x")
    frag = b.ipv4("10.0.0.9", "10.0.0.1", 17, b"12345678", mf=True)
    assert classify_kernel(0x0800, whole, local, [], [], []).verdict == "LOCAL_DELIVER"
    assert classify_kernel(0x0800, frag, local, [], [], []).verdict == "HELD"


def test_model_record_reduced_to_observation() -> None:
    frame = b.ether(MAC_A, MAC_B, 0x0800, b.udp_packet("10.0.0.9", "10.1.0.9", 1, 2, b"x", ttl=63))
    rec = PacketRecord(0, 0.0, "eth0", "", "QUEUED", None, "eth1", [], [Emitted("eth1", frame, "", "forwarded")], [])
    obs = from_model(rec)
    assert obs.verdict == "HELD" and obs.egress is None and len(obs.emitted) == 1


def test_differences_and_render() -> None:
    k = Observation("DROP", "IP_RPFILTER", emitted=["a"])
    m = Observation("DROP", "NOT_SPECIFIED", emitted=["b"])
    assert differences(k, m) == ["reason", "emitted"]
    text = render(agreements(["pkt"], [k], [m]))
    assert "agreement: 0/1 packets (0.0%)" in text and "kernel only: a" in text and "model only:  b" in text


def test_reason_table_from_print_fmt() -> None:
    fmt = 'print fmt: "reason: %s", __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" })'
    assert reason_table(fmt) == {2: "NOT_SPECIFIED", 3: "NO_SOCKET"}


def test_restore_text_wraps_iptables_S() -> None:
    text = restore_text("-P INPUT DROP\n-N CHK\n-A INPUT -j CHK\n")
    assert text == "*filter\n:INPUT DROP [0:0]\n:CHK - [0:0]\n-A INPUT -j CHK\nCOMMIT\n"
    save = "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"
    assert restore_text(save) == save


def test_cli_skips_without_the_kernel_side(tmp_path, monkeypatch) -> None:
    from pathtrace.cli import main
    from pathtrace.packet.pcapwriter import PcapWriter
    from pathtrace.verify import runner
    from pathtrace.verify.netns import Unavailable

    host = tmp_path / "h.yaml"
    host.write_text(f"interfaces:\n  - {{name: eth0, mac: \"{MAC_A}\", addresses: [10.0.0.1/24]}}\n")
    pcap = tmp_path / "c.pcap"
    with PcapWriter(str(pcap)) as w:
        w.write(b.ether(MAC_A, MAC_B, 0x0800, b.icmp_packet("10.0.0.9", "10.0.0.1")), 1.0)

    def unavailable(*_a, **_k):
        raise Unavailable("verify needs root")
    monkeypatch.setattr(runner, "run_kernel", unavailable)
    result = CliRunner().invoke(main, ["verify", str(host), str(pcap)])
    assert result.exit_code == 77
    assert "skipped: verify needs root" in result.output


def test_consumption_decides_local_delivery_when_traced() -> None:
    """With the BPF tracer, a packet to a local address with no other effect is delivered only if the
    host consumed it (icmp_rcv, a listener's SYN); a DNAT'd packet waiting for ARP is held."""
    from pathtrace.packet import build as b
    from pathtrace.verify.observe import classify_kernel
    pkt = b.udp_packet("10.0.0.2", "10.0.0.1", 40000, 53, b"x")
    local = {bytes([10, 0, 0, 1])}
    assert classify_kernel(0x0800, pkt, local, [], [], [], None).verdict == "HELD"
    assert classify_kernel(0x0800, pkt, local, [], [], [], "icmp_rcv").verdict == "LOCAL_DELIVER"
    assert classify_kernel(0x0800, pkt, local, [], [], [], "ip_do_fragment").verdict == "HELD"
    assert classify_kernel(0x0800, pkt, local, [], [], [], False).verdict == "LOCAL_DELIVER"   # untraced
    assert classify_kernel(0x0800, pkt, set(), [], [], [], False).verdict == "HELD"


def test_a_forwarded_syn_is_not_answered_by_another_connections_synack() -> None:
    """The SYN-ACK a local listener retransmits for an earlier SYN (same ports, from the host's own
    address) leaves while a forwarded SYN is observed: it does not make that SYN delivered."""
    from pathtrace.packet import build as b
    from pathtrace.verify.observe import classify_kernel
    fwd = b.tcp_packet("10.3.0.2", "172.16.5.5", 40000, 22, "S", seq=1000)
    sa = b.ether("02:00:00:00:02:0a", "02:00:00:00:02:01", 0x0800,
                 b.tcp_packet("10.3.0.1", "10.3.0.2", 22, 40000, "SA", seq=5, ack=1001))
    local = {bytes([10, 3, 0, 1])}
    assert classify_kernel(0x0800, fwd, local, [("eth2", sa)], [], [], None).verdict == "HELD"
    to_me = b.tcp_packet("10.3.0.2", "10.3.0.1", 40000, 22, "S", seq=1000)
    assert classify_kernel(0x0800, to_me, local, [("eth2", sa)], [], [], None).verdict == "LOCAL_DELIVER"
