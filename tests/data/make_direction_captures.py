#!/usr/bin/env python3
"""Record the direction test captures (tests/test_capture_direction.py) on a real kernel.

    sudo python tests/data/make_direction_captures.py [OUTDIR]     # default: this directory

Three network namespaces: a client (10.1.0.2) and a server (10.2.0.2) on either side of a
router, the host of tests/data/direction-host.yaml (eth0 10.1.0.1/24 ifindex 7, eth1
10.2.0.1/24 ifindex 9, fixed MACs, IPv6 off so no neighbour discovery noise).  Traffic:
the client pings the router and sends UDP to a closed port of it (answered by the router's
own stack), pings the server and sends UDP to a closed port there (forwarded both ways),
opens a TCP connection to a listener on the router; the router pings the server itself.

Captured on the router at the same time, one file per tool:
  eth0.pcap             tcpdump -i eth0                 Ethernet, no direction
  any_sll2.pcap         tcpdump -i any                  LINUX_SLL2: packet type + ifindex
  any_sll.pcap          tcpdump -i any -y LINUX_SLL     LINUX_SLL: packet type, no ifindex
  dumpcap.pcapng        dumpcap -i eth0 -i eth1         Ethernet per interface, no epb_flags,
                                                        blocks in per-interface batches
  dumpcap_any.pcapng    dumpcap -i any                  LINUX_SLL (v1) in pcapng, if_name "any"
Measured with tcpdump 4.99.3 / libpcap 1.10.3 and dumpcap (Wireshark) 4.0.17 on Linux 6.x:
neither dumpcap nor tshark writes epb_flags on Linux (no EPB carries any option), so
their multi-interface pcapng files give no direction, and their blocks come in
per-interface batches (not in time order).  `tshark -i any` / `dumpcap -i any` write
LINUX_SLL v1 (packet type, no ifindex) inside pcapng; `tcpdump -i any` writes LINUX_SLL2
(packet type and the capturing host's ifindex).  The cooked header's address is the
sender's MAC for received frames and the host's own interface MAC for OUTGOING ones.
Writers that do set epb_flags include xdpdump (xdp-tools) and Windows' Npcap-based dumpcap.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

TAG = f"ptd{os.getpid() % 100000}"
NS_H, NS_C, NS_S = f"{TAG}h", f"{TAG}c", f"{TAG}s"
MAC = {"eth0": "02:00:00:00:01:01", "eth1": "02:00:00:00:02:01", "c0": "02:00:00:00:01:02",
       "s0": "02:00:00:00:02:02"}
IFINDEX = {"eth0": 7, "eth1": 9}
FILTER = "not host 127.0.0.1"

# Run in the client namespace: pings (raw ICMP sockets: no ping binary needed), UDP, TCP.
CLIENT = r"""
import socket, struct, sys, time
def csum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
def ping(dst, n):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); s.settimeout(1)
    for i in range(n):
        body = struct.pack("!BBHHH", 8, 0, 0, 0x5054, i) + b"pathtrace direction"
        s.sendto(body[:2] + struct.pack("!H", csum(body)) + body[4:], (dst, 0))
        try: s.recv(2000)
        except socket.timeout: pass
        time.sleep(0.05)
def udp(dst):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"hello", (dst, 9)); time.sleep(0.1)
for dst in sys.argv[1:-1]:
    ping(dst, 2)
    udp(dst)
t = socket.create_connection((sys.argv[-1], 8080), timeout=2)
t.sendall(b"GET / HTTP/1.0\r\n\r\n"); t.recv(100); t.close(); time.sleep(0.2)
"""
LISTENER = r"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.1.0.1", 8080)); s.listen(1); s.settimeout(10)
c, _ = s.accept(); c.recv(100); c.sendall(b"HTTP/1.0 200 OK\r\n\r\n"); c.close()
"""
ROUTER_PING = CLIENT.split("for dst")[0] + "ping('10.2.0.2', 2)\n"


def sh(*args: str) -> None:
    subprocess.run(args, check=True)


def in_ns(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *args]


def setup() -> None:
    for ns in (NS_H, NS_C, NS_S):
        sh("ip", "netns", "add", ns)
        sh(*in_ns(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"))
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    for peer, ns, dev in (("c0", NS_C, "eth0"), ("s0", NS_S, "eth1")):
        sh("ip", "-n", NS_H, "link", "add", "name", dev, "index", str(IFINDEX[dev]), "address", MAC[dev],
           "type", "veth", "peer", "name", peer, "address", MAC[peer], "netns", ns)
    sh("ip", "-n", NS_H, "addr", "add", "10.1.0.1/24", "dev", "eth0")
    sh("ip", "-n", NS_H, "addr", "add", "10.2.0.1/24", "dev", "eth1")
    sh("ip", "-n", NS_C, "addr", "add", "10.1.0.2/24", "dev", "c0")
    sh("ip", "-n", NS_S, "addr", "add", "10.2.0.2/24", "dev", "s0")
    for ns, dev in ((NS_H, "eth0"), (NS_H, "eth1"), (NS_C, "c0"), (NS_S, "s0")):
        sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", NS_C, "route", "add", "default", "via", "10.1.0.1")
    sh("ip", "-n", NS_S, "route", "add", "default", "via", "10.2.0.1")
    sh(*in_ns(NS_H, "sysctl", "-qw", "net.ipv4.ip_forward=1"))


def teardown() -> None:
    for ns in (NS_H, NS_C, NS_S):
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


def record(out: Path) -> None:
    tmp = out / f".{TAG}"
    tmp.mkdir()
    tools = {
        "eth0.pcap": ["tcpdump", "-Z", "root", "-U", "-i", "eth0", "-w", "{}", FILTER],
        "any_sll2.pcap": ["tcpdump", "-Z", "root", "-U", "-i", "any", "-w", "{}", FILTER],
        "any_sll.pcap": ["tcpdump", "-Z", "root", "-U", "-i", "any", "-y", "LINUX_SLL", "-w", "{}", FILTER],
        "dumpcap.pcapng": ["dumpcap", "-q", "-i", "eth0", "-i", "eth1", "-f", FILTER, "-w", "{}"],
        "dumpcap_any.pcapng": ["dumpcap", "-q", "-i", "any", "-f", FILTER, "-w", "{}"],
    }
    procs = []
    for name, argv in tools.items():
        argv = [str(tmp / name) if a == "{}" else a for a in argv]
        procs.append(subprocess.Popen(in_ns(NS_H, *argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        time.sleep(2.0)                                  # every capture handle open
        listener = subprocess.Popen(in_ns(NS_H, sys.executable, "-c", LISTENER))
        time.sleep(0.3)
        sh(*in_ns(NS_C, sys.executable, "-c", CLIENT, "10.1.0.1", "10.2.0.2", "10.1.0.1"))
        listener.wait(timeout=10)
        sh(*in_ns(NS_H, sys.executable, "-c", ROUTER_PING))
        time.sleep(1.0)
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(timeout=10)
    for name in tools:
        shutil.copyfile(tmp / name, out / name)
        print(f"{out / name}: {(out / name).stat().st_size} bytes")
    shutil.rmtree(tmp)


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent)
    if os.geteuid() != 0:
        print("make_direction_captures.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    try:
        setup()
        record(out)
    finally:
        teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
