"""Benchmark: generate a capture of N packets over F flows and time `pathtrace replay --summary`.

    python bench/bench_replay.py [--packets 1000000] [--flows 2000] [--host rulesets/home-router.yaml]

Reports packets/s and peak RSS of the replay (in a child process, so the generator's
memory does not count), and dpkt's bare pcap read loop on the same file for the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

DEFAULT_HOST = """
name: bench-router
interfaces:
  - name: eth0
    driver: ixgbe
    mac: 02:00:00:00:00:01
    addresses: [198.51.100.1/24]
  - name: eth1
    driver: ixgbe
    mac: 02:00:00:00:01:01
    addresses: [192.168.1.1/24]
sysctl:
  net.ipv4.ip_forward: 1
routes:
  - default via 198.51.100.254 dev eth0
neighbours:
  - 198.51.100.254 dev eth0 lladdr 02:00:00:00:00:fe permanent
"""


def generate(path: Path, packets: int, flows: int) -> None:
    """LAN clients talking to WAN servers: each flow a TCP SYN, then data segments."""
    sys.path.insert(0, str(ROOT))
    from pathtrace.packet import build
    from pathtrace.packet.pcapwriter import PcapWriter
    lan_mac, router_lan = "02:11:11:11:11:11", "02:00:00:00:01:01"
    templates = []
    for f in range(flows):
        src = f"192.168.1.{2 + f % 250}"
        dst = f"203.0.113.{1 + (f // 250) % 250}"
        sport = 20000 + f
        syn = build.ether(router_lan, lan_mac, 0x0800, build.tcp_packet(src, dst, sport, 443, "S", seq=1))
        data = build.ether(router_lan, lan_mac, 0x0800,
                           build.tcp_packet(src, dst, sport, 443, "PA", seq=2, ack=1, payload=b"x" * 200))
        templates.append((syn, data))
    t = 1_700_000_000.0
    with PcapWriter(str(path)) as w:
        for i in range(packets):
            syn, data = templates[i % flows]
            w.write(syn if i < flows else data, t)
            t += 0.00001


def run_child(host: Path, capture: Path) -> dict:
    code = f"""
import resource, time, sys, json
sys.argv = ['pathtrace', 'replay', {str(host)!r}, {str(capture)!r}, '--summary', '--no-progress']
from pathtrace.cli import main
start = time.perf_counter()
try:
    main(standalone_mode=False)
except SystemExit:
    pass
elapsed = time.perf_counter() - start
print(json.dumps({{'elapsed': elapsed, 'maxrss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}), file=sys.stderr)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stderr.strip().splitlines()[-1]) | {"summary": proc.stdout}


def dpkt_read_loop(capture: Path) -> float:
    import dpkt
    start = time.perf_counter()
    n = 0
    with open(capture, "rb") as fh:
        for _ts, _buf in dpkt.pcap.Reader(fh):
            n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--flows", type=int, default=2000)
    ap.add_argument("--host", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "out")
    args = ap.parse_args()
    args.out.mkdir(exist_ok=True)
    capture = args.out / f"bench-{args.packets}-{args.flows}.pcap"
    if not capture.exists():
        t0 = time.perf_counter()
        generate(capture, args.packets, args.flows)
        print(f"generated {capture} in {time.perf_counter() - t0:.1f}s")
    host = args.host
    if host is None:
        host = args.out / "bench-router.yaml"
        host.write_text(DEFAULT_HOST)
    result = run_child(host, capture)
    pps = args.packets / result["elapsed"]
    bare = dpkt_read_loop(capture)
    print(result["summary"])
    print(f"replay --summary: {args.packets} packets in {result['elapsed']:.2f}s = {pps:,.0f} packets/s")
    print(f"peak RSS: {result['maxrss_kb'] / 1024:.1f} MiB")
    print(f"dpkt bare read loop: {bare:,.0f} packets/s; replay/dpkt ratio {pps / bare:.3f}")


if __name__ == "__main__":
    main()
