"""The recorded samples (samples/record_real.py) against what the recorder observed.

These test the recordings themselves, not pathtrace's verdicts: every capture reads, the
host files load and describe the recorded interfaces, the three capture ways of one run
hold the same frames, and the truth sidecars (socket results, iptables counters,
conntrack) agree with the frames: one SYN-ACK from the host per accepted connection,
one RST or ICMP error per refused one, one echo reply per answered ping, the payload
bytes each socket sent and received.  The live test re-records into a temporary
directory (root, netns and the capture tools needed) and checks the same shape and truth.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from pathtrace.capture import read_frames
from pathtrace.host.loader import load_host

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
RULESETS = ROOT / "rulesets"
SCENARIOS = ["real-server", "real-router", "web-server-bidir", "home-router-bidir", "two-uplink-bidir"]
HOST_FILE = {"real-server": "real-server", "real-router": "real-router", "web-server-bidir": "web-server",
             "home-router-bidir": "home-router", "two-uplink-bidir": "two-uplink"}
ETH_P_IP, ETH_P_ARP = 0x0800, 0x0806
LINKTYPE_LINUX_SLL2 = 276


# ---- reading the captures -------------------------------------------------------------------

@dataclass(frozen=True)
class Pkt:
    """One IPv4 packet as captured: where, which way, and the fields the checks need."""

    iface: str
    sent: bool              # sent by the host (its MAC is the source)
    src: str
    dst: str
    proto: int
    ttl: int
    ip_id: int
    length: int
    sport: int = 0
    dport: int = 0
    flags: int = 0          # TCP flags
    payload: int = 0        # TCP/UDP payload bytes
    icmp: tuple[int, int] = (-1, -1)
    inner: tuple[str, str, int, int, int] | None = None   # embedded packet of an ICMP error: src, dst, proto, sport, dport


def parse_ipv4(data: bytes, iface: str, sent: bool) -> Pkt | None:
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    total, ip_id = struct.unpack("!HH", data[2:6])
    ttl, proto = data[8], data[9]
    src, dst = socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20])
    l4 = data[ihl:total]
    kw: dict = {}
    if proto == 6 and len(l4) >= 20:
        sport, dport = struct.unpack("!HH", l4[:4])
        kw = dict(sport=sport, dport=dport, flags=l4[13], payload=len(l4) - (l4[12] >> 4) * 4)
    elif proto == 17 and len(l4) >= 8:
        sport, dport = struct.unpack("!HH", l4[:4])
        kw = dict(sport=sport, dport=dport, payload=len(l4) - 8)
    elif proto == 1 and len(l4) >= 8:
        kw = dict(icmp=(l4[0], l4[1]))
        if l4[0] in (3, 11) and len(l4) >= 8 + 28:
            inner = l4[8:]
            iihl = (inner[0] & 0x0F) * 4
            isport, idport = struct.unpack("!HH", inner[iihl:iihl + 4])
            kw["inner"] = (socket.inet_ntoa(inner[12:16]), socket.inet_ntoa(inner[16:20]), inner[9], isport, idport)
    return Pkt(iface, sent, src, dst, proto, ttl, ip_id, total, **kw)


def sll2_ifindexes(path: Path) -> list[int]:
    """The interface index of every record of a LINUX_SLL2 pcap (read_frames does not keep it)."""
    data = path.read_bytes()
    magic = data[:4]
    e = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    assert struct.unpack(e + "I", data[20:24])[0] == LINKTYPE_LINUX_SLL2
    out, pos = [], 24
    while pos + 16 <= len(data):
        caplen = struct.unpack(e + "I", data[pos + 8:pos + 12])[0]
        out.append(struct.unpack("!I", data[pos + 16 + 4:pos + 16 + 8])[0])
        pos += 16 + caplen
    return out


@dataclass
class Recording:
    """One scenario's files in one directory."""

    name: str
    dir: Path
    truth: dict
    host_macs: dict[bytes, str]       # MAC -> interface

    @classmethod
    def load(cls, name: str, directory: Path) -> "Recording":
        truth = json.loads((directory / f"{name}.truth.json").read_text())
        macs = {bytes.fromhex(v["mac"].replace(":", "")): k for k, v in truth["interfaces"].items()}
        return cls(name, directory, truth, macs)

    def files(self) -> list[Path]:
        return [self.dir / f for f in self.truth["captures"]]

    def frames_by_iface(self, path: Path) -> list[tuple[str, int, bytes, bool]]:
        """(interface, ethertype, network-layer bytes, sent by the host) per frame of one capture."""
        frames = list(read_frames(str(path)))
        if path.name.endswith("-any.pcap"):
            names = {v["ifindex"]: k for k, v in self.truth["interfaces"].items()}
            names[self.truth["ifindex_lo"]] = "lo"
            ifaces = [names[i] for i in sll2_ifindexes(path)]
            sent = [f.pkt_type == 4 for f in frames]
        elif path.suffix == ".pcapng":
            ifaces = [f.ifname for f in frames]
            sent = [f.src_mac in self.host_macs for f in frames]
        else:
            argv = self.truth["captures"][path.name]["tool"].split()
            ifaces = [argv[argv.index("-i") + 1]] * len(frames)
            sent = [f.src_mac in self.host_macs for f in frames]
        out = []
        for f, i, s in zip(frames, ifaces, sent):
            payload = f.payload
            if f.ethertype == ETH_P_IP and len(payload) >= 4:
                payload = payload[:struct.unpack("!H", payload[2:4])[0]]   # without Ethernet padding
            elif f.ethertype == ETH_P_ARP:
                payload = payload[:28]
            out.append((i, f.ethertype, payload, s))
        return out

    def packets(self) -> list[Pkt]:
        """IPv4 packets of the scenario's most complete capture (all interfaces)."""
        best = max(self.files(), key=lambda p: (p.suffix == ".pcapng", p.name.endswith("-any.pcap")))
        out = []
        for iface, etype, data, sent in self.frames_by_iface(best):
            if etype == ETH_P_IP and (p := parse_ipv4(data, iface, sent)) is not None:
                out.append(p)
        return out

    def host_addresses(self) -> set[str]:
        return {a.split("/")[0] for v in self.truth["interfaces"].values() for a in v["addresses"]}


def recordings(directory: Path = SAMPLES) -> list[Recording]:
    return [Recording.load(n, directory) for n in SCENARIOS]


# ---- the checks (shared by the committed samples and the live re-recording) -----------------

def check_reads(rec: Recording) -> None:
    for path in rec.files():
        frames = list(read_frames(str(path)))
        assert len(frames) == rec.truth["captures"][path.name]["captured"], path.name
        assert not [f.error for f in frames if f.error], path.name
        assert path.stat().st_size < 100_000, path.name
        assert rec.truth["captures"][path.name].get("dropped", 0) == 0


def covers(rec: Recording, path: Path) -> list[str]:
    """The interfaces a capture file was taken on (the -i arguments of its tool)."""
    argv = rec.truth["captures"][path.name]["tool"].split()
    named = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-i"]
    return [*rec.truth["interfaces"], "lo"] if named == ["any"] else named


def check_same_frames(rec: Recording) -> None:
    """Every way of capturing one run holds the same frames per interface (order aside)."""
    for iface in [*rec.truth["interfaces"], "lo"]:
        ways = {path.name: Counter((etype, data, sent) for i, etype, data, sent in rec.frames_by_iface(path)
                                   if i == iface)
                for path in rec.files() if iface in covers(rec, path)}
        for name, frames in ways.items():
            assert frames == next(iter(ways.values())), f"{rec.name}: {name} differs on {iface}"
            if iface != "lo":
                assert sum(frames.values()) > 0, (rec.name, iface)


def check_host_file(rec: Recording) -> None:
    host = load_host(str(RULESETS / f"{HOST_FILE[rec.name]}.yaml"))
    ifaces = {i.name: i for i in host.interfaces if i.name != "lo"}
    assert set(ifaces) == set(rec.truth["interfaces"])
    for name, want in rec.truth["interfaces"].items():
        assert ifaces[name].mac.hex(":") == want["mac"]
        assert [f"{socket.inet_ntoa(struct.pack('!I', a))}/{p}" for a, p in ifaces[name].addresses] == want["addresses"]
        if hasattr(ifaces[name], "ifindex") and ifaces[name].ifindex is not None and rec.name.startswith("real-"):
            assert ifaces[name].ifindex == want["ifindex"]


def tcp_events(rec: Recording) -> list[dict]:
    return [e for e in rec.truth["events"] if e["op"] == "tcp"]


def split(addr: str) -> tuple[str, int]:
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def own_sends(pkts: list[Pkt]) -> list[Pkt]:
    """Packets the host sent itself: sent ones that are not the forwarded copy of a received one
    (same IP id, length and protocol on another interface, one TTL more)."""
    received = Counter((p.iface, p.ip_id, p.length, p.proto, p.ttl) for p in pkts if not p.sent)
    ifaces = {p.iface for p in pkts}
    out = []
    for p in pkts:
        if not p.sent:
            continue
        key = next(((i, p.ip_id, p.length, p.proto, p.ttl + 1) for i in ifaces
                    if i != p.iface and received[(i, p.ip_id, p.length, p.proto, p.ttl + 1)]), None)
        if key is None:
            out.append(p)
        else:
            received[key] -= 1
    return out


def check_synacks(rec: Recording) -> None:
    """The host answered exactly the connections its listeners accepted with a SYN-ACK."""
    synacks = {(p.sport, f"{p.dst}:{p.dport}") for p in own_sends(rec.packets())
               if p.proto == 6 and p.flags & 0x12 == 0x12}
    accepted = {(e["port"], e["peer"]) for e in rec.truth["host_sockets"] if e["server"] == "host" and e["proto"] == "tcp"}
    assert synacks == accepted
    # and each is a client's connected conversation (the others to the host's addresses were DNATed on)
    connected = {(split(e["dst"])[1], e["src"]) for e in tcp_events(rec) if e["result"] == "connected"}
    assert accepted <= connected


def check_refusals(rec: Recording) -> None:
    """Each refused socket operation has the frame that refused it: RST or ICMP error, from the host."""
    pkts = rec.packets()
    for e in rec.truth["events"]:
        errors = e.get("errors", [])
        if e["op"] == "ping":
            for err in errors:
                assert any(p.sent and p.icmp == (err["type"], err["code"]) and p.src == err["from"]
                           and p.inner and p.inner[1] == e["dst"] for p in pkts), e
            continue
        src, sport = split(e["src"])
        dst, dport = split(e["dst"])
        rst = [p for p in pkts if p.sent and p.proto == 6 and p.flags & 0x04 and (p.src, p.sport, p.dst, p.dport)
               == (dst, dport, src, sport)]
        icmp = [p for p in pkts if p.sent and p.inner and p.inner[3:] == (sport, dport) and p.dst == src]
        if e["result"] in ("ECONNREFUSED", "EHOSTUNREACH"):
            want = (3, 3) if e["result"] == "ECONNREFUSED" else (11, 0)
            assert len(rst) + len([p for p in icmp if p.icmp == want]) == 1 and len(icmp) <= 1, e
        else:   # connected, answered, timed out or refused locally: nothing refused it on the wire
            assert not icmp and (e["result"] == "connected" or not rst), e


def check_pings(rec: Recording) -> None:
    pkts = rec.packets()
    mine = rec.host_addresses()
    for e in rec.truth["events"]:
        if e["op"] != "ping" or e["dst"] not in mine:
            continue
        requests = [p for p in pkts if not p.sent and p.icmp == (8, 0) and p.src == e["src"] and p.dst == e["dst"]
                    and p.iface in rec.truth["interfaces"]]
        replies = [p for p in pkts if p.sent and p.icmp == (0, 0) and p.dst == e["src"] and p.src == e["dst"]]
        assert len(requests) >= e["sent"]
        assert len(replies) >= len(e["replies"])
    total_requests = sum(e["sent"] for e in rec.truth["events"] if e["op"] == "ping" and e["dst"] in mine)
    total_replies = sum(len(e["replies"]) for e in rec.truth["events"] if e["op"] == "ping" and e["dst"] in mine)
    assert sum(p.sent and p.icmp == (0, 0) and p.src in mine for p in pkts) == total_replies
    assert sum(not p.sent and p.icmp == (8, 0) and p.dst in mine for p in pkts) == total_requests


def check_payload_bytes(rec: Recording) -> None:
    """Per connected TCP conversation, the payload bytes on the wire are what the sockets sent."""
    pkts = rec.packets()
    for e in tcp_events(rec):
        src, sport = split(e["src"])
        dst, dport = split(e["dst"])
        per_iface: dict[str, list[int]] = {}
        for p in pkts:
            if p.proto != 6:
                continue
            if (p.src, p.sport, p.dst, p.dport) == (src, sport, dst, dport):
                per_iface.setdefault(p.iface, [0, 0])[0] += p.payload
            elif (p.src, p.sport, p.dst, p.dport) == (dst, dport, src, sport):
                per_iface.setdefault(p.iface, [0, 0])[1] += p.payload
        if e["result"] == "connected":
            assert [e["sent"], e["received"]] in per_iface.values(), (e, per_iface)
        else:
            assert all(v == [0, 0] for v in per_iface.values()), e


def check_conntrack(rec: Recording) -> None:
    """Every conversation that connected is in the host's conntrack table (TIME_WAIT) at the end."""
    lines = rec.truth["conntrack"]
    for e in tcp_events(rec):
        if e["result"] != "connected":
            continue
        src, sport = split(e["src"])
        dst, dport = split(e["dst"])
        key = f"src={src} dst={dst} sport={sport} dport={dport} "
        hits = [ln for ln in lines if key in ln]
        assert len(hits) == 1 and "ASSURED" in hits[0], e


def counters(rec: Recording, table: str, chain: str) -> dict:
    return rec.truth["iptables"][table]["chains"][chain]


def rule_packets(rec: Recording, table: str, chain: str, text: str) -> int:
    hits = [r["packets"] for r in counters(rec, table, chain)["rules"] if text in r["text"]]
    assert len(hits) == 1, (chain, text)
    return hits[0]


CHECKS = [check_reads, check_same_frames, check_host_file, check_synacks, check_refusals, check_pings,
          check_payload_bytes, check_conntrack]


# ---- the committed samples ------------------------------------------------------------------

@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
@pytest.mark.parametrize("name", SCENARIOS)
def test_recorded_sample(name: str, check) -> None:
    check(Recording.load(name, SAMPLES))


def test_server_counters_match_the_capture() -> None:
    rec = Recording.load("real-server", SAMPLES)
    pkts = [p for p in rec.packets() if p.iface == "eth0"]
    syn_to = Counter(p.dport for p in pkts if not p.sent and p.proto == 6 and p.flags & 0x12 == 0x02)
    assert rule_packets(rec, "filter", "INPUT", "tcp dpt:23 reject-with tcp-reset") == syn_to[23] == 1
    assert rule_packets(rec, "filter", "INPUT", "tcp dpt:3306") == syn_to[3306] >= 1
    # -m limit: each NEW echo request it let through was answered; the rest went to LOG and the policy
    pings = [e for e in rec.truth["events"] if e["op"] == "ping"]
    answered_ids = [e["id"] for e in pings if e["replies"]]
    unanswered = sum(e["sent"] for e in pings if not e["replies"])
    assert rule_packets(rec, "filter", "INPUT", "limit: avg 2/sec burst 4") == len(answered_ids)
    assert rule_packets(rec, "filter", "INPUT", "LOG") == counters(rec, "filter", "INPUT")["policy_packets"] \
        == unanswered > 0
    # the host's own sends: OUTPUT refused one datagram (EPERM, never on the wire) and a SYN (with retries)
    own = {e["dst"]: e["result"] for e in rec.truth["events"] if e["ns"] == "host"}
    assert own["192.0.2.53:123"] == "EPERM" and own["192.0.2.25:25"] == "timeout"
    assert not [p for p in pkts if p.dst == "192.0.2.25" or p.dport == 123]
    assert counters(rec, "filter", "OUTPUT")["policy_packets"] >= 2


def test_router_forwarding_matches_the_counters() -> None:
    rec = Recording.load("real-router", SAMPLES)
    pkts = rec.packets()
    lan = [p for p in pkts if p.iface == "lan0"]
    wan = [p for p in pkts if p.iface == "wan0"]
    # a forwarded packet shows on both sides with the same IP id and length, one TTL less
    wan_keys = Counter((p.ip_id, p.length, p.proto, p.ttl) for p in wan if p.sent)
    lan_keys = Counter((p.ip_id, p.length, p.proto, p.ttl) for p in lan if p.sent)
    out = sum(min(n, wan_keys[(i, ln, pr, t - 1)]) for (i, ln, pr, t), n in
              Counter((p.ip_id, p.length, p.proto, p.ttl) for p in lan if not p.sent).items())
    back = sum(min(n, lan_keys[(i, ln, pr, t - 1)]) for (i, ln, pr, t), n in
               Counter((p.ip_id, p.length, p.proto, p.ttl) for p in wan if not p.sent).items())
    forward = counters(rec, "filter", "FORWARD")
    accepted = sum(r["packets"] for r in forward["rules"] if r["target"] == "ACCEPT")
    assert out + back == accepted
    # MASQUERADE: LAN conversations leave from the WAN address with their source port
    for e in tcp_events(rec):
        src, sport = split(e["src"])
        if src.startswith("192.168.1.") and e["result"] == "connected":
            assert any(p.sent and p.src == "198.51.100.2" and p.sport == sport and p.flags & 0x12 == 0x02 for p in wan)
    # DNAT: the visitor's SYN to wan:8080 leaves lan0 for 192.168.1.10:80
    assert [p for p in lan if p.sent and p.dst == "192.168.1.10" and p.dport == 80 and p.flags & 0x12 == 0x02]
    assert rule_packets(rec, "filter", "FORWARD", "ctstate DNAT") == 1
    # REJECT in FORWARD: the SYN to port 25 never reaches the WAN
    assert rule_packets(rec, "filter", "FORWARD", "tcp dpt:25") == 1
    assert not [p for p in wan if p.dport == 25]
    # TTL-1 probes: answered by the router from its LAN address, not forwarded
    expired = [p for p in lan if p.sent and p.icmp == (11, 0)]
    assert len(expired) == 2 and {p.src for p in expired} == {"192.168.1.1"}
    assert not [p for p in wan if p.dport == 33434 or p.icmp == (8, 0) and p.ttl == 0]


def l4_checksum_ok(data: bytes) -> bool:
    """The TCP/UDP checksum of an IPv4 packet verifies (one's-complement sum over pseudo-header and segment)."""
    ihl = (data[0] & 0x0F) * 4
    total = struct.unpack("!H", data[2:4])[0]
    seg = data[ihl:total]
    buf = data[12:20] + struct.pack("!BBH", 0, data[9], len(seg)) + seg + b"\0" * (len(seg) % 2)
    acc = sum(struct.unpack(f"!{len(buf) // 2}H", buf))
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return acc == 0xFFFF


@pytest.mark.parametrize("name", SCENARIOS)
def test_checksums_as_on_a_real_wire(name: str) -> None:
    """Frames from the peers carry full checksums; the host's own TCP/UDP frames partial ones (tx offload)."""
    rec = Recording.load(name, SAMPLES)
    best = max(rec.files(), key=lambda p: p.suffix == ".pcapng")
    received, own_partial = [], 0
    for iface, etype, data, sent in rec.frames_by_iface(best):
        if etype != ETH_P_IP or data[9] not in (6, 17) or struct.unpack("!H", data[6:8])[0] & 0x3FFF:
            continue
        if not sent:
            received.append(l4_checksum_ok(data))
        elif data[12:16] in {socket.inet_aton(a) for a in rec.host_addresses()}:
            own_partial += not l4_checksum_ok(data)
    assert received and all(received)
    if any(e["server"] == "host" for e in rec.truth["host_sockets"]):   # the router only forwards TCP/UDP
        assert own_partial > 0


def test_bidirectional_samples_are_bidirectional() -> None:
    for name in ("web-server-bidir", "home-router-bidir", "two-uplink-bidir"):
        pkts = Recording.load(name, SAMPLES).packets()
        assert sum(p.sent for p in pkts) >= 10 and sum(not p.sent for p in pkts) >= 10, name


# ---- live: re-record and compare ------------------------------------------------------------

def live_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    missing = [t for t in ("ip", "iptables-restore", "iptables-save", "conntrack", "tcpdump", "dumpcap")
               if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)}"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "no network namespaces"
    return None


def shape(truth: dict) -> dict:
    """What must not change between runs: the sockets' results and bytes, the ruleset's decisions."""
    events = [(e["op"], e["src"], e["dst"], e.get("result"), e.get("sent"), e.get("received"),
               len(e.get("replies", [])), [(x["type"], x["from"]) for x in e.get("errors", [])])
              for e in truth["events"]]
    sockets = sorted((s["server"], s["port"], s["peer"], s["received"], s["sent"]) for s in truth["host_sockets"])
    rules = {(t, c): [r["packets"] for r in chain["rules"]]
             for t, table in truth["iptables"].items() for c, chain in table["chains"].items()}
    conntrack = sorted(" ".join(w for w in ln.split() if not w.isdigit()) for ln in truth["conntrack"])
    return {"events": events, "sockets": sockets, "rules": rules, "conntrack": conntrack}


@pytest.mark.skipif(live_unavailable() is not None, reason=str(live_unavailable()))
def test_live_recording_has_the_same_shape(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, str(SAMPLES / "record_real.py"), "--out", str(tmp_path / n),
                               "--rulesets", str(tmp_path / n), "--only", n], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for n in SCENARIOS]
    for n, proc in zip(SCENARIOS, procs):
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{n}: {out}"
    for name in SCENARIOS:
        new = Recording.load(name, tmp_path / name)
        old = Recording.load(name, SAMPLES)
        assert shape(new.truth) == shape(old.truth), name
        for f, counts in old.truth["captures"].items():
            got = new.truth["captures"][f]["captured"]
            assert abs(got - counts["captured"]) <= max(4, counts["captured"] // 20), (f, got, counts["captured"])
        for check in CHECKS:
            if check is not check_host_file:
                check(new)
        if name.startswith("real-"):
            written = (tmp_path / name / f"{name}.yaml").read_text()
            committed = (RULESETS / f"{name}.yaml").read_text()
            assert written == committed
