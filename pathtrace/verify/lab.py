"""The host of a HostConfig rebuilt in two throw-away network namespaces.

`host` holds the host's interfaces (veth ends carrying the configured names, MACs,
MTUs and addresses), sysctls, routes, rules, neighbours, ruleset and sockets; `wire`
holds the other end of every veth, where frames are injected and captured.  The
wire ends are ports of a bridge that stays down: a disabled port drops every frame
in its rx_handler (reason BRIDGE_INGRESS_STP_STATE) after the AF_PACKET taps saw it,
so the wire namespace never answers or routes, and its drops are told apart by reason
(tc matchall/gact would do too, but are often not built).
"""
from __future__ import annotations

import errno
import os
import select
import shutil
import socket
import time
from dataclasses import dataclass, field

from pathtrace.host.model import HostConfig, InterfaceConfig
from pathtrace.lib.inet import ntoa
from pathtrace.net.ipv4.devinet import CONF_DEFAULTS, GLOBAL_DEFAULTS, VECTOR_DEFAULTS
from pathtrace.verify.netns import LabError, Unavailable, in_netns, ns_exec, run, write_sysctl

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
WIRE_MTU = 65535
SILENCER = "silence"   # the wire namespace's bridge, never up


@dataclass(slots=True)
class Delivery:
    """What a local socket saw: proto, local address:port, event (datagram/accept/data)."""

    proto: str
    local: str
    event: str


@dataclass
class Lab:
    """Context manager: namespaces exist inside `with`, and are gone after it, whatever happened."""

    host: HostConfig
    tag: str = field(default_factory=lambda: f"ptv{os.getpid()}")
    host_ns: str = ""
    wire_ns: str = ""
    peers: dict[str, str] = field(default_factory=dict)          # host interface -> wire-side peer
    _taps: dict[str, socket.socket] = field(default_factory=dict)  # host interface -> AF_PACKET socket
    _listeners: list[tuple[socket.socket, str, str]] = field(default_factory=list)
    _conns: list[tuple[socket.socket, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.host_ns = f"{self.tag}-host"
        self.wire_ns = f"{self.tag}-wire"

    def __enter__(self) -> "Lab":
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- building --------------------------------------------------------------------
    def _build(self) -> None:
        run(["ip", "netns", "add", self.host_ns])
        run(["ip", "netns", "add", self.wire_ns])
        for ns in (self.host_ns, self.wire_ns):
            for scope in ("all", "default"):   # no IPv6 chatter (RS, MLD, DAD) on the wire
                write_sysctl(ns, f"net.ipv6.conf.{scope}.disable_ipv6", 1, check=False)
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        self._kernel_defaults()
        run(["ip", "-n", self.wire_ns, "link", "add", SILENCER, "type", "bridge"])   # stays down
        for index, iface in enumerate(i for i in self.host.interfaces if i.name != "lo"):
            self._add_interface(index, iface)
        for iface in self.host.interfaces:
            if iface.name == "lo":
                for addr, plen in iface.addresses:
                    if (ntoa(addr), plen) != ("127.0.0.1", 8):
                        self._ip("addr", "add", f"{ntoa(addr)}/{plen}", "dev", "lo")
        for key, value in self.host.sysctl.items():
            # nf_conntrack_max and _buckets are read-only outside init_net: the lab keeps the machine's
            write_sysctl(self.host_ns, key, value, check=not key.endswith(("nf_conntrack_max", "nf_conntrack_buckets")))
        for route in self.host.routes:
            self._ip("route", "add", *route.text.split())
        for rule in self.host.rules:
            self._ip("rule", "add", *rule.text.split())
        for n in self.host.neighbours:
            args = [ntoa(n.addr), "dev", n.dev]
            if n.lladdr is not None:
                args += ["lladdr", n.lladdr.hex(":")]
            self._ip("neigh", "replace", *args, "nud", n.state)
        if self.host.ipsets:
            raise Unavailable("verify does not build ipsets yet")
        if self.host.iptables_text is not None:
            self._load_iptables(self.host.iptables_text)
        if self.host.nftables_text is not None:
            self._load_nftables(self.host.nftables_text)
        self._open_sockets()
        self._open_taps()

    def _ip(self, *args: str) -> None:
        run(["ip", "-n", self.host_ns, *args])

    def _kernel_defaults(self) -> None:
        """New namespaces inherit conf/all and conf/default from the init namespace: reset them to
        the kernel defaults the model assumes, before any interface copies conf/default."""
        for key, value in GLOBAL_DEFAULTS.items():
            write_sysctl(self.host_ns, f"net.ipv4.{key}", value, check=False)
        for key, values in VECTOR_DEFAULTS.items():     # copied from init_net, which sizes them from memory
            write_sysctl(self.host_ns, f"net.ipv4.{key}", " ".join(map(str, values)), check=False)
        for scope in ("all", "default"):
            for key, (value, _) in CONF_DEFAULTS.items():
                write_sysctl(self.host_ns, f"net.ipv4.conf.{scope}.{key}", value, check=False)

    def _add_interface(self, index: int, iface: InterfaceConfig) -> None:
        peer = f"w{index}"
        self.peers[iface.name] = peer
        run(["ip", "-n", self.host_ns, "link", "add", iface.name, "address", iface.mac.hex(":"),
             "mtu", str(iface.mtu), "type", "veth", "peer", "name", peer, "netns", self.wire_ns])
        run(["ip", "-n", self.wire_ns, "link", "set", peer, "mtu", str(WIRE_MTU), "up"])
        run(["ip", "-n", self.wire_ns, "link", "set", peer, "master", SILENCER])
        for addr, plen in iface.addresses:
            brd = ["broadcast", "+"] if plen < 31 else []
            where = [ntoa(addr), "peer", f"{ntoa(iface.peers[addr])}/{plen}"] if addr in iface.peers else [f"{ntoa(addr)}/{plen}"]
            self._ip("addr", "add", *where, *brd, "dev", iface.name)
        if iface.up:
            self._ip("link", "set", iface.name, "up")

    def _load_iptables(self, text: str) -> None:
        if shutil.which("iptables-restore") is None:
            raise Unavailable("iptables-restore is not installed (apt-get install -y iptables)")
        ns_exec(self.host_ns, ["iptables-restore"], stdin=restore_text(text))

    def _load_nftables(self, text: str) -> None:
        """nft -f of the host's ruleset (-j for the JSON of nft -j list ruleset), after iptables' tables."""
        if shutil.which("nft") is None:
            raise Unavailable("nft is not installed (apt-get install -y nftables)")
        json_text = text.lstrip().startswith("{")
        ns_exec(self.host_ns, ["nft", *(["-j"] if json_text else []), "-f", "-"], stdin=text)

    def _open_sockets(self) -> None:
        """Listeners live in this process, created inside the host namespace via setns."""
        with in_netns(self.host_ns):
            for sc in self.host.sockets:
                kind = socket.SOCK_STREAM if sc.proto == "tcp" else socket.SOCK_DGRAM
                s = socket.socket(socket.AF_INET, kind)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if sc.dev:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sc.dev.encode())
                try:
                    s.bind((ntoa(sc.addr), sc.port))
                except OSError as exc:
                    s.close()
                    raise LabError(f"socket {sc.text!r}: bind: {exc.strerror}") from None
                if kind == socket.SOCK_STREAM:
                    s.listen(16)
                s.setblocking(False)
                self._listeners.append((s, sc.proto, f"{ntoa(sc.addr)}:{sc.port}"))

    def _open_taps(self) -> None:
        with in_netns(self.wire_ns):
            for name, peer in self.peers.items():
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                s.bind((peer, ETH_P_ALL))
                s.setblocking(False)
                self._taps[name] = s

    # ---- running ---------------------------------------------------------------------
    def inject(self, iface: str, frame: bytes) -> None:
        """Send `frame` from the wire end so that it arrives on the host's `iface`."""
        tap = self._taps.get(iface)
        if tap is None:
            raise LabError(f"no interface {iface!r} in the lab")
        tap.send(frame)

    def drain(self, wait: float) -> list[tuple[str, bytes]]:
        """Frames that left the host (interface, bytes), waiting at most `wait` seconds in all."""
        out: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + wait
        by_fd = {s.fileno(): name for name, s in self._taps.items()}
        while True:
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select(list(self._taps.values()), [], [], left)
            for s in ready:
                while True:
                    try:
                        data, addr = s.recvfrom(65536)
                    except BlockingIOError:
                        break
                    if addr[2] != PACKET_OUTGOING:   # our own injected frames
                        out.append((by_fd[s.fileno()], data))
            if left == 0.0:
                break
        return out

    def deliveries(self) -> list[Delivery]:
        """What the host's sockets received since the last call (non-blocking)."""
        seen: list[Delivery] = []
        for s, proto, local in self._listeners:
            while True:
                try:
                    if proto == "udp":
                        s.recvfrom(65536)
                        seen.append(Delivery("udp", local, "datagram"))
                    else:
                        conn, _ = s.accept()
                        conn.setblocking(False)
                        self._conns.append((conn, local))
                        seen.append(Delivery("tcp", local, "accept"))
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:   # e.g. ECONNREFUSED from an ICMP error on a UDP socket
                    if exc.errno in (errno.EAGAIN,):
                        break
                    seen.append(Delivery(proto, local, f"error {errno.errorcode.get(exc.errno, exc.errno)}"))
                    break
        for conn, local in self._conns:
            try:
                data = conn.recv(65536)
                if data:
                    seen.append(Delivery("tcp", local, "data"))
            except OSError:
                pass
        return seen

    def close(self) -> None:
        for s in [*self._taps.values(), *(x[0] for x in self._listeners), *(c for c, _ in self._conns)]:
            try:
                s.close()
            except OSError:
                pass
        self._taps.clear()
        self._listeners.clear()
        self._conns.clear()
        for ns in (self.host_ns, self.wire_ns):
            if os.path.exists(f"/run/netns/{ns}"):
                run(["ip", "netns", "del", ns], check=False)


def restore_text(text: str) -> str:
    """iptables-save text as is; `iptables -S` output (filter table only) wrapped for iptables-restore."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if any(ln.startswith("*") for ln in lines):
        return "\n".join(lines) + "\n"
    out = ["*filter"]
    for ln in lines:
        parts = ln.split()
        if parts[0] == "-P" and len(parts) == 3:
            out.append(f":{parts[1]} {parts[2]} [0:0]")
        elif parts[0] == "-N" and len(parts) == 2:
            out.append(f":{parts[1]} - [0:0]")
        else:
            out.append(ln)
    out.append("COMMIT")
    return "\n".join(out) + "\n"

