"""`pathtrace check` (expectations, conversations, captures, JUnit, coverage) and `pathtrace lint`."""
from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from pathtrace.cli import main
from pathtrace.commands.shadow import covers, shape
from pathtrace.packet import build
from pathtrace.packet.pcapwriter import PcapWriter

RULESETS = Path(__file__).resolve().parents[1] / "rulesets"

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
  net.ipv4.ip_forward: 1
routes:
  - default via 203.0.113.1 dev wan
neighbours:
  - 203.0.113.1 dev wan lladdr 52:54:00:00:00:01 reachable
  - 192.168.1.10 dev lan lladdr 52:54:00:00:00:10 reachable
sockets:
  - tcp 192.168.1.1:22
iptables: |
  *nat
  :PREROUTING ACCEPT [0:0]
  :INPUT ACCEPT [0:0]
  :OUTPUT ACCEPT [0:0]
  :POSTROUTING ACCEPT [0:0]
  -A POSTROUTING -o wan -j MASQUERADE
  COMMIT
  *filter
  :INPUT DROP [0:0]
  :FORWARD DROP [0:0]
  :OUTPUT ACCEPT [0:0]
  -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  -A INPUT -i lan -p tcp --dport 22 -j ACCEPT
  -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  -A FORWARD -i lan -o wan -j ACCEPT
  -A FORWARD -i lan -o wan -p tcp --dport 25 -j DROP
  COMMIT
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def check(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["check", *args], catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def router(tmp_path: Path) -> str:
    return write(tmp_path, "router.yaml", ROUTER)


# ---- the shipped examples ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["web-server", "home-router", "two-uplink"])
def test_shipped_expectations_pass(name: str) -> None:
    host, expect = RULESETS / f"{name}.yaml", RULESETS / f"{name}.expect.yaml"
    if not host.exists() or not expect.exists():
        pytest.skip(f"rulesets/{name}.yaml or its .expect.yaml is not there yet")
    code, out = check(str(host), str(expect))
    assert code == 0, out
    assert "0 failed" in out


# ---- pass / fail / exit codes -------------------------------------------------------------------

def test_passing_and_failing_cases(tmp_path: Path, router: str) -> None:
    expect = write(tmp_path, "e.yaml", """
        cases:
          - name: lan to internet is masqueraded
            packet: tcp 192.168.1.10:5000 198.51.100.7:443 --in lan
            expect: {verdict: FORWARD, egress: wan, rule: filter/FORWARD#2, nat: {src: 203.0.113.2}, ct: NEW}
          - name: wrong on purpose
            packet: {proto: tcp, src: "198.51.100.7:5000", dst: "203.0.113.2:22", in: wan}
            expect: {verdict: LOCAL_DELIVER, rule: 2}
        """)
    code, out = check(router, expect)
    assert code == 1
    assert "PASS  lan to internet is masqueraded" in out
    assert f"FAIL  wrong on purpose  ({expect}:5)" in out
    assert "- verdict: expected LOCAL_DELIVER" in out and "actual   DROP" in out
    assert "expected rule 2" in out and "filter/INPUT policy" in out
    assert "1 passed, 1 failed (2 cases)" in out


def test_nat_port_and_sends(tmp_path: Path, router: str) -> None:
    expect = write(tmp_path, "e.yaml", """
        cases:
          - name: masquerade keeps the port when it is free
            packet: udp 192.168.1.10:5353 198.51.100.7:53 --in lan
            expect: {nat: {src: "203.0.113.2:5353", dst: "198.51.100.7:53"}}
          - name: nat mismatch is reported
            packet: udp 192.168.1.10:5353 198.51.100.7:53 --in lan
            expect: {nat: {src: "203.0.113.99"}}
        """)
    code, out = check(router, expect)
    assert code == 1
    assert "PASS  masquerade keeps the port" in out
    assert "nat.src: expected 203.0.113.99" in out and "actual   203.0.113.2:5353" in out


def test_shadowed_rule_in_router_is_never_the_decider(tmp_path: Path, router: str) -> None:
    expect = write(tmp_path, "e.yaml", """
        cases:
          - name: smtp out is meant to be blocked
            packet: tcp 192.168.1.10:5000 198.51.100.7:25 --in lan
            expect: {verdict: DROP, rule: "--dport 25"}
        """)
    code, out = check(router, expect, "--coverage")
    assert code == 1
    assert "filter/FORWARD rule 3 (line 34) can never match: rule 2 (line 33) matches every packet it could" in out
    assert "never hit: filter/FORWARD rule 3" in out
    assert "never hit: filter/INPUT rule 2" in out


def test_conversation_steps_share_conntrack(tmp_path: Path, router: str) -> None:
    expect = write(tmp_path, "e.yaml", """
        cases:
          - name: reply traffic is established
            steps:
              - packet: tcp 192.168.1.10:5000 198.51.100.7:443 --in lan --flags S
                expect: {verdict: FORWARD, ct: NEW}
              - packet: tcp 198.51.100.7:443 203.0.113.2:5000 --in wan --flags SA
                expect: {verdict: FORWARD, egress: lan, ct: ESTABLISHED, rule: filter/FORWARD#1,
                         nat: {dst: "192.168.1.10:5000"}}
              - packet: tcp 192.168.1.10:5000 198.51.100.7:443 --in lan --flags A
                expect: {verdict: FORWARD, ct: ESTABLISHED}
          - name: a fresh case does not see the previous case's connection
            packet: tcp 198.51.100.7:443 203.0.113.2:5000 --in wan --flags SA
            expect: {verdict: DROP}
        """)
    code, out = check(router, expect)
    assert code == 0, out


def test_capture_case(tmp_path: Path, router: str) -> None:
    pcap = tmp_path / "c.pcap"
    with PcapWriter(str(pcap)) as w:
        syn = build.tcp_packet("192.168.1.10", "198.51.100.7", 5000, 443, "S", seq=10)
        synack = build.tcp_packet("198.51.100.7", "203.0.113.2", 443, 5000, "SA", seq=99, ack=11)
        w.write(build.ether("52:54:00:00:02:01", "52:54:00:00:00:10", 0x0800, syn), 1.0)
        w.write(build.ether("52:54:00:00:01:01", "52:54:00:00:00:01", 0x0800, synack), 1.1)
    expect = write(tmp_path, "e.yaml", """
        cases:
          - name: from a capture
            pcap: c.pcap
            steps:
              - index: 0
                expect: {verdict: FORWARD, egress: wan}
              - index: 1
                expect: {verdict: FORWARD, egress: lan, ct: ESTABLISHED}
          - name: index past the end
            pcap: c.pcap
            index: 7
            expect: {verdict: DROP}
        """)
    code, out = check(router, expect)
    assert code == 2        # bad input (issue 13), found before any case runs
    assert "e.yaml:9: index 7:" in out and "has 2 packets" in out
    code, out = check(router, write(tmp_path, "e2.yaml", open(expect).read().split("  - name: index")[0]))
    assert code == 0 and "PASS  from a capture" in out, out


def test_junit_report(tmp_path: Path, router: str) -> None:
    expect = write(tmp_path, "e.yaml", """
        cases:
          - name: ok
            packet: tcp 192.168.1.10:5000 192.168.1.1:22 --in lan
            expect: {verdict: LOCAL_DELIVER}
          - name: not ok
            packet: tcp 192.168.1.10:5000 192.168.1.1:23 --in lan
            expect: {verdict: LOCAL_DELIVER}
        """)
    report = tmp_path / "junit.xml"
    code, _ = check(router, expect, "--junit", str(report))
    assert code == 1
    suite = ET.parse(report).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0")
    cases = {tc.get("name"): tc for tc in suite.iter("testcase")}
    assert cases["ok"].find("failure") is None
    failure = cases["not ok"].find("failure")
    assert failure.get("message") == "verdict: expected LOCAL_DELIVER, got DROP"


@pytest.mark.parametrize("body,line,message", [
    ("cases:\n  - name: x\n    packet: tcp 1.2.3.4:1 5.6.7.8:2\n    expect: {verdit: DROP}\n", 4,
     "unknown key 'verdit'"),
    ("cases:\n  - name: x\n    packet: tcp 1.2.3.4:1 5.6.7.8\n    expect: {verdict: DROP}\n", 3, "needs a port"),
    ("cases:\n  - name: x\n    packet: tcp 1.2.3.4:1 5.6.7.8:2\n    expect: {verdict: DORP}\n", 4, "verdict 'DORP'"),
    ("cases:\n  - name: x\n    packet: tcp 1.2.3.4:1 5.6.7.8:2\n", 2, "missing expect"),
    ("cases:\n  - name: x\n    index: 3\n    expect: {verdict: DROP}\n", 3, "needs pcap"),
    ("cases:\n  - name: x\n    packet: [\n", 4, "invalid YAML"),
    ("cases: []\n", 1, "non-empty list"),
    ("cases:\n  - {name: a, packet: 'udp 1.1.1.1:1 2.2.2.2:2', expect: {verdict: DROP}}\n"
     "  - {name: a, packet: 'udp 1.1.1.1:1 2.2.2.2:2', expect: {verdict: DROP}}\n", 3, "duplicate case name"),
    ("cases:\n  - name: x\n    packet: udp 1.1.1.1:1 2.2.2.2:2\n    expect: {nat: {src: nowhere}}\n", 4,
     "ADDR or ADDR:PORT"),
])
def test_bad_expectations_name_file_and_line(tmp_path: Path, router: str, body: str, line: int, message: str) -> None:
    expect = tmp_path / "bad.yaml"
    expect.write_text(body)
    code, out = check(router, str(expect))
    assert code == 2
    assert f"{expect}:{line}:" in out and message in out


def test_bad_host_exits_2(tmp_path: Path) -> None:
    expect = write(tmp_path, "e.yaml", "cases:\n  - {packet: 'udp 1.1.1.1:1 2.2.2.2:2', expect: {verdict: DROP}}\n")
    assert check(str(tmp_path / "nope.yaml"), expect)[0] == 2


# ---- lint: shadowing and coverage ------------------------------------------------------------------

@pytest.mark.parametrize("earlier,later,covered", [
    ("-A INPUT -s 10.0.0.0/8 -j ACCEPT", "-A INPUT -s 10.1.0.0/16 -p tcp -m tcp --dport 22 -j DROP", True),
    ("-A INPUT -s 10.1.0.0/16 -j ACCEPT", "-A INPUT -s 10.0.0.0/8 -j DROP", False),
    ("-A INPUT -p tcp -m tcp --dport 20:30 -j ACCEPT", "-A INPUT -p tcp -m multiport --dports 22,25 -j DROP", True),
    ("-A INPUT -p tcp -m multiport --dports 22,80 -j ACCEPT", "-A INPUT -p tcp -m tcp --dport 443 -j DROP", False),
    ("-A INPUT -p tcp -j ACCEPT", "-A INPUT -p udp -j DROP", False),
    ("-A INPUT -i eth+ -j ACCEPT", "-A INPUT -i eth0 -p icmp -j DROP", True),
    ("-A INPUT -i eth0 -j ACCEPT", "-A INPUT -i eth+ -j DROP", False),
    ("-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
     "-A INPUT -m state --state ESTABLISHED -j DROP", True),
    ("-A INPUT -m conntrack --ctstate NEW -j ACCEPT", "-A INPUT -j DROP", False),
    ("-A INPUT ! -s 10.0.0.0/8 -j ACCEPT", "-A INPUT ! -s 10.0.0.0/8 -p tcp -j DROP", True),
    ("-A INPUT ! -s 10.0.0.0/8 -j ACCEPT", "-A INPUT -s 192.168.0.0/16 -j DROP", False),
    ("-A INPUT -p tcp -m tcp --syn -j ACCEPT", "-A INPUT -p tcp -m tcp --dport 22 -j DROP", False),
    ("-A INPUT -p tcp -m tcp --syn -j ACCEPT", "-A INPUT -p tcp -m tcp --syn -j DROP", True),
    ("-A INPUT -p icmp -m limit --limit 1/second -j ACCEPT", "-A INPUT -p icmp -m limit --limit 1/second -j DROP",
     False),
    ("-A INPUT -j ACCEPT", "-A INPUT -p tcp -m recent --name x --rcheck -j DROP", True),
])
def test_covers(earlier: str, later: str, covered: bool) -> None:
    assert covers(shape(earlier), shape(later)) is covered


LINTED = """
name: fw
interfaces:
  - name: eth0
    mac: 52:54:00:00:00:02
    addresses: [10.0.0.1/24]
iptables: |
  *filter
  :INPUT DROP [0:0]
  :FORWARD DROP [0:0]
  :OUTPUT ACCEPT [0:0]
  :unused - [0:0]
  -A INPUT -j LOG
  -A INPUT -s 10.0.0.0/8 -j ACCEPT
  -A INPUT -s 10.0.0.5/32 -p tcp --dport 22 -j DROP
  -A INPUT -p tcp --dport 22 -j ACCEPT
  -A unused -j DROP
  COMMIT
"""


def lint(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["lint", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_lint_reports_shadowed_rules_and_unreferenced_chains(tmp_path: Path) -> None:
    host = write(tmp_path, "fw.yaml", LINTED)
    code, out = lint(host, "--format", "json")
    assert code == 1
    findings = json.loads(out)
    assert [(s["chain"], s["rule"], s["by_rule"], s["line"], s["by_line"]) for s in findings["shadowed"]] == [
        ("INPUT", 3, 2, 14, 13)]
    assert [c["chain"] for c in findings["unreferenced"]] == ["unused"]


def test_lint_clean_host_exits_0_and_pcap_gives_coverage(tmp_path: Path) -> None:
    host = write(tmp_path, "fw.yaml", LINTED.replace("  -A INPUT -s 10.0.0.5/32 -p tcp --dport 22 -j DROP\n", "")
                 .replace("  :unused - [0:0]\n", "").replace("  -A unused -j DROP\n", ""))
    pcap = tmp_path / "one.pcap"
    with PcapWriter(str(pcap)) as w:
        w.write(build.ether("52:54:00:00:00:02", "02:00:00:00:00:01", 0x0800,
                            build.tcp_packet("10.0.0.7", "10.0.0.1", 1000, 80)), 1.0)
    code, out = lint(host, "--pcap", str(pcap))
    assert code == 0, out
    assert "no shadowed rules" in out
    assert "coverage: 2 of 3 rules hit" in out
    assert "never hit: filter/INPUT rule 3" in out


def test_a_failure_shows_the_whole_actual_outcome(tmp_path):
    """Whatever key failed, the failure says what happened: verdict, reason, the deciding rule."""
    from click.testing import CliRunner
    from pathtrace.cli import main
    root = Path(__file__).resolve().parent.parent
    exp = tmp_path / "e.yaml"
    exp.write_text("cases:\n  - name: wrong on purpose\n"
                   "    packet: tcp 198.51.100.7:40000 203.0.113.10:25 --in eth0\n"
                   "    expect: {ct: ESTABLISHED}\n")
    res = CliRunner().invoke(main, ["check", str(root / "rulesets/web-server.yaml"), str(exp)])
    assert res.exit_code == 1
    assert "outcome: DROP (NETFILTER_DROP), decided by filter/INPUT policy" in res.output


def test_lint_exit_codes(tmp_path):
    """lint: 0 without findings, 1 with shadowed rules or unreferenced chains, rules a capture never hit
    count only with --fail-on-unhit, 2 for bad input (pathtrace(1))."""
    from click.testing import CliRunner
    from pathtrace.cli import main
    root = Path(__file__).resolve().parent.parent
    host, cap = str(root / "rulesets/web-server.yaml"), str(root / "samples/web-server.pcap")
    run = lambda *a: CliRunner().invoke(main, ["lint", *a]).exit_code  # noqa: E731
    assert run(host) == 0 and run(host, "--pcap", cap) == 0
    assert run(host, "--pcap", cap, "--fail-on-unhit") == 1
    shadowed = tmp_path / "s.yaml"
    shadowed.write_text(Path(host).read_text().replace("-A INPUT -i lo -j ACCEPT",
                                                       "-A INPUT -j ACCEPT\n  -A INPUT -i lo -j ACCEPT"))
    assert run(str(shadowed)) == 1
    assert run(str(tmp_path / "missing.yaml")) == 2
