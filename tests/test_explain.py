"""`pathtrace explain`: phases, rule walk, verdict in kernel and plain words, hints, JSON, captures."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

from click.testing import CliRunner

from pathtrace.cli import main
from pathtrace.commands.reasons import PLAIN
from pathtrace.packet import build
from pathtrace.packet.pcapwriter import PcapWriter

SERVER = """
name: server
interfaces:
  - name: eth0
    mac: 52:54:00:12:34:56
    addresses: [203.0.113.10/24]
routes:
  - default via 203.0.113.1 dev eth0
neighbours:
  - 203.0.113.1 dev eth0 lladdr 52:54:00:00:00:01 reachable
sockets:
  - tcp 0.0.0.0:22
  - tcp 0.0.0.0:80
iptables: |
  *filter
  :INPUT DROP [0:0]
  :FORWARD DROP [0:0]
  :OUTPUT ACCEPT [0:0]
  -A INPUT -i lo -j ACCEPT
  -A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
  -A INPUT -p tcp --dport 23 -j DROP
  -A INPUT -p icmp -j ACCEPT
  -A INPUT -p tcp -m multiport --dports 22,80,8080 -m conntrack --ctstate NEW -j ACCEPT
  -A INPUT -j LOG --log-prefix "drop: "
  COMMIT
"""

ROUTER = """
name: router
interfaces:
  - name: wan
    mac: 52:54:00:00:01:01
    addresses: [203.0.113.2/24]
  - name: lan
    mac: 52:54:00:00:02:01
    addresses: [192.168.1.1/24]
sysctl:
  net.ipv4.ip_forward: {fwd}
  net.ipv4.conf.all.rp_filter: 1
routes:
  - default via 203.0.113.1 dev wan
neighbours:
  - 203.0.113.1 dev wan lladdr 52:54:00:00:00:01 reachable
  - 192.168.1.10 dev lan lladdr 52:54:00:00:00:10 reachable
iptables: |
  *nat
  :PREROUTING ACCEPT [0:0]
  :INPUT ACCEPT [0:0]
  :OUTPUT ACCEPT [0:0]
  :POSTROUTING ACCEPT [0:0]
  -A PREROUTING -i wan -p tcp --dport 8080 -j DNAT --to-destination 192.168.1.10:80
  -A POSTROUTING -o wan -j MASQUERADE
  COMMIT
  *filter
  :INPUT DROP [0:0]
  :FORWARD DROP [0:0]
  :OUTPUT ACCEPT [0:0]
  -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  -A FORWARD -i lan -o wan -j ACCEPT
  -A FORWARD -i wan -p tcp -d 192.168.1.10 --dport 80 -j ACCEPT
  COMMIT
"""


def host(tmp_path: Path, text: str, name: str = "host.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["explain", *args], catch_exceptions=False)
    return result.exit_code, result.output


def run_json(*args: str) -> dict:
    code, out = run(*args, "--format", "json")
    assert code == 0, out
    return json.loads(out)


def test_policy_drop_shows_every_rule_and_suggests_an_accept_rule(tmp_path: Path) -> None:
    code, out = run(host(tmp_path, SERVER), "tcp", "198.51.100.7:40000", "203.0.113.10:25", "--in", "eth0")
    assert code == 0
    names = [line.split(". ", 1)[1] for line in out.splitlines() if line[:1].isdigit()]
    assert names[:4] == ["driver rx", "ip_rcv checks", "PRE_ROUTING", "route lookup"]
    assert "LOCAL_IN" in names and names.index("LOCAL_IN") > names.index("route lookup")
    assert "INPUT#1: no match (-i lo: eth0)" in out
    assert "INPUT#3: no match" in out and "INPUT#5: no match" in out
    assert "INPUT#6: matched, target LOG continues" in out
    assert "INPUT policy -> DROP" in out
    assert "verdict: DROP (NETFILTER_DROP: a firewall rule or chain policy dropped it)" in out
    assert "decided by: filter/INPUT policy" in out
    assert "iptables -t filter -A INPUT -s 198.51.100.7 -p tcp --dport 25 -j ACCEPT" in out


def test_rule_drop_suggests_delete_or_insert_before(tmp_path: Path) -> None:
    x = run_json(host(tmp_path, SERVER), "tcp", "198.51.100.7:40000", "203.0.113.10:23", "--in", "eth0")
    assert x["decided_by"]["rule"] == 3 and x["reason"] == "NETFILTER_DROP"
    assert x["suggestions"] == ["rule 3 in chain INPUT (filter) dropped it: delete it (iptables -t filter -D INPUT 3)"
                                " or insert before it: iptables -t filter -I INPUT 3 -s 198.51.100.7 -p tcp "
                                "--dport 23 -j ACCEPT"]


def test_accepted_syn_shows_host_response_and_conntrack(tmp_path: Path) -> None:
    x = run_json(host(tmp_path, SERVER), "tcp", "198.51.100.7:40000", "203.0.113.10:22", "--in", "eth0")
    assert x["verdict"] == "LOCAL_DELIVER" and x["reason"] is None and x["suggestions"] == []
    assert x["decided_by"]["rule"] == 5 and x["conntrack"] == "NEW"
    assert any("TCP [S.]" in s for s in x["host_sent"])
    assert any(p["host_response"] for p in x["phases"]), "SYN-ACK steps belong under a host response"


def test_state_established_replays_the_handshake_first(tmp_path: Path) -> None:
    x = run_json(host(tmp_path, SERVER), "tcp", "198.51.100.7:40000", "203.0.113.10:22", "--in", "eth0",
                 "--state", "established")
    assert [s["verdict"] for s in x["setup"]] == ["LOCAL_DELIVER", "LOCAL_DELIVER"]
    assert x["conntrack"] == "ESTABLISHED" and x["decided_by"]["rule"] == 2
    assert x["warnings"] == []


def test_established_through_dnat_uses_the_translated_reply(tmp_path: Path) -> None:
    x = run_json(host(tmp_path, ROUTER.format(fwd=1)), "tcp", "198.51.100.7:40000", "203.0.113.2:8080",
                 "--in", "wan", "--state", "established")
    assert [s["verdict"] for s in x["setup"]] == ["FORWARD", "FORWARD", "FORWARD"]
    assert "192.168.1.10.80 > 198.51.100.7.40000" in x["setup"][1]["packet"]
    assert x["verdict"] == "FORWARD" and x["egress"] == "lan" and x["conntrack"] == "ESTABLISHED"
    assert x["after_nat"] == "tcp 198.51.100.7:40000 -> 192.168.1.10:80"
    assert x["decided_by"]["rule"] == 1


def test_forwarding_disabled(tmp_path: Path) -> None:
    x = run_json(host(tmp_path, ROUTER.format(fwd=0)), "tcp", "192.168.1.10:5000", "198.51.100.7:443",
                 "--in", "lan")
    assert x["verdict"] == "DROP" and x["reason"] == "IP_INADDRERRORS"
    assert x["reason_text"] == PLAIN["IP_INADDRERRORS"]
    assert any("net.ipv4.ip_forward=1" in s for s in x["suggestions"])


def test_rp_filter(tmp_path: Path) -> None:
    x = run_json(host(tmp_path, ROUTER.format(fwd=1)), "tcp", "10.9.9.9:5000", "198.51.100.7:443", "--in", "lan")
    assert x["reason"] == "IP_RPFILTER"
    assert x["suggestions"] == ["set net.ipv4.conf.lan.rp_filter=2 (loose) or add a route back: "
                                "ip route add 10.9.9.9/32 dev lan"]


def test_no_socket_without_firewall(tmp_path: Path) -> None:
    text = SERVER.split("iptables:")[0]
    code, out = run(host(tmp_path, text), "tcp", "198.51.100.7:40000", "203.0.113.10:2222")
    assert code == 0
    assert "verdict: DROP (NO_SOCKET:" in out
    assert "nothing listens on tcp/2222" in out
    assert "(in eth0)" in out, "ingress defaults to the interface of the route back to the source"


def test_ttl_expiry_while_forwarding(tmp_path: Path) -> None:
    x = run_json(host(tmp_path, ROUTER.format(fwd=1)), "icmp", "192.168.1.10", "198.51.100.7", "--in", "lan",
                 "--ttl", "1")
    assert x["reason"] == "IP_INHDR"
    assert any("ICMP time exceeded" in s for s in x["host_sent"])
    assert any("TTL" in s for s in x["suggestions"])


def test_pcap_index_replays_earlier_packets_silently(tmp_path: Path) -> None:
    h = host(tmp_path, SERVER)
    pcap = tmp_path / "ping.pcap"
    mac = "52:54:00:12:34:56"
    with PcapWriter(str(pcap)) as w:
        for n in range(2):
            ip = build.icmp_packet("198.51.100.7", "203.0.113.10", 8, id=7, seq=n)
            w.write(build.ether(mac, "02:00:00:00:00:01", 0x0800, ip), 1000.0 + n)
    first = run_json(h, "--pcap", str(pcap), "--index", "0")
    second = run_json(h, "--pcap", str(pcap), "--index", "1")
    assert (first["conntrack"], first["decided_by"]["rule"]) == ("NEW", 4)
    assert (second["conntrack"], second["decided_by"]["rule"]) == ("ESTABLISHED", 2)
    code, out = run(h, "--pcap", str(pcap), "--index", "5")
    assert code == 2 and "no packet with index 5" in out


def test_bad_input_exits_2(tmp_path: Path) -> None:
    h = host(tmp_path, SERVER)
    assert run(h, "tcp", "1.2.3.4:1", "5.6.7.8")[0] == 2
    code, out = run(h, "tcp", "1.2.3.4:1", "5.6.7.8:2", "--in", "eth9")
    assert code == 2 and "no such interface" in out
    assert run(h, "--pcap", "x.pcap")[0] == 2
    assert run(str(tmp_path / "missing.yaml"), "tcp", "1.2.3.4:1", "5.6.7.8:2")[0] == 2


def test_every_listed_reason_has_plain_words() -> None:
    listed = ("OTHERHOST IP_CSUM IP_INHDR PKT_TOO_SMALL IP_RPFILTER IP_LOCAL_SOURCE IP_INVALID_SOURCE "
              "IP_INVALID_DEST IP_LOCALNET IP_INADDRERRORS IP_INNOROUTES NO_SOCKET NETFILTER_DROP NEIGH_FAILED "
              "NEIGH_QUEUEFULL PKT_TOO_BIG TCP_CSUM UDP_CSUM ICMP_CSUM IP_NOPROTO TCP_FLAGS UNHANDLED_PROTO "
              "INVALID_PROTO NOT_SPECIFIED DUP_FRAG FRAG_TOO_FAR IP_OUTNOROUTES DEV_READY").split()
    assert [r for r in listed if r not in PLAIN] == []


def test_every_reason_the_model_emits_has_plain_words() -> None:
    import re
    root = Path(__file__).resolve().parents[1] / "pathtrace" / "net"
    emitted = set()
    for f in root.rglob("*.py"):
        emitted |= set(re.findall(r'kfree_skb_reason\([^,]+,\s*"([A-Z_]+)"', f.read_text()))
    assert emitted and sorted(emitted - set(PLAIN)) == []


def test_explain_lists_every_matched_rule_with_the_chain_stack(tmp_path) -> None:
    """Non-terminating rules on the way (jumps, MARK, LOG, RETURN) appear in order with the chain
    stack, not only the misses and the rule that decided."""
    from click.testing import CliRunner
    from pathtrace.cli import main
    host = tmp_path / "uc.yaml"
    host.write_text("""name: uc
interfaces:
  - {name: eth0, mac: "02:00:00:00:00:01", addresses: [10.0.0.1/24]}
sockets:
  - tcp 0.0.0.0:22
iptables: |
  *filter
  :INPUT ACCEPT [0:0]
  :FORWARD ACCEPT [0:0]
  :OUTPUT ACCEPT [0:0]
  :SSH - [0:0]
  :BLOCK - [0:0]
  -A INPUT -p tcp --dport 22 -j SSH
  -A INPUT -j ACCEPT
  -A SSH -s 10.0.0.0/24 -j RETURN
  -A SSH -j MARK --set-mark 5
  -A SSH -j BLOCK
  -A BLOCK -j LOG --log-prefix "blk "
  -A BLOCK -j DROP
  COMMIT
""")
    out = CliRunner().invoke(main, ["explain", str(host), "tcp", "192.0.2.5:40000", "10.0.0.1:22", "--in", "eth0"]).output
    want = ["INPUT#1: matched, jump to SSH [INPUT]", "SSH#1: no match", "SSH#2: matched, target MARK continues [INPUT > SSH]",
            "SSH#3: matched, jump to BLOCK [INPUT > SSH]", "BLOCK#1: matched, target LOG continues [INPUT > SSH > BLOCK]",
            "BLOCK#2: MATCH -> DROP"]
    positions = [out.index(w) for w in want]
    assert positions == sorted(positions)
    back = CliRunner().invoke(main, ["explain", str(host), "tcp", "10.0.0.5:40000", "10.0.0.1:22", "--in", "eth0"]).output
    assert "SSH#1: matched, RETURN to INPUT [INPUT > SSH]" in back and "INPUT#2: MATCH -> ACCEPT" in back
