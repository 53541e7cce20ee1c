"""Seeded random scenarios, run through the real kernel (verify's lab) and the model.

    python -m tests.differential.generate --seeds 0-99 --report [--jobs 2] [--shrink] [--write]

Each seed draws a host (1-3 interfaces, /16../32 addresses, sysctls, routes of several
types, policy rules, neighbours present or absent, listeners), an iptables ruleset over
raw/mangle/nat/filter from a small grammar of supported matches and targets, and packets:
for every rule one that hits it and one that just misses it, plus local traffic, forwarding,
hairpins, broadcasts, TTL 1, oversize DF, bad checksums and martians.  Every packet is
compared on "core" (verdict, drop reason, egress, and the frames out reduced to interface,
addresses, protocol, ports, flags, ICMP type/code) and on "strict" (verify's own comparison:
MACs, TTL and lengths too).  With --shrink, each new disagreement class is shrunk (rules,
routes, sysctls and packets dropped while the packet still disagrees the same way) and with
--write written to tests/differential/generated/ with the kernel's recorded result.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from pathtrace.packet import build as b
from pathtrace.verify.compare import differences
from pathtrace.verify.observe import Observation
from pathtrace.verify.scenario import Scenario

HERE = Path(__file__).resolve().parent
GENERATED = HERE / "generated"
GAP = 0.1          # capture-time spacing; the kernel is paced by it
WAIT = 0.06        # how long the kernel is watched after each packet
REMOTES = ["198.51.100.20", "203.0.113.9", "192.0.2.77", "172.16.5.5"]
PLENS = [24, 24, 24, 30, 32, 16, 29]


def mac(i: int, last: int) -> str:
    return f"02:00:00:00:{i:02x}:{last:02x}"


def ntoa(n: int) -> str:
    return ".".join(str(n >> s & 255) for s in (24, 16, 8, 0))


def aton(a: str) -> int:
    p = [int(x) for x in a.split(".")]
    return p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]


@dataclass
class Iface:
    name: str
    mac: str
    net: int          # network address
    plen: int
    mtu: int = 1500
    extra: list[str] = field(default_factory=list)    # secondary and point-to-point addresses, as written

    @property
    def addr(self) -> str:
        return ntoa(self.net + 1)

    @property
    def peer(self) -> str:
        return ntoa(self.net + 2)

    @property
    def peer_mac(self) -> str:
        return self.mac[:-2] + "0a"

    @property
    def bcast(self) -> str | None:
        return ntoa(self.net | (0xFFFFFFFF >> self.plen)) if self.plen < 31 else None


@dataclass
class Pkt:
    """One packet to inject: how to build it, and a class name for the report."""

    kind: str
    ingress: int
    src: str
    dst: str
    proto: str = "udp"          # tcp udp icmp
    sport: int = 40000
    dport: int = 53
    flags: str = "S"
    ttl: int = 64
    df: bool = False
    size: int = 0
    l2: str = "host"            # host | bcast | other | mcast
    bad: str = ""               # ip | l4
    icmp_type: int = 8
    frag: str = ""              # "K/N": the K-th of N fragments of the datagram (UDP), sent as its own frame
    ident: int = 0              # IP ID (fragments of one datagram share it); 0: from the packet's index


@dataclass
class Gen:
    """A generated scenario as data, so it can be shrunk and rendered again."""

    seed: int
    ifaces: list[Iface]
    sysctl: list[tuple[str, int]] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    neigh: list[str] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)
    ipt: list[tuple[str, str]] = field(default_factory=list)      # (table, "-A CHAIN ...")
    policies: dict[str, str] = field(default_factory=dict)        # "filter/INPUT" -> DROP
    user_chains: list[tuple[str, str]] = field(default_factory=list)   # (table, chain)
    packets: list[Pkt] = field(default_factory=list)

    def yaml(self) -> str:
        out = [f"name: gen{self.seed}", "interfaces:"]
        for i in self.ifaces:
            addrs = ", ".join([f"{i.addr}/{i.plen}"] + [f'"{a}"' for a in i.extra])
            out.append(f'  - {{name: {i.name}, mac: "{i.mac}", addresses: [{addrs}], mtu: {i.mtu}}}')
        if self.sysctl:
            out.append("sysctl:")
            out += [f"  {k}: {v}" for k, v in self.sysctl]
        for key, items in (("routes", self.routes), ("rules", self.rules), ("neighbours", self.neigh),
                           ("sockets", self.sockets)):
            if items:
                out.append(f"{key}:")
                out += [f"  - {x}" for x in items]
        text = self.iptables()
        if text:
            out.append("iptables: |")
            out += [f"  {ln}" for ln in text.splitlines()]
        return "\n".join(out) + "\n"

    def iptables(self) -> str:
        chains = {"raw": ["PREROUTING", "OUTPUT"], "mangle": ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
                  "nat": ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"], "filter": ["INPUT", "FORWARD", "OUTPUT"],
                  "security": ["INPUT", "FORWARD", "OUTPUT"]}
        used = {t for t, _ in self.ipt} | {k.split("/")[0] for k in self.policies}
        text = []
        for table in ("raw", "mangle", "nat", "filter", "security"):
            if table not in used:
                continue
            text.append(f"*{table}")
            text += [f":{c} {self.policies.get(f'{table}/{c}', 'ACCEPT')} [0:0]" for c in chains[table]]
            text += [f":{c} - [0:0]" for t, c in self.user_chains if t == table]
            text += [r for t, r in self.ipt if t == table]
            text.append("COMMIT")
        return "\n".join(text)

    def frames(self) -> list[tuple[str, bytes]]:
        return [frame(self, n, p) for n, p in enumerate(self.packets)]

    def scenario(self) -> Scenario:
        return Scenario(name=f"gen{self.seed}", host_yaml=self.yaml(), packets=self.frames(), gap=GAP)


def frame(g: Gen, n: int, p: Pkt) -> tuple[str, bytes]:
    ifc = g.ifaces[p.ingress]
    ident = p.ident or 0x3000 + n
    pay = bytes(p.size)
    ipkw = dict(ttl=p.ttl, df=p.df, id=ident)
    if p.bad == "ip":
        ipkw["check"] = 0x1234
    if p.frag:
        pkt = _fragment(p, b.udp(p.sport, p.dport, b"gen" + pay, src=p.src, dst=p.dst), ipkw)
    elif p.proto == "tcp":
        pkt = b.tcp_packet(p.src, p.dst, p.sport, p.dport, p.flags, seq=1000, ack=1 if "A" in p.flags else 0,
                           payload=pay, tcp_check=0x4321 if p.bad == "l4" else None, **ipkw)
    elif p.proto == "icmp":
        pkt = b.ipv4(p.src, p.dst, b.IPPROTO_ICMP,
                     b.icmp(p.icmp_type, 0, b"gen" + pay, id=0x55, seq=n, check=0x1111 if p.bad == "l4" else None),
                     **ipkw)
    else:
        pkt = b.udp_packet(p.src, p.dst, p.sport, p.dport, b"gen" + pay, udp_check=0x2222 if p.bad == "l4" else None,
                           **ipkw)
    if p.l2 == "mcast":    # RFC 1112 mapping: 01:00:5e and the group's low 23 bits
        low = aton(p.dst) & 0x7FFFFF
        dst = f"01:00:5e:{low >> 16:02x}:{low >> 8 & 255:02x}:{low & 255:02x}"
    else:
        dst = {"host": ifc.mac, "bcast": "ff:ff:ff:ff:ff:ff", "other": "02:00:00:00:99:99"}[p.l2]
    return ifc.name, b.ether(dst, ifc.peer_mac, b.ETH_P_IP, pkt)


def _fragment(p: Pkt, segment: bytes, ipkw: dict) -> bytes:
    """The K-th of N IPv4 fragments of SEGMENT (pieces of equal 8-byte multiples, the last takes the rest)."""
    k, n = (int(x) for x in p.frag.split("/"))
    piece = max(8, (len(segment) // n + 7) // 8 * 8)
    start = (k - 1) * piece
    chunk = segment[start:] if k == n else segment[start:start + piece]
    return b.ipv4(p.src, p.dst, b.IPPROTO_UDP, chunk, mf=k < n, frag_offset=start // 8, **ipkw)


# ---- drawing --------------------------------------------------------------------------------
def draw(seed: int) -> Gen:
    r = random.Random(seed)
    n_if = r.choice([1, 2, 2, 3, 3])
    ifaces = []
    for i in range(n_if):
        plen = r.choice(PLENS)
        ifaces.append(Iface(f"eth{i}", mac(i, 1), aton(f"10.{i + 1}.0.0"), plen, mtu=r.choice([1500, 1500, 1500, 1280])))
    g = Gen(seed, ifaces)
    _sysctls(g, r)
    _routes(g, r)
    _neighbours(g, r)
    g.sockets = ["tcp 0.0.0.0:22", "udp 0.0.0.0:53"] + (["tcp 0.0.0.0:80"] if r.random() < 0.5 else [])
    _ruleset(g, r)
    _packets(g, r)
    level = os.environ.get("PATHTRACE_GEN_EXTRAS", "2")    # 0: the first series; 1: seeds 3000-5599's
    if level != "0":
        _extras(g, random.Random(seed ^ 0x5EED))
    if level not in ("0", "1"):
        _grammar(g, random.Random(seed ^ 0x6A6A))
    return g


def _grammar(g: Gen, r: random.Random) -> None:
    """More of the ruleset grammar pathtrace supports: user chains with RETURN, the security table,
    iprange, length, ttl, tcp flags, limit, recent, mark and connmark, and the mangle targets TTL,
    DSCP, TCPMSS — each rule with a packet that hits it and one that just misses it."""
    def insert(*pkts: Pkt) -> None:
        at = r.randint(0, len(g.packets))
        g.packets[at:at] = list(pkts)
    for _ in range(r.randint(0, 3)):
        n = r.randrange(len(g.ifaces))
        ifc = g.ifaces[n]
        fwd = r.random() < 0.5
        chain = "FORWARD" if fwd else "INPUT"
        dst = r.choice(REMOTES) if fwd else ifc.addr
        port = r.choice([53, 80, 443, 5000])
        hit = Pkt(f"grammar-rule:{chain}", n, ifc.peer, dst, "udp", dport=port)
        kind = r.choice(["chain", "security", "iprange", "length", "ttl", "tcpflags", "limit", "recent",
                         "mark", "connmark", "ttl-target", "dscp", "tcpmss"])
        miss = replace(hit, kind=f"grammar-miss:{kind}")
        hit.kind = f"grammar-hit:{kind}"
        verdict = r.choice(["DROP", "REJECT", "ACCEPT"])
        if kind == "chain":
            if ("filter", "GEN") not in g.user_chains:
                g.user_chains.append(("filter", "GEN"))
                g.ipt.append(("filter", "-A GEN -s 10.0.0.0/8 -p udp --dport 9 -j RETURN"))
                g.ipt.append(("filter", f"-A GEN -j {verdict}"))
            g.ipt.append(("filter", f"-A {chain} -p udp --dport {port} -j GEN"))
            miss.dport = 9 if r.random() < 0.5 else port + 1
        elif kind == "security":
            g.ipt.append(("security", f"-A {chain} -p udp --dport {port} -j {'DROP' if verdict == 'REJECT' else verdict}"))
            miss.dport = port + 1
        elif kind == "iprange":
            g.ipt.append(("filter", f"-A {chain} -m iprange --src-range {ifc.peer}-{ifc.peer} -j {verdict}"))
            miss.src = ntoa(aton(ifc.peer) + 1)
        elif kind == "length":
            g.ipt.append(("filter", f"-A {chain} -p udp -m length --length 0:100 -j {verdict}"))
            miss.size = 200
        elif kind == "ttl":
            g.ipt.append(("filter", f"-A {chain} -m ttl --ttl-gt 10 -j {verdict}"))
            miss.ttl = 9
        elif kind == "tcpflags":
            hit.proto = miss.proto = "tcp"
            g.ipt.append(("filter", f"-A {chain} -p tcp --tcp-flags SYN,ACK,RST SYN -j {verdict}"))
            miss.flags = "SA"
        elif kind == "limit":
            g.ipt.append(("filter", f"-A {chain} -p udp --dport {port} -m limit --limit 1/min --limit-burst 1 -j {verdict}"))
            miss.kind = "grammar-miss:limit (second packet, over the limit)"
        elif kind == "recent":
            g.ipt.append(("filter", f"-A {chain} -p udp --dport {port} -m recent --name gen --rcheck --seconds 60 -j {verdict}"))
            g.ipt.append(("filter", f"-A {chain} -p udp --dport {port} -m recent --name gen --set"))
            hit, miss = replace(hit, kind="grammar-miss:recent (first, sets)"), replace(hit, kind="grammar-hit:recent")
        elif kind == "mark":
            g.ipt.append(("mangle", f"-A PREROUTING -p udp --dport {port} -j MARK --set-mark 7"))
            g.ipt.append(("filter", f"-A {chain} -m mark --mark 7 -j {verdict}"))
            miss.dport = port + 1
        elif kind == "connmark":
            g.ipt.append(("mangle", f"-A PREROUTING -p udp --dport {port} -j CONNMARK --set-mark 5"))
            g.ipt.append(("filter", f"-A {chain} -m connmark --mark 5 -j {verdict}"))
            miss.dport = port + 1
        elif kind == "ttl-target":
            g.ipt.append(("mangle", f"-A PREROUTING -p udp --dport {port} -j TTL --ttl-set 1"))
            miss.dport = port + 1
        elif kind == "dscp":
            g.ipt.append(("mangle", f"-A FORWARD -p udp --dport {port} -j DSCP --set-dscp 10"))
            miss.dport = port + 1
        elif kind == "tcpmss":
            hit.proto = miss.proto = "tcp"
            g.ipt.append(("mangle", f"-A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --set-mss 1000"))
            miss.flags = "A"
        insert(hit, miss)


def _extras(g: Gen, r: random.Random) -> None:
    """Secondary and point-to-point addresses, route attributes, fragments and multicast. Drawn from their
    own generator and inserted into the shuffled packets, so the rest of a seed's scenario stays as it was."""
    def insert(*pkts: Pkt) -> None:
        at = r.randint(0, len(g.packets))
        g.packets[at:at] = list(pkts)
    for n, ifc in enumerate(g.ifaces):
        if ifc.plen <= 29 and r.random() < 0.2:
            ifc.extra.append(f"{ntoa(ifc.net + 5)}/{ifc.plen}")
            insert(Pkt("secondary", n, ifc.peer, ntoa(ifc.net + 5), r.choice(["udp", "icmp", "tcp"]), dport=53))
        if r.random() < 0.12:
            local, peer = f"10.{n + 1}.200.1", f"10.{n + 1}.201.1"
            ifc.extra.append(f"{local} peer {peer}/32")
            insert(Pkt("peer-local", n, ifc.peer, local, r.choice(["udp", "icmp"])))
            other = r.randrange(len(g.ifaces))
            insert(Pkt("peer-forward", other, g.ifaces[other].peer, peer, "udp", dport=5000))
    gw_if = [i for i in g.ifaces if i.plen <= 30]
    attrs = [" mtu 1400", " mtu lock 1300", " metric 10", " proto static", " advmss 1000", ""]
    for k, route in enumerate(g.routes):
        if route.startswith("172.16.") and r.random() < 0.6:
            dev = route.split(" dev ")[1].split()[0]
            ifc = next(i for i in g.ifaces if i.name == dev)
            extra = r.choice(attrs + [f" src {ifc.addr}"])
            g.routes[k] = route + extra
            if "mtu" in extra:
                mtu = int(extra.split()[-1])
                for df in (True, False):
                    src = r.randrange(len(g.ifaces))
                    total = min(mtu + 20, g.ifaces[src].mtu)     # past the route's MTU, within the wire's
                    insert(Pkt("route-mtu", src, g.ifaces[src].peer, f"172.16.{route.split('.')[2]}.9", "udp",
                               df=df, size=total - 31, dport=5000))
    if gw_if and r.random() < 0.15:
        via = r.choice(gw_if)
        g.routes.append(f"172.16.9.0/24 via 10.99.0.1 dev {via.name} onlink")
        src = r.randrange(len(g.ifaces))
        insert(Pkt("onlink", src, g.ifaces[src].peer, "172.16.9.9", "udp", dport=5000))
    if r.random() < 0.1:
        ifc = r.choice(g.ifaces)
        g.routes.append(f"{ifc.peer}/32 dev {ifc.name} advmss 1000")
        insert(Pkt("advmss", g.ifaces.index(ifc), ifc.peer, ifc.addr, "tcp", dport=22))
    if r.random() < 0.35:
        n = r.randrange(len(g.ifaces))
        ifc = g.ifaces[n]
        dst = r.choice([ifc.addr, r.choice(REMOTES), r.choice(REMOTES)])
        pieces = r.choice([2, 2, 3])
        size = r.choice([600, 1400, 2000])
        ident = 0x7000 + r.randrange(0x800)
        frags = [Pkt("fragment", n, ifc.peer, dst, "udp", dport=r.choice([53, 5000]), size=size,
                     frag=f"{k}/{pieces}", ident=ident) for k in range(1, pieces + 1)]
        if r.random() < 0.3:
            frags.reverse()
        insert(*frags)
    if r.random() < 0.3:
        n = r.randrange(len(g.ifaces))
        ifc = g.ifaces[n]
        group, proto = r.choice([("224.0.0.1", "icmp"), ("239.1.2.3", "udp"), ("224.0.0.251", "udp")])
        insert(Pkt("multicast", n, ifc.peer, group, proto, dport=5000, l2="mcast"))


def _sysctls(g: Gen, r: random.Random) -> None:
    s = g.sysctl
    if r.random() < 0.75:
        s.append(("net.ipv4.ip_forward", 1))
    for scope in ["all"] + [i.name for i in g.ifaces]:
        if r.random() < 0.3:
            s.append((f"net.ipv4.conf.{scope}.rp_filter", r.choice([0, 1, 2])))
        if r.random() < 0.15:
            s.append((f"net.ipv4.conf.{scope}.accept_local", 1))
        if r.random() < 0.2:
            s.append((f"net.ipv4.conf.{scope}.send_redirects", 0))
        if r.random() < 0.1:
            s.append((f"net.ipv4.conf.{scope}.log_martians", 1))
        if r.random() < 0.08:
            s.append((f"net.ipv4.conf.{scope}.route_localnet", 1))
    for key, val in (("icmp_echo_ignore_broadcasts", 0), ("icmp_echo_ignore_all", 1),
                     ("icmp_errors_use_inbound_ifaddr", 1), ("ip_default_ttl", 33)):
        if r.random() < 0.1:
            s.append((f"net.ipv4.{key}", val))


def _routes(g: Gen, r: random.Random) -> None:
    gw_if = [i for i in g.ifaces if i.plen <= 30]
    for i in g.ifaces:
        if i.plen == 32 and r.random() < 0.7:
            g.routes.append(f"{ntoa(i.net)}/24 dev {i.name} scope link")
    if gw_if:
        up = r.choice(gw_if)
        g.routes.append(f"default via {up.peer} dev {up.name}")
        for n in range(r.randint(0, 2)):
            via = r.choice(gw_if)
            g.routes.append(f"172.16.{n}.0/24 via {via.peer} dev {via.name}")
    for n in range(r.randint(0, 2)):
        kind = r.choice(["blackhole", "unreachable", "prohibit"])
        g.routes.append(f"{kind} 192.0.2.{n * 64}/26")
    if gw_if and r.random() < 0.3:
        via = r.choice(gw_if)
        g.routes.append(f"default via {via.peer} dev {via.name} table 100")
        src = g.ifaces[r.randrange(len(g.ifaces))]
        g.rules.append(r.choice([f"from {ntoa(src.net)}/{max(src.plen, 16)} lookup 100 priority 100",
                                 "fwmark 0x1 lookup 100 priority 100", f"iif {src.name} lookup 100 priority 100"]))


def _neighbours(g: Gen, r: random.Random) -> None:
    for i in g.ifaces:
        if r.random() < 0.8:
            g.neigh.append(f"{i.peer} dev {i.name} lladdr {i.peer_mac} permanent")


def _rule(g: Gen, r: random.Random, table: str, chain: str) -> tuple[str, Pkt, Pkt]:
    """A rule, a packet that hits it and one that just misses it."""
    ing = r.randrange(len(g.ifaces))
    ifc = g.ifaces[ing]
    local = chain in ("INPUT", "PREROUTING") and r.random() < 0.5 or chain == "INPUT"
    dst = ifc.addr if local else r.choice(REMOTES)
    proto = r.choice(["tcp", "udp", "icmp"])
    hit = Pkt(f"rule:{table}/{chain}", ing, ifc.peer, dst, proto, dport=r.choice([22, 53, 80, 443, 8080]))
    miss = replace(hit, kind=f"miss:{table}/{chain}")
    parts = ["-A", chain]
    ways: list[str] = []
    if r.random() < 0.8:
        parts += ["-p", proto]
        ways.append("proto")
    if chain in ("INPUT", "PREROUTING", "FORWARD") and r.random() < 0.5:
        parts += ["-i", ifc.name]
        if len(g.ifaces) > 1:
            ways.append("iface")
    if r.random() < 0.4:
        parts += ["-s", f"{hit.src}/32"]
        ways.append("src")
    if r.random() < 0.3:
        parts += ["-d", f"{dst}/32"]
    if proto in ("tcp", "udp") and "-p" in parts and r.random() < 0.7:
        if r.random() < 0.3:
            parts += ["-m", "multiport", "--dports", f"{hit.dport},9999"]
        else:
            parts += ["--dport", str(hit.dport)]
        ways.append("port")
    if proto == "icmp" and "-p" in parts and r.random() < 0.5:
        parts += ["--icmp-type", "echo-request"]
    if r.random() < 0.25:
        parts += ["-m", "conntrack", "--ctstate", r.choice(["NEW", "NEW,ESTABLISHED", "INVALID", "RELATED,ESTABLISHED"])]
    if chain in ("INPUT", "PREROUTING") and r.random() < 0.15:
        parts += ["-m", "addrtype", "--dst-type", "LOCAL"]
    target = _target(g, r, table, chain, proto if "-p" in parts else None)
    way = r.choice(ways) if ways else "none"
    if way == "proto":
        miss.proto = "udp" if proto != "udp" else "tcp"
    elif way == "iface":
        other = (ing + 1) % len(g.ifaces)
        miss.ingress, miss.src = other, g.ifaces[other].peer
        if local:
            miss.dst = g.ifaces[other].addr
    elif way == "src":
        miss.src = ntoa(aton(hit.src) + 1)
    elif way == "port":
        miss.dport = hit.dport + 1
    return " ".join(parts + target), hit, miss


def _target(g: Gen, r: random.Random, table: str, chain: str, proto: str | None) -> list[str]:
    """`proto`: the protocol the rule's -p names (None: no -p), which some target options need."""
    if table == "filter":
        t = r.choice(["ACCEPT", "DROP", "REJECT", "REJECT", "LOG"])
        if t == "REJECT":
            opts = ["icmp-port-unreachable", "icmp-host-unreachable", "icmp-admin-prohibited"]
            opts += ["tcp-reset"] * 2 if proto == "tcp" else []
            return ["-j", "REJECT", "--reject-with", r.choice(opts)]
        return ["-j", t] + (["--log-prefix", "gen: "] if t == "LOG" else [])
    if table == "nat":
        if chain == "PREROUTING":
            dest = g.ifaces[r.randrange(len(g.ifaces))]
            return r.choice([["-j", "DNAT", "--to-destination", dest.peer],
                             ["-j", "REDIRECT"] + (["--to-ports", "22"] if proto in ("tcp", "udp") else [])])
        return r.choice([["-j", "MASQUERADE"], ["-j", "SNAT", "--to-source", g.ifaces[0].addr]])
    if table == "mangle":
        return ["-j", "MARK", "--set-mark", "1"]
    return ["-j", "CT", "--notrack"]


def _ruleset(g: Gen, r: random.Random) -> None:
    if r.random() < 0.15:
        return
    spots = [("filter", "INPUT")] * 3 + [("filter", "FORWARD")] * 3 + [("nat", "PREROUTING"), ("nat", "POSTROUTING"),
                                                                     ("mangle", "PREROUTING"), ("raw", "PREROUTING")]
    for _ in range(r.randint(1, 6)):
        table, chain = r.choice(spots)
        if table == "nat" and chain == "POSTROUTING":
            out = r.choice(g.ifaces)
            rule = f"-A POSTROUTING -o {out.name} " + " ".join(_target(g, r, table, chain, None))
            g.ipt.append((table, rule))
            continue
        rule, hit, miss = _rule(g, r, table, chain)
        g.ipt.append((table, rule))
        g.packets += [hit, miss]
    for chain in ("INPUT", "FORWARD"):
        if r.random() < 0.25:
            g.policies[f"filter/{chain}"] = "DROP"
            if chain == "INPUT" and r.random() < 0.7:
                g.ipt.insert(0, ("filter", "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"))


def _packets(g: Gen, r: random.Random) -> None:
    P = g.packets
    for n, ifc in enumerate(g.ifaces):
        P.append(Pkt("local-tcp", n, ifc.peer, ifc.addr, "tcp", dport=r.choice([22, 80, 23])))
        P.append(Pkt("local-udp", n, ifc.peer, ifc.addr, "udp", dport=r.choice([53, 54])))
        P.append(Pkt("local-icmp", n, ifc.peer, ifc.addr, "icmp"))
        other = g.ifaces[(n + 1) % len(g.ifaces)]
        P.append(Pkt("weak-host", n, ifc.peer, other.addr, r.choice(["icmp", "udp"])))
        P.append(Pkt("forward", n, ifc.peer, r.choice(REMOTES + [o.peer for o in g.ifaces]), r.choice(["tcp", "udp"]),
                     dport=r.choice([80, 443, 5000])))
        P.append(Pkt("forward-ttl1", n, ifc.peer, r.choice(REMOTES), "udp", ttl=1, dport=5000))
        if ifc.plen < 30:
            P.append(Pkt("hairpin", n, ifc.peer, ntoa(ifc.net + 3), "udp", dport=5000))
        if ifc.bcast and r.random() < 0.7:
            P.append(Pkt("bcast-directed", n, ifc.peer, ifc.bcast, r.choice(["icmp", "udp"]), l2="bcast"))
        if r.random() < 0.5:
            P.append(Pkt("bcast-limited", n, ifc.peer, "255.255.255.255", r.choice(["icmp", "udp"]), l2="bcast"))
        if r.random() < 0.4:
            P.append(Pkt("oversize-df", n, ifc.peer, r.choice(REMOTES), "udp", df=True, size=ifc.mtu - 31, dport=5000))
        if r.random() < 0.4:
            P.append(Pkt("bad-csum", n, ifc.peer, ifc.addr, r.choice(["tcp", "udp", "icmp"]), bad=r.choice(["ip", "l4"])))
        if r.random() < 0.5:
            src = r.choice(["127.0.0.1", "0.0.0.0", "224.0.0.5", ifc.addr, "10.200.0.9", r.choice(REMOTES)])
            P.append(Pkt("martian-or-spoof", n, src, r.choice([ifc.addr, r.choice(REMOTES)]), "udp"))
        if r.random() < 0.2:
            P.append(Pkt("otherhost", n, ifc.peer, ifc.addr, "icmp", l2="other"))
    r.shuffle(P)


# ---- comparing ------------------------------------------------------------------------------
_CORE_DROP = re.compile(r" ttl=\d+| len=\d+| DF| frag off=\d+( MF)?| mtu=\d+")


# Every port a generated packet carries (a miss uses the hit's port + 1); any other source port in a
# frame the host sent was chosen by NAT, which the kernel draws at random (nf_nat_l4proto_unique_tuple:
# get_random_u16() for source NAT), so core compares "kept" against "re-chosen", strict the value.
GEN_PORTS = {40000, 40001} | {p + d for p in (22, 23, 53, 54, 80, 443, 5000, 8080, 9999) for d in (0, 1)}
_PORTS = re.compile(r"(UDP|TCP) (\d+)>(\d+)")


_ECHO_ID = re.compile(r" id=(\d+)")


def _nat_id(m: re.Match) -> str:
    """Echo identifiers: the generator's is 0x55; any other was chosen by NAT (as ports are)."""
    return m[0] if int(m[1]) == 0x55 else " id=nat"


def _nat_port(m: re.Match) -> str:
    sport, dport = (x if int(x) in GEN_PORTS else "nat" for x in (m[2], m[3]))
    return f"{m[1]} {sport}>{dport}"


def core_summary(s: str) -> str:
    """An emitted-frame summary without MAC, TTL, lengths and fragment fields, and with NAT-chosen ports
    marked as such."""
    dev, _, rest = s.partition(" ")
    _, _, rest = rest.partition(" ")
    return dev + " " + _ECHO_ID.sub(_nat_id, _PORTS.sub(_nat_port, _CORE_DROP.sub("", rest)))


def _core_frames(o: Observation) -> Counter:
    """ARP requests are left to strict: their retransmissions follow the neighbour timer, and the
    lab's wall clock runs a little behind the capture clock under load."""
    return Counter(core_summary(e) for e in o.emitted if " ARP who-has " not in e)


def core_differences(k: Observation, m: Observation) -> list[str]:
    diff = [d for d in differences(k, m) if d != "emitted"]
    if _core_frames(k) != _core_frames(m):
        diff.append("emitted")
    return diff


def fate(o: Observation) -> str:
    return {"DROP": f"DROP {o.reason}", "FORWARD": f"FORWARD {o.egress}"}.get(o.verdict, o.verdict)


def signature(p: Pkt, k: Observation, m: Observation) -> str:
    """A disagreement class: packet kind, kernel fate vs model fate, frames out only on one side."""
    kc, mc = _core_frames(k), _core_frames(m)
    only = lambda c: sorted({re.sub(r"\d+\.\d+\.\d+\.\d+|eth\d|\d+>\d+", "*", e) for e in c})  # noqa: E731
    return f"{p.kind.split(':')[0]} | kernel {fate(k)} {only(kc - mc)} | model {fate(m)} {only(mc - kc)}"


@dataclass
class Outcome:
    seed: int
    refused: str = ""
    kernel: list[Observation] = field(default_factory=list)
    model: list[Observation] = field(default_factory=list)


def _kernel_cache_path(g: Gen) -> Path | None:
    """Where the kernel's answer for this exact scenario is kept (PATHTRACE_KERNEL_CACHE=DIR): the kernel's
    result depends only on the host file and the frames, so model fixes can be re-measured without the lab."""
    root = os.environ.get("PATHTRACE_KERNEL_CACHE")
    if not root:
        return None
    digest = hashlib.sha256(g.yaml().encode() + b"".join(i.encode() + b"\0" + f for i, f in g.frames())).hexdigest()
    return Path(root) / f"seed{g.seed}-{digest[:16]}.json"


def run_seed(g: Gen, tracer: object | None = None) -> Outcome:
    from pathtrace.errors import PathtraceError
    from pathtrace.verify.netns import LabError
    from pathtrace.verify.runner import run_kernel, run_model
    sc = g.scenario()
    try:
        injections = sc.injections()
        model = run_model(sc.host(), injections, wait=WAIT)
    except PathtraceError as exc:
        return Outcome(g.seed, refused=f"model: {exc}")
    cached = _kernel_cache_path(g)
    if cached is not None and cached.exists():
        data = json.loads(cached.read_text())
        if data.get("refused"):
            return Outcome(g.seed, refused=data["refused"])
        return Outcome(g.seed, kernel=[Observation.from_json(o) for o in data["kernel"]], model=model)
    try:
        kernel = run_kernel(sc.host(), injections, wait=WAIT, tag=f"ptg{os.getpid()}", tracer=tracer)
    except LabError as exc:
        return Outcome(g.seed, refused=f"kernel: {exc}")
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps({"kernel": [o.to_json() for o in kernel]}))
    return Outcome(g.seed, kernel=kernel, model=model)


def first_disagreement(g: Gen, out: Outcome, sig: str | None = None) -> int | None:
    for n, (p, k, m) in enumerate(zip(g.packets, out.kernel, out.model)):
        if core_differences(k, m) and (sig is None or signature(p, k, m) == sig):
            return n
    return None


def shrink(g: Gen, index: int, sig: str, tracer: object | None, budget: int = 40) -> Gen:
    """Greedy: drop later packets, then each earlier packet, rule, route, rule, sysctl while `sig` persists."""
    target = g.packets[index]
    best = replace(g, packets=g.packets[:index + 1])
    runs = 0

    def still(cand: Gen) -> bool:
        nonlocal runs
        runs += 1
        out = run_seed(cand, tracer)
        if out.refused:
            return False
        n = len(cand.packets) - 1
        return cand.packets[n] is target and bool(core_differences(out.kernel[n], out.model[n])) \
            and signature(target, out.kernel[n], out.model[n]) == sig

    if not still(best):
        return best
    for attr in ("packets", "ipt", "routes", "rules", "sysctl", "neigh"):
        items = getattr(best, attr)
        i = 0
        while i < len(items) and runs < budget:
            if attr == "packets" and items[i] is target:
                i += 1
                continue
            cand = replace(best, **{attr: items[:i] + items[i + 1:]})
            if still(cand):
                best, items = cand, getattr(cand, attr)
            else:
                i += 1
    for key in list(best.policies):
        if runs < budget and still(cand := replace(best, policies={k: v for k, v in best.policies.items() if k != key})):
            best = cand
    return best


def record_seed(g: Gen, tracer: object | None, runs: int = 2) -> dict:
    """A whole seed as a regression case: the kernel's result (stable over `runs`), and the packets
    the model still disagrees on (core) with their class, expected to keep failing until fixed."""
    from pathtrace.verify.runner import run_kernel, run_model
    sc = g.scenario()
    injections = sc.injections()
    results = [run_kernel(sc.host(), injections, wait=WAIT, tracer=tracer) for _ in range(runs)]
    # stable: the same on core in every run (a port NAT draws at random differs between runs, as it may
    # between the kernel and the model; the offline test compares core only)
    stable = [n for n in range(len(injections)) if all(not core_differences(r[n], results[0][n]) for r in results)]
    model = run_model(sc.host(), injections, wait=WAIT)
    known = {str(n): signature(g.packets[n], results[0][n], model[n]) for n in stable
             if core_differences(results[0][n], model[n])}
    return {"name": f"seed{g.seed}", "seed": g.seed, "host_yaml": sc.host_yaml, "gap": GAP,
            "kernel_release": os.uname().release, "known_disagreements": known,
            "packets": [{"ingress": i.ingress, "frame": i.wire.hex(), "packet": i.text, "kind": p.kind,
                         "kernel": k.to_json() if n in stable else None}
                        for n, (i, p, k) in enumerate(zip(injections, g.packets, results[0]))]}


def write_case(g: Gen, sig: str, tracer: object | None) -> Path:
    """Record the shrunk case as verify.record does (three runs, must be stable)."""
    from pathtrace.verify.runner import run_kernel
    sc = g.scenario()
    injections = sc.injections()
    runs = [[o.to_json() for o in run_kernel(sc.host(), injections, wait=WAIT, tracer=tracer)] for _ in range(3)]
    data = {"name": f"gen{g.seed}_{len(g.packets)}", "seed": g.seed, "class": sig, "host_yaml": sc.host_yaml,
            "kernel_release": os.uname().release, "stable_over_runs": 3 if all(r == runs[0] for r in runs) else 0,
            "gap": GAP, "packets": [{"ingress": i.ingress, "frame": i.wire.hex(), "packet": i.text, "kind": p.kind,
                                     "kernel": k} for i, p, k in zip(injections, g.packets, runs[0])]}
    GENERATED.mkdir(exist_ok=True)
    path = GENERATED / f"{data['name']}.json"
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


# ---- the command ----------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


@dataclass
class Tally:
    packets: Counter = field(default_factory=Counter)
    core: Counter = field(default_factory=Counter)
    strict: Counter = field(default_factory=Counter)
    classes: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)
    refused: Counter = field(default_factory=Counter)
    scenarios: int = 0

    def add(self, g: Gen, out: Outcome) -> None:
        if out.refused:
            self.refused[re.sub(r"\d+", "N", out.refused)[:120]] += 1
            return
        self.scenarios += 1
        for p, k, m in zip(g.packets, out.kernel, out.model):
            kind = p.kind.split(":")[0]
            self.packets[kind] += 1
            if not core_differences(k, m):
                self.core[kind] += 1
            else:
                sig = signature(p, k, m)
                self.classes[sig] += 1
                self.examples.setdefault(sig, (g.seed, g.packets.index(p)))
            if not differences(k, m):
                self.strict[kind] += 1

    def report(self) -> str:
        lines = [f"{'class':<18}{'packets':>8}{'core':>8}{'core%':>8}{'strict':>8}{'strict%':>8}"]
        for kind in sorted(self.packets):
            n = self.packets[kind]
            lines.append(f"{kind:<18}{n:>8}{self.core[kind]:>8}{100 * self.core[kind] / n:>7.1f}%"
                         f"{self.strict[kind]:>8}{100 * self.strict[kind] / n:>7.1f}%")
        n, c, s = sum(self.packets.values()), sum(self.core.values()), sum(self.strict.values())
        lines.append(f"{'ALL':<18}{n:>8}{c:>8}{100 * c / max(n, 1):>7.1f}%{s:>8}{100 * s / max(n, 1):>7.1f}%")
        lines.append(f"\n{self.scenarios} scenarios compared, {sum(self.refused.values())} refused at load")
        for why, count in self.refused.most_common():
            lines.append(f"  refused x{count}: {why}")
        lines.append("\ndisagreement classes (packets, first seed:packet):")
        for sig, count in self.classes.most_common():
            lines.append(f"  {count:>5}  {sig}   [seed {self.examples[sig][0]}:{self.examples[sig][1]}]")
        return "\n".join(lines)


def _worker(args: tuple[list[int], bool, bool]) -> list[tuple[int, dict]]:
    """Run seeds with one tracer; return each seed's outcome as JSON (for the parent's tally)."""
    seeds, do_shrink, do_write = args
    from pathtrace.verify.tracing import DropTracer
    tracer = DropTracer(f"ptg{os.getpid()}")
    done: set[str] = set()
    results = []
    try:
        for seed in seeds:
            g = draw(seed)
            t0 = time.monotonic()
            out = run_seed(g, tracer)
            rec = {"refused": out.refused, "kernel": [o.to_json() for o in out.kernel],
                   "model": [o.to_json() for o in out.model], "secs": time.monotonic() - t0, "written": []}
            if do_shrink and not out.refused:
                for n, (p, k, m) in enumerate(zip(g.packets, out.kernel, out.model)):
                    sig = signature(p, k, m) if core_differences(k, m) else None
                    if sig is None or sig in done or any(sig in s for s in _recorded_classes()):
                        continue
                    done.add(sig)
                    small = shrink(g, n, sig, tracer)
                    if do_write:
                        rec["written"].append(str(write_case(small, sig, tracer)))
            results.append((seed, rec))
            print(f"seed {seed}: {len(g.packets)} packets, {rec['secs']:.1f}s"
                  + (f" refused: {out.refused}" if out.refused else ""), file=sys.stderr, flush=True)
    finally:
        tracer.close()
    return results


def _recorded_classes() -> list[str]:
    if not GENERATED.exists():
        return []
    return [json.loads(p.read_text()).get("class", "") for p in GENERATED.glob("*.json")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0-9")
    ap.add_argument("--report", action="store_true", help="print agreement per packet class and disagreement classes")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--shrink", action="store_true", help="shrink each new disagreement class")
    ap.add_argument("--write", action="store_true", help="with --shrink: write cases to tests/differential/generated")
    ap.add_argument("--show", type=int, metavar="SEED", help="print the host file and packets of SEED and exit")
    ap.add_argument("--explain", type=int, metavar="SEED", help="run SEED and print each disagreement in full")
    ap.add_argument("--record", metavar="SEEDS", help="write whole seeds as regression cases to generated/")
    args = ap.parse_args(argv)
    if args.record:
        from pathtrace.verify.tracing import DropTracer
        tracer = DropTracer(f"ptg{os.getpid()}")
        GENERATED.mkdir(exist_ok=True)
        try:
            for seed in parse_seeds(args.record):
                data = record_seed(draw(seed), tracer)
                (GENERATED / f"{data['name']}.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
                print(f"seed {seed}: {len(data['packets'])} packets, {len(data['known_disagreements'])} known "
                      f"disagreements, {sum(p['kernel'] is None for p in data['packets'])} unstable", file=sys.stderr)
        finally:
            tracer.close()
        return 0
    if args.explain is not None:
        g = draw(args.explain)
        out = run_seed(g)
        print(g.yaml())
        if out.refused:
            print("refused:", out.refused)
        for n, (p, k, m) in enumerate(zip(g.packets, out.kernel, out.model)):
            if core_differences(k, m):
                print(f"#{n} {p}\n  kernel {k}\n  model  {m}")
        return 0
    if args.show is not None:
        g = draw(args.show)
        print(g.yaml())
        for n, p in enumerate(g.packets):
            print(n, p)
        return 0
    from pathtrace.verify.netns import Unavailable, check_available
    try:
        check_available()
    except Unavailable as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return 77
    seeds = parse_seeds(args.seeds)
    chunks = [(seeds[i::args.jobs], args.shrink, args.write) for i in range(args.jobs)]
    if args.jobs > 1:
        from multiprocessing import Pool
        with Pool(args.jobs) as pool:
            parts = pool.map(_worker, chunks)
    else:
        parts = [_worker(chunks[0])]
    tally = Tally()
    for seed, rec in sorted(x for part in parts for x in part):
        out = Outcome(seed, rec["refused"], [Observation.from_json(o) for o in rec["kernel"]],
                      [Observation.from_json(o) for o in rec["model"]])
        tally.add(draw(seed), out)
        for path in rec["written"]:
            print(f"wrote {path}", file=sys.stderr)
    if args.report:
        print(tally.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
