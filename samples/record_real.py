#!/usr/bin/env python3
"""Record real captures of real hosts in throw-away network namespaces.

    sudo python samples/record_real.py --out samples/            # everything
    sudo python samples/record_real.py --out /tmp/x --only real-server

Needs root, iproute2, iptables (iptables-save), conntrack, tcpdump and dumpcap.
Every namespace it creates is deleted again (try/finally); no frame leaves them.

Five scenarios.  Each builds one *host* namespace from a host file (pathtrace's own
format, loaded with pathtrace.host.loader) and *stations* around it: peer namespaces
with fixed MACs and addresses, a bridge namespace when a link has several stations.
Listeners and clients are Python sockets opened inside the namespaces (setns), so the
script knows what every socket saw.  Traffic is captured inside the host namespace,
started before the first frame and stopped (SIGINT, flushed, counts checked) after
the last, three ways at once:

* ``tcpdump -i IFACE -w``: one plain Ethernet pcap per host interface;
* ``dumpcap -i IF1 -i IF2 -w``: all interfaces in one pcapng, kept as dumpcap wrote it
  (dumpcap writes per-interface batches, so the file is not in time order);
* ``tcpdump -i any -y LINUX_SLL2 -w``: cooked captures with interface index and
  packet type (OUTGOING for frames the host sent).

Written files:

* real-server: ``rulesets/real-server.yaml`` and ``samples/real-server-eth0.pcap``,
  ``-dumpcap.pcapng`` (eth0 and lo), ``-any.pcap``, ``real-server.truth.json``.  A host
  with TCP 22/80 and UDP 53 listeners behind a stateful ruleset (INPUT and OUTPUT policy
  DROP): clients connect, send, receive and close (both close orders), a REJECT
  --reject-with tcp-reset, a DROP, a closed-but-accepted port (the kernel's RST), UDP to
  a closed port (ICMP port unreachable), pings over a ``-m limit``, and the server's own
  outbound HTTP, DNS and one connection OUTPUT refuses (EPERM).
* real-router: ``rulesets/real-router.yaml`` and ``samples/real-router-lan0.pcap``,
  ``-wan0.pcap``, ``-dumpcap.pcapng``, ``-any.pcap``, ``real-router.truth.json``.  NAT
  router: MASQUERADE, DNAT wan:8080 -> 192.168.1.10:80, REJECT in FORWARD (tcp/25),
  stateful FORWARD, TTL-1 probes (UDP and ICMP), ARP, a SYN INPUT drops.
* bidirectional captures of the example hosts, rebuilt from rulesets/web-server.yaml,
  home-router.yaml and two-uplink.yaml with real peers that answer:
  ``samples/web-server-bidir.pcap`` (tcpdump -i eth0), ``home-router-bidir.pcapng`` and
  ``two-uplink-bidir.pcapng`` (dumpcap on all interfaces), each with a
  ``*-bidir.truth.json``.

Truth sidecars hold only what the script observed: each socket operation's result and
byte counts, ping replies and ICMP errors, ``iptables -L -v -x -n`` counters, ``conntrack
-L`` at the end, the capture tools' packet counts, the interfaces' ifindexes.

Decisions: IPv6 is disabled in every namespace (no RS/MLD/DAD chatter; pathtrace models
IPv4).  The host's offloads are left as veth has them, so TCP/UDP checksums of frames the
host sent are partial (CHECKSUM_PARTIAL) in its captures, as on a real host with a NIC that
offloads them.  The stations' transmit checksum offload is turned off (ETHTOOL_STXCSUM ioctl):
a veth would otherwise hand the host the peer's partial checksums, which frames from a real
wire never carry.  IPv4 sysctls
are reset to the kernel defaults first (a new namespace copies conf/all and conf/default
from the initial one), then set as the host file says.  Fixed MACs, addresses and ports
make the captures the same shape on every run; ISNs, IP IDs, timestamps and timings are
the kernel's and differ.
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pathtrace.host import loader  # noqa: E402
from pathtrace.host.model import HostConfig  # noqa: E402
from pathtrace.lib.inet import ntoa  # noqa: E402
from pathtrace.net.ipv4.devinet import CONF_DEFAULTS, GLOBAL_DEFAULTS, VECTOR_DEFAULTS  # noqa: E402
from pathtrace.verify.lab import restore_text  # noqa: E402
from pathtrace.verify.netns import in_netns, ns_exec, run, write_sysctl  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TOOLS = ("ip", "iptables-restore", "iptables-save", "iptables", "conntrack", "tcpdump", "dumpcap")
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17   # linux/ethtool.h: set TX hw csum enable
IP_RECVERR = 11       # linux/in.h; not exported by the socket module
SETTLE = 1.3          # seconds of quiet before the captures stop: more than libpcap's 1 s block timeout


class RecordError(RuntimeError):
    """A step of the recording failed; the message says which."""


# ---- namespaces ----------------------------------------------------------------------------

@dataclass
class Station:
    """A peer host on one link of the host: its own namespace, veth `eth0`, fixed MAC."""

    name: str
    mac: str
    address: str                                        # addr/plen on the link
    extra: list[str] = field(default_factory=list)      # more local addresses (on lo): "the internet"
    routes: list[str] = field(default_factory=list)


@dataclass
class World:
    """The namespaces of one scenario; `close` deletes every one of them."""

    tag: str
    namespaces: list[str] = field(default_factory=list)

    def ns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def add(self, name: str) -> str:
        ns = self.ns(name)
        run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        for scope in ("all", "default"):
            write_sysctl(ns, f"net.ipv6.conf.{scope}.disable_ipv6", 1, check=False)
        for key, value in GLOBAL_DEFAULTS.items():
            write_sysctl(ns, f"net.ipv4.{key}", value, check=False)
        for key, values in VECTOR_DEFAULTS.items():     # a new namespace copies the machine's (memory-sized)
            ns_exec(ns, ["sh", "-c", f"echo {' '.join(map(str, values))} > /proc/sys/net/ipv4/{key}"], check=False)
        for scope in ("all", "default"):
            for key, (value, _) in CONF_DEFAULTS.items():
                write_sysctl(ns, f"net.ipv4.conf.{scope}.{key}", value, check=False)
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        return ns

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            if os.path.exists(f"/run/netns/{ns}"):
                run(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()


def build_host(world: World, host: HostConfig, links: dict[str, list[Station]]) -> str:
    """The host namespace from a HostConfig, each interface's far end in its stations' namespaces."""
    hns = world.add("host")
    for index, iface in enumerate(i for i in host.interfaces if i.name != "lo"):
        stations = links.get(iface.name, [])
        if len(stations) == 1:
            st = stations[0]
            far_ns = world.add(st.name)
            run(["ip", "-n", hns, "link", "add", iface.name, "address", iface.mac.hex(":"), "mtu", str(iface.mtu),
                 "type", "veth", "peer", "name", "eth0", "address", st.mac, "netns", far_ns])
            _configure_station(far_ns, st)
        else:   # several stations (or none): a switch namespace with a bridge
            sw = world.add(f"sw{index}")
            run(["ip", "-n", sw, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0",
                 "mcast_snooping", "0"])
            run(["ip", "-n", hns, "link", "add", iface.name, "address", iface.mac.hex(":"), "mtu", str(iface.mtu),
                 "type", "veth", "peer", "name", "uplink", "netns", sw])
            run(["ip", "-n", sw, "link", "set", "uplink", "master", "br0", "up"])
            for n, st in enumerate(stations):
                far_ns = world.add(st.name)
                run(["ip", "-n", sw, "link", "add", f"p{n}", "type", "veth", "peer", "name", "eth0",
                     "address", st.mac, "netns", far_ns])
                run(["ip", "-n", sw, "link", "set", f"p{n}", "master", "br0", "up"])
                _configure_station(far_ns, st)
            run(["ip", "-n", sw, "link", "set", "br0", "up"])
        for addr, plen in iface.addresses:
            brd = ["broadcast", "+"] if plen < 31 else []
            run(["ip", "-n", hns, "addr", "add", f"{ntoa(addr)}/{plen}", *brd, "dev", iface.name])
        if iface.up:
            run(["ip", "-n", hns, "link", "set", iface.name, "up"])
    for key, value in host.sysctl.items():
        write_sysctl(hns, key, value)
    for route in host.routes:
        run(["ip", "-n", hns, "route", "add", *route.text.split()])
    for rule in host.rules:
        run(["ip", "-n", hns, "rule", "add", *rule.text.split()])
    for n in host.neighbours:
        lladdr = ["lladdr", n.lladdr.hex(":")] if n.lladdr is not None else []
        run(["ip", "-n", hns, "neigh", "replace", ntoa(n.addr), "dev", n.dev, *lladdr, "nud", n.state])
    if host.iptables_text is not None:
        ns_exec(hns, ["iptables-restore"], stdin=restore_text(host.iptables_text))
    return hns


def tx_checksum_off(ns: str, ifname: str) -> None:
    """`ethtool -K IFNAME tx off` through the ETHTOOL_STXCSUM ioctl (ethtool may not be installed).

    For the stations only: a veth hands its peer the sender's CHECKSUM_PARTIAL skbs, so without
    this every frame the host receives would carry a partial checksum, which no frame from a
    real wire does.  The host's own interfaces keep their offloads (outgoing checksums partial)."""
    value = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_STXCSUM, 0), 8)
    ifreq = struct.pack("16sP16x", ifname.encode(), ctypes.addressof(value))
    with in_netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
    finally:
        s.close()


def _configure_station(ns: str, st: Station) -> None:
    tx_checksum_off(ns, "eth0")
    run(["ip", "-n", ns, "addr", "add", st.address, "dev", "eth0"])
    run(["ip", "-n", ns, "link", "set", "eth0", "up"])
    for extra in st.extra:
        run(["ip", "-n", ns, "addr", "add", extra, "dev", "lo"])
    for route in st.routes:
        run(["ip", "-n", ns, "route", "add", *route.split()])


def ifindexes(ns: str) -> dict[str, int]:
    out = json.loads(run(["ip", "-n", ns, "-j", "link", "show"]).stdout)
    return {link["ifname"]: link["ifindex"] for link in out}


# ---- captures ------------------------------------------------------------------------------

@dataclass
class Capture:
    """One capture tool running inside a namespace, writing `path`."""

    label: str
    argv: list[str]
    path: str
    proc: subprocess.Popen | None = None
    counts: dict[str, int] = field(default_factory=dict)
    stderr: str = ""

    def start(self, ns: str) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, *self.argv], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        ready = ("listening on", "Capturing on")
        deadline = time.monotonic() + 10
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()     # raw reads: a buffered readline would hide a second line from select
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                chunk = os.read(fd, 4096).decode(errors="replace")
                self.stderr += chunk
                if any(word in self.stderr for word in ready):
                    return
                if not chunk:
                    break
            if self.proc.poll() is not None:
                break
        raise RecordError(f"{self.label}: capture did not start: {self.stderr.strip()}")

    def interrupt(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.interrupt()
        try:
            _, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.stderr += err or ""
        self.proc = None
        text = self.stderr
        for key, pattern in (("captured", r"(\d+) packets captured"), ("received", r"(\d+) packets received by filter"),
                             ("dropped", r"(\d+) packets dropped by kernel"),
                             ("captured", r"Packets captured: (\d+)")):
            m = re.search(pattern, text)
            if m:
                self.counts[key] = int(m.group(1))
        for m in re.finditer(r"Packets received/dropped on interface '[^']*': (\d+)/(\d+)", text):
            self.counts["dropped"] = self.counts.get("dropped", 0) + int(m.group(2))
        if "captured" not in self.counts:
            raise RecordError(f"{self.label}: no packet count from the capture tool: {text.strip()}")
        if self.counts.get("dropped", 0):
            raise RecordError(f"{self.label}: the capture dropped {self.counts['dropped']} packets: {text.strip()}")


def tcpdump(label: str, iface: str, path: str, any_: bool = False) -> Capture:
    link = ["-y", "LINUX_SLL2"] if any_ else []
    # No --immediate-mode: it makes libpcap use TPACKET_V2 with one 256 KiB frame per packet (-s 0), so the
    # default 2 MiB ring holds 8 packets and a burst is dropped.  -U still writes every packet as it comes.
    return Capture(label, ["tcpdump", "-Z", "root", "-n", "-s", "0", "-B", "8192", "-U", "-i", iface, *link,
                           "-w", path], path)


def dumpcap(label: str, ifaces: list[str], path: str) -> Capture:
    args = [a for i in ifaces for a in ("-i", i)]
    return Capture(label, ["dumpcap", "-q", "-s", "0", *args, "-w", path], path)


# ---- sockets -------------------------------------------------------------------------------

HTTP_BODY = b"<html><body><h1>It works</h1><p>" + b"pathtrace " * 24 + b"</p></body></html>\n"
SSH_BANNER = b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n"


def http_response(close: bool) -> bytes:
    head = (f"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\nContent-Length: {len(HTTP_BODY)}\r\n"
            f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n").encode()
    return head + HTTP_BODY


def dns_query(qid: int, name: str) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", 1, 1)


def dns_answer(query: bytes, addr: str = "192.0.2.80") -> bytes:
    qid = struct.unpack("!H", query[:2])[0]
    question = query[12:]
    answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 300, 4) + socket.inet_aton(addr)
    return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + answer


@dataclass
class Servers:
    """Listeners served by threads: what each accepted, read and wrote is logged."""

    log: list[dict[str, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.log.append(entry)

    def _bound(self, ns: str, kind: int, addr: str, port: int, dev: str | None) -> socket.socket:
        """A socket created in `ns`, bound to addr:port (and to `dev`), polled every 0.1 s."""
        with in_netns(ns):
            s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dev:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
        s.bind((addr, port))
        s.settimeout(0.1)
        self.sockets.append(s)
        return s

    def tcp(self, ns: str, who: str, addr: str, port: int, dev: str | None = None) -> None:
        s = self._bound(ns, socket.SOCK_STREAM, addr, port, dev)
        s.listen(16)
        self._spawn(self._accept_loop, s, who, port)

    def udp(self, ns: str, who: str, addr: str, port: int, dev: str | None = None) -> None:
        self._spawn(self._udp_loop, self._bound(ns, socket.SOCK_DGRAM, addr, port, dev), who, port)

    def _spawn(self, fn: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    def _accept_loop(self, s: socket.socket, who: str, port: int) -> None:
        while not self.stop.is_set():
            try:
                conn, peer = s.accept()
            except (socket.timeout, OSError):
                continue
            self._spawn(self._serve, conn, who, port, f"{peer[0]}:{peer[1]}")

    def _serve(self, conn: socket.socket, who: str, port: int, peer: str) -> None:
        """HTTP on 80/8080 (GET /close: the server closes first), a banner on 22, else one reply."""
        entry: dict[str, Any] = {"server": who, "proto": "tcp", "port": port, "peer": peer, "received": 0, "sent": 0}
        conn.settimeout(5)
        try:
            data = b""
            if port == 22:
                conn.sendall(SSH_BANNER)
                entry["sent"] += len(SSH_BANNER)
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    entry["closed_first"] = "client"
                    break
                data += chunk
                entry["received"] = len(data)
                if port in (80, 8080) and b"\r\n\r\n" in data:
                    close = data.startswith(b"GET /close")
                    reply = http_response(close)
                    conn.sendall(reply)
                    entry["sent"] += len(reply)
                    if close:
                        entry["closed_first"] = "server"
                        break
                    data = b""
                elif port not in (80, 8080, 22) or (port == 22 and data.endswith(b"\n")):
                    reply = b"\x16\x03\x03\x00\x7a" + bytes(122) if port != 22 else b"ok\r\n"
                    conn.sendall(reply)
                    entry["sent"] += len(reply)
                    data = b""
        except OSError as exc:
            entry["error"] = type(exc).__name__
        finally:
            conn.close()
            self._record(entry)

    def _udp_loop(self, s: socket.socket, who: str, port: int) -> None:
        while not self.stop.is_set():
            try:
                data, peer = s.recvfrom(65536)
            except (socket.timeout, OSError):
                continue
            entry = {"server": who, "proto": "udp", "port": port, "peer": f"{peer[0]}:{peer[1]}",
                     "received": len(data), "sent": 0}
            if port == 53 and len(data) > 12:
                reply = dns_answer(data)
                s.sendto(reply, peer)
                entry["sent"] = len(reply)
            self._record(entry)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=6)
        for s in self.sockets:
            s.close()


def _client(ns: str, kind: int, src: str, sport: int, dst: str, dport: int, timeout: float,
            ttl: int | None) -> tuple[socket.socket, dict[str, Any]]:
    """A station's client socket bound to src:sport (and its IP_TTL), and the log entry it fills."""
    with in_netns(ns):
        s = socket.socket(socket.AF_INET, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if ttl is not None:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    s.bind((src, sport))
    s.settimeout(timeout)
    out: dict[str, Any] = {"op": "tcp" if kind == socket.SOCK_STREAM else "udp", "ns": ns.split("-", 1)[1],
                           "src": f"{src}:{sport}", "dst": f"{dst}:{dport}", "sent": 0, "received": 0}
    return s, out


def tcp_client(ns: str, src: str, sport: int, dst: str, dport: int, payload: bytes, *, banner: bool = False,
               timeout: float = 3.0, ttl: int | None = None) -> dict[str, Any]:
    """connect, (read a banner), send `payload`, read the reply, close as the request says.

    GET /close asks the server to close first: the client reads to EOF, then closes."""
    s, out = _client(ns, socket.SOCK_STREAM, src, sport, dst, dport, timeout, ttl)
    try:
        s.connect((dst, dport))
    except socket.timeout:
        out["result"] = "timeout"
        s.close()
        return out
    except OSError as exc:
        out["result"] = errno_name(exc)
        s.close()
        return out
    out["result"] = "connected"
    try:
        if banner:
            out["received"] += len(s.recv(4096))
        s.sendall(payload)
        out["sent"] = len(payload)
        server_first = payload.startswith(b"GET /close")
        out["closed_first"] = "server" if server_first else "client"
        want = len(http_response(server_first)) if payload.startswith(b"GET") else (4 if banner else 127)
        got = 0
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += len(chunk)
            if not server_first and got >= want:
                break
        out["received"] += got
        time.sleep(0.05)
    except OSError as exc:
        out["error"] = errno_name(exc)
    s.close()
    return out


def udp_client(ns: str, src: str, sport: int, dst: str, dport: int, payload: bytes, *, timeout: float = 1.0,
               ttl: int | None = None) -> dict[str, Any]:
    """One datagram on a connected socket (so an ICMP error shows as the socket's error)."""
    s, out = _client(ns, socket.SOCK_DGRAM, src, sport, dst, dport, timeout, ttl)
    s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    try:
        s.connect((dst, dport))
        out["sent"] = s.send(payload)
        out["received"] = len(s.recv(65536))
        out["result"] = "reply"
    except socket.timeout:
        out["result"] = "timeout"
    except OSError as exc:
        out["result"] = errno_name(exc)
    s.close()
    return out


def ping(ns: str, src: str, dst: str, ident: int, count: int, *, interval: float = 0.2, ttl: int = 64,
         wait: float = 0.5) -> dict[str, Any]:
    """Echo requests as Linux ping sends them (56 bytes: timeval + 0x10...), on a raw socket."""
    with in_netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    s.bind((src, 0))
    out: dict[str, Any] = {"op": "ping", "ns": ns.split("-", 1)[1], "src": src, "dst": dst, "id": ident,
                           "ttl": ttl, "sent": 0, "replies": [], "errors": []}
    deadline = 0.0
    for seq in range(1, count + 1):
        now = time.time()
        payload = struct.pack("<QQ", int(now), int((now % 1) * 1e6)) + bytes(range(0x10, 0x38))
        msg = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
        msg = msg[:2] + struct.pack("!H", inet_checksum(msg)) + msg[4:]
        s.sendto(msg, (dst, 0))
        out["sent"] += 1
        deadline = time.monotonic() + (interval if seq < count else wait)
        while (left := deadline - time.monotonic()) > 0:
            r, _, _ = select.select([s], [], [], left)
            if not r:
                break
            pkt, _ = s.recvfrom(65536)
            ihl = (pkt[0] & 0x0F) * 4
            itype, code = pkt[ihl], pkt[ihl + 1]
            if itype == 0 and struct.unpack("!H", pkt[ihl + 4:ihl + 6])[0] == ident:
                out["replies"].append(struct.unpack("!H", pkt[ihl + 6:ihl + 8])[0])
            elif itype in (3, 11) and len(pkt) >= ihl + 8 + 28:
                inner = pkt[ihl + 8:]
                iihl = (inner[0] & 0x0F) * 4
                if inner[9] == 1 and struct.unpack("!H", inner[iihl + 4:iihl + 6])[0] == ident:
                    from_addr = socket.inet_ntoa(pkt[12:16])
                    out["errors"].append({"type": itype, "code": code, "from": from_addr,
                                          "seq": struct.unpack("!H", inner[iihl + 6:iihl + 8])[0]})
    s.close()
    return out


def inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def errno_name(exc: OSError) -> str:
    import errno as _errno
    return _errno.errorcode.get(exc.errno or 0, type(exc).__name__)


# ---- observations --------------------------------------------------------------------------

def iptables_counters(ns: str) -> dict[str, Any]:
    """`iptables -t T -L -v -x -n` of every table the host has, as text and parsed per chain."""
    tables: dict[str, Any] = {}
    saved = ns_exec(ns, ["iptables-save"]).stdout
    for table in re.findall(r"^\*(\w+)", saved, re.M):
        text = ns_exec(ns, ["iptables", "-t", table, "-L", "-v", "-x", "-n"]).stdout
        chains: dict[str, Any] = {}
        current: dict[str, Any] | None = None
        for line in text.splitlines():
            m = re.match(r"Chain (\S+) \((?:policy (\w+) (\d+) packets, (\d+) bytes|\d+ references)\)", line)
            if m:
                current = {"policy": m.group(2), "policy_packets": int(m.group(3)) if m.group(3) else None,
                           "rules": []}
                chains[m.group(1)] = current
                continue
            parts = line.split()
            if current is not None and len(parts) >= 3 and parts[0].isdigit():
                current["rules"].append({"packets": int(parts[0]), "bytes": int(parts[1]), "target": parts[2],
                                         "text": " ".join(parts[2:])})
        tables[table] = {"chains": chains, "text": text}
    return tables


def conntrack_entries(ns: str) -> list[str]:
    proc = ns_exec(ns, ["conntrack", "-L"], check=False)
    return sorted(line.strip() for line in proc.stdout.splitlines() if line.strip())


def iptables_save(ns: str) -> str:
    """iptables-save as printed, minus the two comment lines with the date (they change every run)."""
    text = ns_exec(ns, ["iptables-save"]).stdout
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("# "))


# ---- host files ----------------------------------------------------------------------------

def write_host_file(path: str, header: str, spec: str, ruleset: str, indexes: dict[str, int]) -> None:
    """`spec` (host YAML without iptables) with each interface's real ifindex and the dumped ruleset.

    The ifindex goes in as a key when the loader knows it, else as a comment."""
    has_ifindex = "ifindex" in getattr(loader, "IFACE_KEYS", ())
    lines = []
    for line in spec.splitlines():
        lines.append(line)
        m = re.match(r"(\s*)- name: (\S+)", line)
        if m and m.group(2) in indexes:
            key = "ifindex" if has_ifindex else "# ifindex"
            lines.append(f"{m.group(1)}  {key}: {indexes[m.group(2)]}")
    body = "\n".join(lines).rstrip() + "\n"
    body += "# the ruleset as iptables-save printed it in the namespace (date comments left out)\n"
    body += "iptables: |\n" + "".join(f"  {line}\n" for line in ruleset.splitlines())
    with open(path, "w") as f:
        f.write(header + body)
    loader.load_host(path)   # must load: fail here, not in a user's hands


def load_spec(spec: str, ruleset: str | None) -> HostConfig:
    """A HostConfig from YAML text, via a temporary file (the loader reads files)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(spec)
        if ruleset:
            f.write("iptables: |\n" + "".join(f"  {ln}\n" for ln in ruleset.strip().splitlines()))
        name = f.name
    try:
        return loader.load_host(name)
    finally:
        os.unlink(name)


# ---- the scenario runner -------------------------------------------------------------------

@dataclass
class Scenario:
    """A host plus stations, the captures to take in its namespace, and the traffic to drive."""

    name: str
    host: HostConfig
    links: dict[str, list[Station]]
    captures: Callable[[str], list[Capture]]       # tmpdir -> captures
    traffic: Callable[["Run"], None]
    outputs: dict[str, str]                        # capture label -> output file name


@dataclass
class Run:
    """What traffic functions need: namespace names, the servers, and the event log."""

    world: World
    host_ns: str
    servers: Servers
    events: list[dict[str, Any]] = field(default_factory=list)

    def ns(self, name: str) -> str:
        return self.world.ns(name)

    def note(self, event: dict[str, Any], **extra: Any) -> dict[str, Any]:
        event.update(extra)
        event["t"] = round(time.time(), 6)
        self.events.append(event)
        return event


def record(sc: Scenario, out_dir: str, tag: str) -> dict[str, Any]:
    """Build, capture, drive, observe, tear down; returns the truth and writes the captures."""
    world = World(tag)
    servers = Servers()
    caps: list[Capture] = []
    tmp = tempfile.mkdtemp(prefix=f"{tag}-")
    try:
        host_ns = build_host(world, sc.host, sc.links)
        rn = Run(world, host_ns, servers)
        for sock in sc.host.sockets:
            who = "host"
            if sock.proto == "tcp":
                servers.tcp(host_ns, who, ntoa(sock.addr), sock.port, sock.dev)
            else:
                servers.udp(host_ns, who, ntoa(sock.addr), sock.port, sock.dev)
        caps = sc.captures(tmp)
        for cap in caps:
            cap.start(host_ns)
        time.sleep(0.2)
        started = time.time()
        sc.traffic(rn)
        time.sleep(SETTLE)
        for cap in caps:       # all at once, so that they all end with the same frame
            cap.interrupt()
        for cap in caps:
            cap.stop()
        truth: dict[str, Any] = {
            "scenario": sc.name,
            "started": round(started, 6),
            "interfaces": {i.name: {"mac": i.mac.hex(":"), "addresses": [f"{ntoa(a)}/{p}" for a, p in i.addresses],
                                    "ifindex": ifindexes(host_ns)[i.name]}
                           for i in sc.host.interfaces if i.name != "lo"},
            "captures": {},
            "events": rn.events,
            "host_sockets": [],
            "iptables": iptables_counters(host_ns),
            "conntrack": conntrack_entries(host_ns),
            "iptables_save": iptables_save(host_ns),
        }
        truth["ifindex_lo"] = ifindexes(host_ns)["lo"]
        servers.close()
        truth["host_sockets"] = sorted(servers.log, key=lambda e: (e["server"], e["port"], e["peer"]))
        for cap in caps:
            name = sc.outputs[cap.label]
            dest = os.path.join(out_dir, name)
            shutil.copyfile(cap.path, dest)
            os.chmod(dest, 0o644)
            truth["captures"][name] = {"tool": " ".join(cap.argv[:1] + [a for a in cap.argv[1:] if a != cap.path]),
                                       **cap.counts}
        return truth
    finally:
        for cap in caps:
            if cap.proc is not None:
                cap.proc.kill()
                cap.proc.wait()
        servers.close()
        world.close()
        shutil.rmtree(tmp, ignore_errors=True)


def write_truth(path: str, truth: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(truth, f, indent=1, sort_keys=False)
        f.write("\n")


# ---- real-server ---------------------------------------------------------------------------

SERVER_SPEC = """\
name: real-server
interfaces:
  - name: eth0
    driver: veth
    mac: 02:00:cb:00:71:0a
    addresses: [203.0.113.10/24]
    mtu: 1500
sysctl:
  net.ipv4.conf.all.rp_filter: 1
routes:
  - default via 203.0.113.1 dev eth0
sockets:
  - tcp 0.0.0.0:22
  - tcp 0.0.0.0:80
  - udp 0.0.0.0:53
"""

# Loaded with iptables-restore; the host file gets what iptables-save prints back.
SERVER_RULES = """\
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT DROP [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p icmp --icmp-type echo-request -m limit --limit 2/second --limit-burst 4 -j ACCEPT
-A INPUT -p tcp -m multiport --dports 22,80,8080 -m conntrack --ctstate NEW -j ACCEPT
-A INPUT -p tcp --dport 23 -j REJECT --reject-with tcp-reset
-A INPUT -p tcp --dport 3306 -j DROP
-A INPUT -p udp -m multiport --dports 53,161 -j ACCEPT
-A INPUT -j LOG --log-prefix "INPUT-DROP: "
-A OUTPUT -o lo -j ACCEPT
-A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A OUTPUT -p tcp -m multiport --dports 80,443 -j ACCEPT
-A OUTPUT -p udp --dport 53 -j ACCEPT
COMMIT
"""


def server_traffic(rn: Run) -> None:
    up, lan, me = rn.ns("upstream"), rn.ns("neighbour"), rn.host_ns
    srv = "203.0.113.10"
    rn.servers.tcp(up, "upstream", "192.0.2.80", 80)
    rn.servers.udp(up, "upstream", "192.0.2.53", 53)
    get = b"GET / HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
    close = b"GET /close HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
    # inbound conversations: client closes first, then server closes first; SSH from the on-link neighbour
    rn.note(tcp_client(up, "198.51.100.23", 40001, srv, 80, get), expect="accepted")
    rn.note(tcp_client(up, "198.51.100.23", 40002, srv, 80, close), expect="accepted")
    rn.note(tcp_client(lan, "203.0.113.50", 40003, srv, 22, b"SSH-2.0-OpenSSH_9.6\r\n", banner=True),
            expect="accepted")
    # refused by REJECT --reject-with tcp-reset, silently dropped, accepted to a closed port
    rn.note(tcp_client(up, "198.51.100.24", 40004, srv, 23, b"x"), expect="rejected")
    rn.note(tcp_client(up, "198.51.100.24", 40005, srv, 3306, b"x", timeout=1.2), expect="dropped")
    rn.note(tcp_client(up, "198.51.100.24", 40006, srv, 8080, b"x"), expect="closed port")
    # UDP: a closed port (the kernel's port unreachable), then the server's resolver
    rn.note(udp_client(up, "198.51.100.24", 40007, srv, 161, b"\x30\x26\x02\x01\x01" + bytes(35)),
            expect="closed port")
    rn.note(udp_client(up, "198.51.100.23", 40008, srv, 53, dns_query(0x5a01, "www.example.com")),
            expect="answered")
    # a ping session (one conntrack entry: only its first request meets -m limit), then single
    # pings with a new id each (each is NEW: -m limit 2/s burst 4 lets four through), one from the neighbour
    rn.note(ping(up, "198.51.100.23", srv, 0x1F2A, 4, interval=0.02), expect="ESTABLISHED after the first")
    rn.note(ping(lan, "203.0.113.50", srv, 0x1F2B, 1), expect="answered")
    for n in range(8):
        rn.note(ping(up, "198.51.100.23", srv, 0x2A00 + n, 1, wait=0.02), expect="rate limited")
    # the server's own traffic: HTTP and DNS upstream, and SMTP that OUTPUT refuses (EPERM)
    rn.note(tcp_client(me, srv, 45001, "192.0.2.80", 80, get), expect="host's own")
    rn.note(udp_client(me, srv, 45002, "192.0.2.53", 53, dns_query(0x5a02, "deb.debian.org")), expect="host's own")
    rn.note(udp_client(me, srv, 45003, "192.0.2.53", 123, bytes(48)), expect="refused by OUTPUT")
    rn.note(tcp_client(me, srv, 45004, "192.0.2.25", 25, b"EHLO x\r\n", timeout=1.2), expect="refused by OUTPUT")


def server_scenario() -> Scenario:
    return Scenario(
        name="real-server",
        host=load_spec(SERVER_SPEC, SERVER_RULES),
        links={"eth0": [Station("upstream", "02:00:cb:00:71:01", "203.0.113.1/24",
                                ["198.51.100.23/32", "198.51.100.24/32", "192.0.2.53/32", "192.0.2.80/32",
                                 "192.0.2.25/32"]),
                        Station("neighbour", "02:00:cb:00:71:32", "203.0.113.50/24")]},
        captures=lambda tmp: [tcpdump("eth0", "eth0", f"{tmp}/eth0.pcap"),
                              dumpcap("dumpcap", ["eth0", "lo"], f"{tmp}/d.pcapng"),
                              tcpdump("any", "any", f"{tmp}/any.pcap", any_=True)],
        traffic=server_traffic,
        outputs={"eth0": "real-server-eth0.pcap", "dumpcap": "real-server-dumpcap.pcapng",
                 "any": "real-server-any.pcap"},
    )


# ---- real-router ---------------------------------------------------------------------------

ROUTER_SPEC = """\
name: real-router
interfaces:
  - name: lan0
    driver: veth
    mac: 02:00:c0:a8:01:01
    addresses: [192.168.1.1/24]
    mtu: 1500
  - name: wan0
    driver: veth
    mac: 02:00:c6:33:64:02
    addresses: [198.51.100.2/24]
    mtu: 1500
sysctl:
  net.ipv4.ip_forward: 1
  net.ipv4.conf.all.rp_filter: 1
routes:
  - default via 198.51.100.1 dev wan0
sockets: []
"""

ROUTER_RULES = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -i wan0 -p tcp --dport 8080 -j DNAT --to-destination 192.168.1.10:80
-A POSTROUTING -o wan0 -j MASQUERADE
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p icmp --icmp-type echo-request -j ACCEPT
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -m conntrack --ctstate INVALID -j DROP
-A FORWARD -i lan0 -o wan0 -p tcp --dport 25 -j REJECT --reject-with icmp-port-unreachable
-A FORWARD -i lan0 -o wan0 -j ACCEPT
-A FORWARD -i wan0 -o lan0 -m conntrack --ctstate DNAT -j ACCEPT
COMMIT
"""


def router_traffic(rn: Run) -> None:
    lan, inet = rn.ns("lan"), rn.ns("inet")
    pc, web = "192.168.1.10", "203.0.113.80"
    rn.servers.tcp(lan, "lan", pc, 80)
    rn.servers.tcp(inet, "inet", web, 80)
    rn.servers.tcp(inet, "inet", web, 443)
    rn.servers.udp(inet, "inet", "203.0.113.53", 53)
    get = b"GET / HTTP/1.1\r\nHost: www.example.net\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
    close = get.replace(b"GET /", b"GET /close", 1)
    rn.note(udp_client(lan, pc, 41004, "203.0.113.53", 53, dns_query(0x6b01, "www.example.net")),
            expect="forwarded, masqueraded")
    rn.note(tcp_client(lan, pc, 41001, web, 80, get), expect="forwarded, masqueraded")
    rn.note(tcp_client(lan, pc, 41002, web, 443, b"\x16\x03\x01\x00\xc8" + bytes(200)),
            expect="forwarded, masqueraded")
    rn.note(tcp_client(lan, pc, 41003, web, 80, close), expect="forwarded, masqueraded")
    rn.note(ping(lan, pc, web, 0x0C41, 3), expect="forwarded, masqueraded")
    rn.note(ping(lan, pc, "192.168.1.1", 0x0C42, 1), expect="answered by the router")
    rn.note(tcp_client(inet, "203.0.113.99", 42001, "198.51.100.2", 8080, get), expect="DNAT to 192.168.1.10:80")
    rn.note(tcp_client(lan, pc, 41005, web, 25, b"EHLO x\r\n"), expect="REJECT in FORWARD")
    rn.note(udp_client(lan, pc, 41006, web, 33434, bytes(32), ttl=1), expect="time exceeded")
    rn.note(ping(lan, pc, web, 0x0C43, 1, ttl=1), expect="time exceeded")
    rn.note(tcp_client(inet, "203.0.113.99", 42002, "198.51.100.2", 22, b"x", timeout=1.2), expect="dropped by INPUT")


def router_scenario() -> Scenario:
    return Scenario(
        name="real-router",
        host=load_spec(ROUTER_SPEC, ROUTER_RULES),
        links={"lan0": [Station("lan", "02:00:c0:a8:01:0a", "192.168.1.10/24", routes=["default via 192.168.1.1"])],
               "wan0": [Station("inet", "02:00:c6:33:64:01", "198.51.100.1/24",
                                ["203.0.113.80/32", "203.0.113.53/32", "203.0.113.99/32"])]},
        captures=lambda tmp: [tcpdump("lan0", "lan0", f"{tmp}/lan0.pcap"),
                              tcpdump("wan0", "wan0", f"{tmp}/wan0.pcap"),
                              dumpcap("dumpcap", ["lan0", "wan0"], f"{tmp}/d.pcapng"),
                              tcpdump("any", "any", f"{tmp}/any.pcap", any_=True)],
        traffic=router_traffic,
        outputs={"lan0": "real-router-lan0.pcap", "wan0": "real-router-wan0.pcap",
                 "dumpcap": "real-router-dumpcap.pcapng", "any": "real-router-any.pcap"},
    )


# ---- bidirectional captures of the example hosts -------------------------------------------

def example_host(name: str) -> HostConfig:
    return loader.load_host(os.path.join(REPO, "rulesets", f"{name}.yaml"))


def web_server_traffic(rn: Run) -> None:
    gw, me = rn.ns("gw"), "203.0.113.10"
    client = "198.51.100.23"
    get = b"GET / HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
    rn.note(tcp_client(gw, client, 51514, me, 80, get), expect="accepted")
    rn.note(ping(gw, client, me, 0x1F2A, 1), expect="answered")
    rn.note(udp_client(gw, client, 41873, me, 53, dns_query(0x6b1d, "www.example.com")), expect="dropped (LOG)")
    rn.note(tcp_client(gw, client, 38311, me, 25, b"EHLO x\r\n", timeout=1.2), expect="dropped (LOG)")
    rn.note(udp_client(gw, client, 47001, me, 33434, bytes(32), ttl=1), expect="REJECT port unreachable")
    rn.note(tcp_client(gw, client, 51515, me, 443, b"\x16\x03\x01\x00\xc8" + bytes(200)), expect="accepted")
    rn.note(tcp_client(gw, client, 51516, me, 22, b"SSH-2.0-OpenSSH_9.6\r\n", banner=True), expect="accepted")


def web_server_scenario() -> Scenario:
    return Scenario(
        name="web-server-bidir",
        host=example_host("web-server"),
        links={"eth0": [Station("gw", "52:54:00:00:00:01", "203.0.113.1/24", ["198.51.100.23/32"])]},
        captures=lambda tmp: [tcpdump("eth0", "eth0", f"{tmp}/eth0.pcap")],
        traffic=web_server_traffic,
        outputs={"eth0": "web-server-bidir.pcap"},
    )


def home_router_traffic(rn: Run) -> None:
    isp, laptop, nas = rn.ns("isp"), rn.ns("laptop"), rn.ns("nas")
    me_lap, site = "192.168.1.10", "198.51.100.80"
    rn.servers.udp(isp, "isp", "203.0.113.53", 53)
    rn.servers.tcp(isp, "isp", site, 443)
    rn.servers.tcp(nas, "nas", "192.168.1.20", 80)
    get = b"GET / HTTP/1.1\r\nHost: nas.home\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
    rn.note(udp_client(laptop, me_lap, 53124, "203.0.113.53", 53, dns_query(0x2f4e, "example.org")),
            expect="forwarded, masqueraded")
    rn.note(tcp_client(laptop, me_lap, 40112, site, 443, b"\x16\x03\x01\x00\xc8" + bytes(200)),
            expect="forwarded, masqueraded")
    rn.note(ping(laptop, me_lap, "192.168.1.1", 0x0C41, 1), expect="answered by the router")
    rn.note(udp_client(laptop, me_lap, 53125, "192.168.1.1", 53, dns_query(0x2f4f, "nas.home")),
            expect="the router's resolver")
    rn.note(tcp_client(laptop, me_lap, 40113, "192.168.1.1", 22, b"SSH-2.0-OpenSSH_9.6\r\n", banner=True),
            expect="the router's SSH")
    rn.note(tcp_client(isp, "198.51.100.99", 40001, "192.0.2.10", 8080, get), expect="DNAT to 192.168.1.20:80")
    rn.note(tcp_client(isp, "198.51.100.99", 52811, "192.0.2.10", 23, b"x", timeout=1.2), expect="dropped by INPUT")
    rn.note(udp_client(laptop, me_lap, 44123, site, 33434, bytes(32), ttl=1), expect="time exceeded")


def home_router_scenario() -> Scenario:
    return Scenario(
        name="home-router-bidir",
        host=example_host("home-router"),
        links={"eth0": [Station("isp", "00:00:5e:00:01:01", "192.0.2.1/24",
                                ["203.0.113.53/32", "198.51.100.80/32", "198.51.100.99/32"])],
               "eth1": [Station("laptop", "3c:22:fb:11:22:33", "192.168.1.10/24", routes=["default via 192.168.1.1"]),
                        Station("nas", "b8:27:eb:aa:bb:cc", "192.168.1.20/24", routes=["default via 192.168.1.1"])]},
        captures=lambda tmp: [dumpcap("dumpcap", ["eth0", "eth1"], f"{tmp}/d.pcapng")],
        traffic=home_router_traffic,
        outputs={"dumpcap": "home-router-bidir.pcapng"},
    )


def two_uplink_traffic(rn: Run) -> None:
    ispa, ispb, pc, guest = rn.ns("ispa"), rn.ns("ispb"), rn.ns("pc"), rn.ns("guest")
    web = "203.0.113.80"
    rn.servers.udp(ispa, "ispa", "203.0.113.53", 53)
    rn.servers.tcp(ispa, "ispa", web, 443)
    rn.servers.tcp(ispb, "ispb", web, 443)
    hello = b"\x16\x03\x01\x00\x60" + bytes(96)
    rn.note(udp_client(pc, "10.0.0.20", 36001, "203.0.113.53", 53, dns_query(0x7a01, "intranet.example")),
            expect="via ISP A, masqueraded")
    rn.note(tcp_client(guest, "10.0.0.150", 49152, web, 443, hello), expect="guest: via ISP B, masqueraded")
    rn.note(tcp_client(pc, "10.0.0.20", 49153, web, 443, hello), expect="staff: via ISP A, masqueraded")
    rn.note(ping(ispb, "203.0.113.99", "198.51.100.10", 0x3301, 1), expect="reply leaves eth1")
    rn.note(ping(ispa, "203.0.113.99", "192.0.2.10", 0x3302, 1), expect="reply leaves eth0")
    rn.note(tcp_client(ispb, "203.0.113.99", 60123, "198.51.100.10", 3389, b"x"), expect="REJECT tcp-reset")
    rn.note(tcp_client(pc, "10.0.0.20", 49154, "10.0.0.1", 22, b"SSH-2.0-OpenSSH_9.6\r\n", banner=True),
            expect="the router's SSH")
    rn.note(udp_client(guest, "10.0.0.150", 45001, web, 33434, bytes(32), ttl=1), expect="time exceeded")


def two_uplink_scenario() -> Scenario:
    internet = ["203.0.113.53/32", "203.0.113.80/32", "203.0.113.99/32"]
    return Scenario(
        name="two-uplink-bidir",
        host=example_host("two-uplink"),
        links={"eth0": [Station("ispa", "00:00:5e:00:01:0a", "192.0.2.1/24", internet)],
               "eth1": [Station("ispb", "00:00:5e:00:01:0b", "198.51.100.1/24", internet)],
               "eth2": [Station("pc", "f4:4d:30:00:00:20", "10.0.0.20/24", routes=["default via 10.0.0.1"]),
                        Station("guest", "9a:11:22:33:44:96", "10.0.0.150/24", routes=["default via 10.0.0.1"])]},
        captures=lambda tmp: [dumpcap("dumpcap", ["eth0", "eth1", "eth2"], f"{tmp}/d.pcapng")],
        traffic=two_uplink_traffic,
        outputs={"dumpcap": "two-uplink-bidir.pcapng"},
    )


# ---- main ----------------------------------------------------------------------------------

HOST_FILES = {"real-server": ("real-server.yaml", SERVER_SPEC), "real-router": ("real-router.yaml", ROUTER_SPEC)}
SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "real-server": server_scenario, "real-router": router_scenario, "web-server-bidir": web_server_scenario,
    "home-router-bidir": home_router_scenario, "two-uplink-bidir": two_uplink_scenario,
}
HEADER = """\
# {what}
# Written by samples/record_real.py from the namespace it recorded samples/{name}-*.pcap* in:
# interfaces, sysctls, routes and sockets as the script set them up, the ruleset as
# iptables-save printed it back. Regenerate: sudo python samples/record_real.py --out samples/
"""
WHAT = {"real-server": "A real server: listeners on TCP 22/80 and UDP 53, INPUT and OUTPUT policy DROP.",
        "real-router": "A real NAT router: LAN lan0, WAN wan0, MASQUERADE, DNAT wan:8080 -> 192.168.1.10:80."}


def check_tools() -> str | None:
    """Why this machine cannot record, or None."""
    if os.geteuid() != 0:
        return "recording needs root (network namespaces, raw sockets, captures)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=HERE, help="directory for captures and truth files (default: samples/)")
    ap.add_argument("--rulesets", default=None,
                    help="directory for real-*.yaml (default: ../rulesets next to --out when --out is samples/, "
                         "else --out)")
    ap.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="record only these scenarios")
    args = ap.parse_args(argv)
    why = check_tools()
    if why:
        print(f"record_real.py: {why}", file=sys.stderr)
        return 2
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    rulesets = args.rulesets or (os.path.join(REPO, "rulesets") if out == HERE else out)
    for number, name in enumerate(args.only or list(SCENARIOS)):
        sc = SCENARIOS[name]()
        tag = f"rr{os.getpid()}n{number}"
        truth = record(sc, out, tag)
        if name in HOST_FILES:
            fname, spec = HOST_FILES[name]
            ruleset = truth.pop("iptables_save")
            write_host_file(os.path.join(rulesets, fname), HEADER.format(what=WHAT[name], name=name), spec,
                            ruleset, {k: v["ifindex"] for k, v in truth["interfaces"].items()})
        else:
            truth.pop("iptables_save")
        write_truth(os.path.join(out, f"{name}.truth.json"), truth)
        counts = ", ".join(f"{f}: {c['captured']}" for f, c in truth["captures"].items())
        print(f"{name}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
