"""pathtrace snapshot: route text from ip -j (offline), and a round trip in a throw-away namespace —
snapshot a configured namespace, then `pathtrace verify` replays packets through a lab built from the
snapshot and through the model, which must agree (live: root and PATHTRACE_LIVE=1 or CI=true)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from helpers import live_skip_reason
from pathtrace.commands.snapshot import route_text


def test_route_text_from_ip_json() -> None:
    assert route_text({"dst": "default", "gateway": "10.0.0.1", "dev": "eth0", "protocol": "dhcp",
                       "prefsrc": "10.0.0.5", "metric": 100, "flags": []}) == \
        "default via 10.0.0.1 dev eth0 src 10.0.0.5 metric 100 proto dhcp"
    assert route_text({"type": "blackhole", "dst": "192.0.2.0/24", "protocol": "boot", "flags": []}) == \
        "blackhole 192.0.2.0/24"
    assert route_text({"dst": "172.16.0.0/24", "gateway": "10.1.0.2", "dev": "eth0", "table": "100",
                       "flags": ["onlink"], "metrics": [{"mtu": 1300, "advmss": 1000}]}, locked=True) == \
        "172.16.0.0/24 via 10.1.0.2 dev eth0 table 100 onlink mtu lock 1300 advmss 1000"
    assert route_text({"dst": "10.9.0.0/16", "nexthops": [{"gateway": "10.1.0.2", "dev": "eth0", "weight": 2},
                                                         {"gateway": "10.2.0.2", "dev": "eth1"}]}) == \
        "10.9.0.0/16 nexthop via 10.1.0.2 dev eth0 weight 2 nexthop via 10.2.0.2 dev eth1 weight 1"


SETUP = [
    "link add eth0 type veth peer name eth1", "link set eth0 up", "link set eth1 up",
    "addr add 10.1.0.1/24 dev eth0", "addr add 10.1.0.5/24 dev eth0", "addr add 10.2.0.1/24 dev eth1",
    "route add 172.16.0.0/24 via 10.1.0.2 metric 5 mtu lock 1300", "route add default via 10.2.0.2 table 100",
    "rule add fwmark 0x1 lookup 100 pref 100", "neigh add 10.1.0.2 dev eth0 lladdr 02:00:00:00:00:0a nud permanent",
    "neigh add 10.2.0.2 dev eth1 lladdr 02:00:00:00:01:0a nud permanent",
]
LISTEN = ("import socket, time\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
          "s.bind(('0.0.0.0', 22)); s.listen()\nu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
          "u.bind(('0.0.0.0', 53))\ntime.sleep(60)\n")


def test_snapshot_round_trip_agrees_with_the_kernel(tmp_path) -> None:
    why = live_skip_reason()
    if why:
        pytest.skip(why)
    import dpkt
    from pathtrace.packet import build as b
    ns = f"ptsnap{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    listener = None
    try:
        for cmd in SETUP:
            subprocess.run(["ip", "-n", ns, *cmd.split()], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1",
                        "net.ipv4.conf.all.rp_filter=2"], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "23",
                        "-j", "REJECT", "--reject-with", "tcp-reset"], check=True)
        listener = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", LISTEN])
        time.sleep(0.5)
        host = tmp_path / "snap.yaml"
        run = subprocess.run([sys.executable, "-m", "pathtrace.cli", "snapshot", "--netns", ns, "-o", str(host)],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        text = host.read_text()
        for part in ("10.1.0.5/24", "mtu lock 1300", "fwmark 0x1 lookup 100", "tcp 0.0.0.0:22", "udp 0.0.0.0:53",
                     "--dport 23", "net.ipv4.conf.all.rp_filter: 2"):
            assert part in text, part
    finally:
        if listener is not None:
            listener.kill()
        subprocess.run(["ip", "netns", "del", ns], check=False)
    macs = dict(re.findall(r'name: "(eth\d)", mac: "([0-9a-f:]+)"', text))
    cap = tmp_path / "c.pcap"
    with open(cap, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        pkts = [("eth0", b.tcp_packet("10.1.0.2", "10.1.0.1", 40000, 22, "S", seq=1, window=64240)),
                ("eth0", b.tcp_packet("10.1.0.2", "10.1.0.5", 40001, 23, "S", seq=1, window=64240)),
                ("eth0", b.udp_packet("10.1.0.2", "10.1.0.1", 40002, 54, b"x")),
                ("eth0", b.icmp_packet("10.1.0.2", "10.1.0.5", id=7, seq=1)),
                ("eth1", b.udp_packet("10.2.0.2", "172.16.0.9", 40003, 5000, b"x")),
                ("eth1", b.udp_packet("10.2.0.2", "172.16.0.9", 40004, 5000, bytes(1400)))]
        for n, (dev, pkt) in enumerate(pkts):
            w.writepkt(b.ether(macs[dev], "02:00:00:00:00:0a" if dev == "eth0" else "02:00:00:00:01:0a",
                               0x0800, pkt), ts=1.0 + n * 0.2)
    out = subprocess.run([sys.executable, "-m", "pathtrace.cli", "verify", str(host), str(cap)],
                         capture_output=True, text=True)
    assert "agreement: 6/6 packets" in out.stdout, out.stdout + out.stderr
