"""`pathtrace diff OLD NEW CAPTURE`: grouped changes, rule identity by meaning, NAT changes, ARP records, exit codes."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

from click.testing import CliRunner

from pathtrace.cli import main
from pathtrace.commands.diff import covering_prefix
from pathtrace.lib.inet import aton
from pathtrace.packet import build
from pathtrace.packet.pcapwriter import PcapWriter

BASE = """
name: web
interfaces:
  - name: eth0
    mac: 52:54:00:12:34:56
    addresses: [203.0.113.2/24]
routes:
  - default via 203.0.113.1 dev eth0
neighbours:
  - 203.0.113.1 dev eth0 lladdr 52:54:00:00:00:01 reachable
sockets:
  - tcp 0.0.0.0:443
  - tcp 0.0.0.0:22
iptables: |
  *filter
  :INPUT DROP [0:0]
  :FORWARD DROP [0:0]
  :OUTPUT ACCEPT [0:0]
{extra}  -A INPUT -p tcp --dport 443 -j ACCEPT
  -A INPUT -p tcp --dport 22 -j ACCEPT
  COMMIT
"""
MAC = "52:54:00:12:34:56"


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def capture(tmp_path: Path, packets: list[tuple[str, str, int, int]], mac: str = MAC) -> str:
    path = tmp_path / "c.pcap"
    with PcapWriter(str(path)) as w:
        for n, (src, dst, sport, dport) in enumerate(packets):
            ip = build.tcp_packet(src, dst, sport, dport, "S")
            w.write(build.ether(mac, "02:00:00:00:00:01", 0x0800, ip), 1000.0 + n)
    return str(path)


def diff(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["diff", *args], catch_exceptions=False)
    return result.exit_code, result.output


TRAFFIC = [("10.1.1.1", "203.0.113.2", 1000, 443), ("10.2.2.2", "203.0.113.2", 1001, 443),
           ("10.3.3.3", "203.0.113.2", 1002, 443), ("198.51.100.7", "203.0.113.2", 1003, 443),
           ("198.51.100.8", "203.0.113.2", 1004, 22), ("10.1.1.1", "203.0.113.2", 1005, 22)]


def test_inserted_drop_rule_is_reported_per_flow(tmp_path: Path) -> None:
    old = write(tmp_path, "old.yaml", BASE.format(extra=""))
    new = write(tmp_path, "new.yaml", BASE.format(extra="  -A INPUT -s 10.0.0.0/8 -p tcp --dport 443 -j DROP\n"))
    code, out = diff(old, new, capture(tmp_path, TRAFFIC))
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == ("3 packets of tcp 10.0.0.0/14 → 203.0.113.2:443 now DROP (NETFILTER_DROP) by "
                        "filter/INPUT rule 1 (was LOCAL_DELIVER by filter/INPUT rule 1)")
    # the ACCEPT rules moved down one place but decide the same packets: not a change
    assert not any("198.51.100" in line for line in lines)
    assert "3 of 6 packets changed in 1 flow group" in out
    assert "verdict, reason, rule" in out      # the summary table's changed column


def test_identical_hosts_exit_0(tmp_path: Path) -> None:
    old = write(tmp_path, "old.yaml", BASE.format(extra=""))
    code, out = diff(old, old, capture(tmp_path, TRAFFIC))
    assert code == 0
    assert "0 of 6 packets changed" in out


def test_jsonl_groups(tmp_path: Path) -> None:
    old = write(tmp_path, "old.yaml", BASE.format(extra=""))
    new = write(tmp_path, "new.yaml", BASE.format(extra="").replace("  -A INPUT -p tcp --dport 22 -j ACCEPT\n", ""))
    code, out = diff(old, new, capture(tmp_path, TRAFFIC), "--format", "jsonl")
    assert code == 1
    groups = [json.loads(line) for line in out.splitlines()]
    assert len(groups) == 1            # one destination, one old/new outcome: one group
    g = groups[0]
    assert g["dst"] == "203.0.113.2:22" and g["packets"] == 2 and g["indices"] == [4, 5]
    assert g["src"] == "0.0.0.0/0"     # 10.1.1.1 and 198.51.100.8 share no leading bit
    assert g["old"]["verdict"] == "LOCAL_DELIVER" and g["new"]["verdict"] == "DROP"
    assert g["new"]["rule"] == "filter/INPUT policy"
    assert g["old"]["text"] == "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT"
    assert set(g["changed"]) == {"verdict", "reason", "rule"}


ROUTER = """
name: router
interfaces:
  - name: wan
    mac: 52:54:00:00:01:01
    addresses: [203.0.113.2/24, 203.0.113.3/24]
  - name: lan
    mac: 52:54:00:00:02:01
    addresses: [192.168.1.1/24]
sysctl:
  net.ipv4.ip_forward: 1
routes:
  - default via 203.0.113.1 dev wan
neighbours:
  - 203.0.113.1 dev wan lladdr 52:54:00:00:00:01 reachable
iptables: |
  *nat
  :PREROUTING ACCEPT [0:0]
  :INPUT ACCEPT [0:0]
  :OUTPUT ACCEPT [0:0]
  :POSTROUTING ACCEPT [0:0]
  -A POSTROUTING -o wan -j {nat}
  COMMIT
"""


def test_nat_change_is_reported(tmp_path: Path) -> None:
    old = write(tmp_path, "old.yaml", ROUTER.format(nat="MASQUERADE"))
    new = write(tmp_path, "new.yaml", ROUTER.format(nat="SNAT --to-source 203.0.113.3"))
    pcap = capture(tmp_path, [("192.168.1.10", "198.51.100.7", 5000, 443)], mac="52:54:00:00:02:01")
    code, out = diff(old, new, pcap)
    assert code == 1
    assert "as tcp 203.0.113.3:5000 -> 198.51.100.7:443 (was FORWARD out wan" in out
    assert "as tcp 203.0.113.2:5000 -> 198.51.100.7:443)" in out


def test_bad_input_exits_2(tmp_path: Path) -> None:
    old = write(tmp_path, "old.yaml", BASE.format(extra=""))
    assert diff(old, str(tmp_path / "missing.yaml"), capture(tmp_path, TRAFFIC))[0] == 2
    assert diff(old, old, str(tmp_path / "missing.pcap"))[0] == 2
    assert diff(old, old, capture(tmp_path, TRAFFIC), "--in", "eth7")[0] == 2


def test_covering_prefix() -> None:
    assert covering_prefix([aton("10.1.1.1")]) == "10.1.1.1"
    assert covering_prefix([aton("10.0.0.1"), aton("10.0.0.2")]) == "10.0.0.0/30"
    assert covering_prefix([aton("10.0.0.1"), aton("11.0.0.1")]) == "10.0.0.0/7"
    assert covering_prefix([aton("1.0.0.0"), aton("200.0.0.0")]) == "0.0.0.0/0"


def test_rules_that_differ_only_in_option_order_are_the_same(tmp_path: Path) -> None:
    """iptables-save may reorder options and people write them in any order: a rule with the same
    matches, columns and target is the same rule; a real change of meaning is still reported."""
    old = write(tmp_path, "old.yaml", BASE.format(extra="  -A INPUT -s 10.0.0.0/8 -p tcp --dport 443 -j ACCEPT\n"))
    same = write(tmp_path, "same.yaml", BASE.format(extra="  -A INPUT -p tcp -s 10.0.0.0/8 --dport 443 -j ACCEPT\n"))
    other = write(tmp_path, "other.yaml", BASE.format(extra="  -A INPUT -p tcp -s 10.0.0.0/9 --dport 443 -j ACCEPT\n"))
    cap = capture(tmp_path, TRAFFIC)
    assert diff(old, same, cap)[0] == 0
    code, out = diff(old, other, cap)
    assert code == 1 and "10.0.0.0/9" not in out.splitlines()[-1]


def test_arp_records_are_named(tmp_path: Path) -> None:
    old = write(tmp_path, "old.yaml", BASE.format(extra=""))
    new = write(tmp_path, "new.yaml", BASE.format(extra="").replace("addresses: [203.0.113.2/24]",
                                                                    "addresses: [203.0.113.2/24]\n    state: down"))
    path = tmp_path / "arp.pcap"
    with PcapWriter(str(path)) as w:
        w.write(build.ether("ff:ff:ff:ff:ff:ff", "02:00:00:00:00:01", 0x0806,
                            build.arp("request", "02:00:00:00:00:01", "203.0.113.1", "00:00:00:00:00:00",
                                      "203.0.113.2")), 1000.0)
    code, out = diff(old, new, str(path))
    assert code == 1 and "of arp who-has 203.0.113.1 → 203.0.113.2" in out and "non-IPv4" not in out
