"""replay --conntrack: the table in conntrack -L form, compared live with conntrack -L in a lab built
from the same host after the same frames (timeouts and use counts aside: the kernel's run on wall
time), and the JSON form (offline).  Live: root, conntrack installed, PATHTRACE_LIVE=1 or CI=true."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import live_skip_reason
from pathtrace.cli import main
from pathtrace.packet import build as b

ROOT = Path(__file__).resolve().parent.parent
HOST = """name: ct
interfaces:
  - {name: lan0, mac: "02:00:00:00:00:01", addresses: [192.168.1.1/24]}
  - {name: wan0, mac: "02:00:00:00:01:01", addresses: [192.0.2.10/24]}
sysctl:
  net.ipv4.ip_forward: 1
routes:
  - default via 192.0.2.1 dev wan0
neighbours:
  - 192.168.1.10 dev lan0 lladdr 02:00:00:00:00:0a permanent
  - 192.0.2.1 dev wan0 lladdr 02:00:00:00:01:0a permanent
sockets:
  - tcp 0.0.0.0:22
iptables: |
  *nat
  :PREROUTING ACCEPT [0:0]
  :INPUT ACCEPT [0:0]
  :OUTPUT ACCEPT [0:0]
  :POSTROUTING ACCEPT [0:0]
  -A POSTROUTING -o wan0 -j MASQUERADE
  COMMIT
"""


def _frames() -> list[tuple[str, bytes]]:
    lan = lambda p: ("lan0", b.ether("02:00:00:00:00:01", "02:00:00:00:00:0a", 0x0800, p))  # noqa: E731
    return [lan(b.udp_packet("192.168.1.10", "203.0.113.53", 53124, 53, b"q")),
            lan(b.icmp_packet("192.168.1.10", "192.168.1.1", id=77, seq=1)),
            lan(b.tcp_packet("192.168.1.10", "192.168.1.1", 40000, 22, "S", seq=1000, window=64240)),
            lan(b.tcp_packet("192.168.1.10", "198.51.100.80", 40112, 443, "S", seq=5, window=64240))]


def _write(tmp_path: Path) -> tuple[Path, Path]:
    import dpkt
    host, cap = tmp_path / "h.yaml", tmp_path / "c.pcap"
    host.write_text(HOST)
    with open(cap, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for n, (_, frame) in enumerate(_frames()):
            w.writepkt(frame, ts=1.0 + 0.1 * n)
    return host, cap


def _norm(line: str) -> str:
    """An entry without its timeout and use count."""
    line = re.sub(r"^(\w+)\s+(\d+)\s+\d+ ", r"\1 \2 ", line.strip())
    return re.sub(r" use=\d+", "", line)


def test_json_form(tmp_path) -> None:
    host, cap = _write(tmp_path)
    res = CliRunner().invoke(main, ["replay", str(host), str(cap), "--format", "none", "--conntrack", "json"])
    entries = [json.loads(ln)["conntrack"] for ln in res.output.splitlines() if ln.startswith("{")]
    udp = next(e for e in entries if e["proto"] == "udp")
    assert udp["reply"] == {"src": "203.0.113.53", "dst": "192.0.2.10", "sport": 53, "dport": 53124}
    assert "SRC_NAT" in udp["status"] and "SEEN_REPLY" not in udp["status"]
    assert {e["proto"] for e in entries} == {"udp", "icmp", "tcp"} and len(entries) == 4


def test_matches_conntrack_L_in_a_lab(tmp_path) -> None:
    why = live_skip_reason() or (None if shutil.which("conntrack") else "conntrack is not installed")
    if why:
        pytest.skip(why)
    from pathtrace.host.loader import load_host
    from pathtrace.verify.lab import Lab
    host, cap = _write(tmp_path)
    res = CliRunner().invoke(main, ["replay", str(host), str(cap), "--format", "none", "--conntrack"])
    model = sorted(_norm(ln) for ln in res.stdout.splitlines() if ln.strip() and not ln.startswith("conntrack v"))
    with Lab(load_host(str(host)), tag=f"ptct{os.getpid()}") as lab:
        for dev, frame in _frames():
            lab.inject(dev, frame)
            time.sleep(0.1)
        lab.drain(0.2)
        out = subprocess.run(["ip", "netns", "exec", lab.host_ns, "conntrack", "-L"], capture_output=True, text=True)
    kernel = sorted(_norm(ln) for ln in out.stdout.splitlines() if ln.strip())
    assert model == kernel
