"""The megaflow cache's C lane for new connections (pathtrace/_megalane.c) changes nothing but speed:
a counts-only replay of a pcap full of SYNs, new UDP flows and pings leaves the same state whether the C
lane, the Python megaflow cache or no megaflow cache at all made each connection - every field of every
conntrack entry and its TCP state, NAT's by-source index, the NAT port search's RNG, statistics,
rule and device counters, neighbours and the verdict counts.

The packets are drawn at random: echo requests (new and repeated ids), UDP datagrams (with and without
checksums, wrong lengths), TCP options (window scale, SACK-permitted, MSS, timestamps, NOPs,
malformed lists), windows including 0, SYNs carrying data, bad IP and TCP checksums, clients that
reuse source ports towards the same servers (so source NAT must search for ports), DNAT port
forwards, and NAT rules of every kind the lane implements (MASQUERADE, SNAT to an address or a port
range, --random, --random-fully).  Captures go through a pcap file: the lane serves records straight
from the reader's buffer."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import dpkt
import pytest

from pathtrace.capture import read_frames
from pathtrace.packet import build
from pathtrace.render.summary import SummaryCounter
from pathtrace.replay import Replayer, ReplayOptions, create_namespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
import workload  # noqa: E402
from test_flowcache import final_state  # noqa: E402
from test_megaflow import load_host_text, multiplied  # noqa: E402
from differential import generate as gen  # noqa: E402

fastpath = pytest.importorskip("pathtrace._fastpath")
if not hasattr(fastpath, "MegaLane"):       # pragma: no cover - an old build
    pytest.skip("the C accelerator has no MegaLane", allow_module_level=True)

NAT_RULES = {
    "masquerade": "-A POSTROUTING -o eth0 -j MASQUERADE",
    "snat-ports": "-A POSTROUTING -o eth0 -p tcp -j SNAT --to-source 198.51.100.1:2000-2999",
    "snat-random": "-A POSTROUTING -o eth0 -j SNAT --to-source 198.51.100.1 --random",
    "snat-fully": "-A POSTROUTING -o eth0 -j MASQUERADE --random-fully",
    "snat-address": "-A POSTROUTING -o eth0 -s 192.168.1.0/28 -j SNAT --to-source 198.51.100.1",
}


# conntrack settings the lane reads: a short SYN_SENT timeout (entries expire and are deleted while the
# lane runs), a table limit (the model's early_drop), no checksum verification, a short max_retrans
SYSCTLS = {
    "default": {},
    "short": {"nf_conntrack_tcp_timeout_syn_sent": 4, "nf_conntrack_tcp_timeout_max_retrans": 2},
    "limit": {"nf_conntrack_max": 250, "nf_conntrack_tcp_timeout_syn_sent": 30},
    "nocheck": {"nf_conntrack_checksum": 0},
}


def host_text(nat: str, rules: int = 60, sysctl: str = "default") -> str:
    text = workload.host_yaml(rules).replace(NAT_RULES["masquerade"], NAT_RULES[nat])
    extra = "".join(f"  net.netfilter.{k}: {v}\n" for k, v in SYSCTLS[sysctl].items())
    return text.replace("  net.ipv4.ip_forward: 1\n", "  net.ipv4.ip_forward: 1\n" + extra)


def _options(r: random.Random) -> bytes:
    """A SYN's option list: the usual ones in random order and padding, sometimes malformed."""
    parts = []
    if r.random() < 0.7:
        parts.append(b"\x02\x04" + r.choice([1460, 536, 9000]).to_bytes(2, "big"))
    if r.random() < 0.6:
        parts.append(b"\x01\x03\x03" + bytes([r.choice([0, 7, 14, 15, 200])]))
    if r.random() < 0.6:
        parts.append(b"\x04\x02")
    if r.random() < 0.4:
        parts.append(b"\x08\x0a" + r.randbytes(8))
    r.shuffle(parts)
    opts = b"".join(parts)
    roll = r.random()
    if roll < 0.05:
        opts += b"\x03\x07\x01"                  # a length running past the list
    elif roll < 0.1:
        opts = b"\x00" + opts                    # end of list first
    return opts + b"\x00" * (-len(opts) % 4)


def syn_frames(seed: int, n: int) -> list[tuple[float, bytes]]:
    """Random SYNs, UDP datagrams and echo requests from a few LAN clients (reused source ports: NAT clashes) to a few
    servers and the router's DNAT port forwards, with some ACKs, repeated packets (known connections),
    bad checksums and UDP lengths among them."""
    r = random.Random(seed)
    out = []
    t = 1000.0
    sent: list[bytes] = []
    for i in range(n):
        if sent and r.random() < 0.05:
            frame = r.choice(sent)               # a retransmitted SYN: a known connection
        else:
            client = r.randrange(2, 14)
            dport = r.choice([80, 443, 22, 53, 20000 + r.randrange(0, 5), r.randrange(1, 65536)])
            sport = r.choice([1024, 40000, 40001, r.randrange(1, 65536)])
            src, dst = f"192.168.1.{client}", f"203.0.113.{r.randrange(1, 4)}"
            payload = r.randbytes(r.choice([0, 0, 0, 1, 20]))
            roll = r.random()
            if roll < 0.12:                      # an echo request: a new id, or one seen before
                pkt = bytearray(build.icmp_packet(src, dst, 8, 0, payload + r.randbytes(r.choice([0, 8, 56])),
                                                  id=r.choice([7, 8, r.randrange(65536)]), seq=r.randrange(65536)))
            elif roll < 0.4:                     # a UDP datagram: DNS, syslog, a flood
                pkt = bytearray(build.udp_packet(src, dst, sport, dport, payload + r.randbytes(r.choice([0, 7, 40]))))
                roll = r.random()
                if roll < 0.1:
                    pkt[26:28] = b"\0\0"         # no checksum
                elif roll < 0.13:
                    pkt[24:26] = (int.from_bytes(pkt[24:26], "big") + r.choice([-8, 1, 3])).to_bytes(2, "big")
            else:
                flags = "S" if r.random() < 0.8 else r.choice(["SEC", "SP", "SE", "A", "SA", "SF", "SR"])
                pkt = bytearray(build.tcp_packet(src, dst, sport, dport, flags, seq=r.getrandbits(32),
                                                 window=r.choice([0, 1, 512, 64240, 65535]), payload=payload,
                                                 options=_options(r)))
            roll = r.random()
            if roll < 0.03:
                pkt[10] ^= 0xFF                  # IP header checksum
            elif roll < 0.06:
                pkt[-1] ^= 0x5A                  # the transport checksum (its last byte: data or a header field)
            frame = workload._lan_eth(client) + bytes(pkt)
            if r.random() < 0.2:
                sent.append(frame)
        out.append((t, frame))
        t += r.choice([0.0005, 0.002, 0.5, 3.0])   # and a gc sweep every 5 s of capture time
    return out


def write_pcap(path: Path, frames: list[tuple[float, bytes]]) -> Path:
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for t, frame in frames:
            w.writepkt(frame, ts=t)
    return path


def full_state(net, r: Replayer) -> dict:
    """final_state plus every slot of every entry and its TCP state, NAT's by-source index (its order
    too: find_appropriate_src takes the newest) and the RNG's position."""
    table = getattr(net.nf, "conntrack", None) if net.nf is not None else None
    out = final_state(net, r)
    if table is None:
        return out

    def slots(o):
        return None if o is None else tuple(
            [slots(x) for x in v] if isinstance(v, list) else v
            for v in (getattr(o, f) for f in o.__slots__))

    out["entries"] = [(ct.seq, ct.orig, ct.reply, ct.status, ct.mark, ct._timeout, ct.masq_index, ct.zone,
                       ct.labels, ct.nat_trace, slots(ct.proto)) for ct in table.conns.values()]
    out["hash"] = sorted((t, ct.seq, d) for t, (ct, d) in table.hash.items())
    out["bysource"] = sorted((k, [ct.seq for ct in v]) for k, v in table.bysource.items())
    out["rng"] = table.rng.getstate()
    out["stats"] = sorted(table.stats.items())
    return out


def replay(host: str, pcap: Path, mode: str, monkeypatch) -> tuple[dict, SummaryCounter, Replayer]:
    """mode: 'lane' (C accelerator, megaflow on), 'python' (the Python megaflow), 'none' (no megaflow)."""
    monkeypatch.setenv("PATHTRACE_PURE_PYTHON", "1" if mode == "python" else "0")
    net = create_namespace(load_host_text(host))
    r = Replayer(net, ReplayOptions(record=False, emit_frames=False))
    if mode == "none":
        r.cache.mega = None
    counter = SummaryCounter()
    r.tally(read_frames(str(pcap)), counter)
    r.flush()
    return full_state(net, r), counter, r


def assert_same(host: str, pcap: Path, monkeypatch) -> int:
    """The three replays agree; returns how many SYNs the C lane served."""
    lane_state, lane_count, r = replay(host, pcap, "lane", monkeypatch)
    for mode in ("python", "none"):
        state, count, _ = replay(host, pcap, mode, monkeypatch)
        assert lane_count.verdicts == count.verdicts, mode
        assert lane_count.emitted == count.emitted, mode
        for key in state:
            assert lane_state[key] == state[key], (mode, key)
    return r.cache.mega.lane_served if r.cache.mega is not None else 0


def _seeds() -> list[int]:
    """PATHTRACE_MEGALANE_SEEDS=A-B widens the property to more drawn captures (default 0-2)."""
    import os
    lo, _, hi = os.environ.get("PATHTRACE_MEGALANE_SEEDS", "0-2").partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


@pytest.mark.parametrize("nat", sorted(NAT_RULES))
@pytest.mark.parametrize("seed", _seeds())
def test_random_syns_same_with_the_lane_the_python_megaflow_and_none(nat, seed, tmp_path, monkeypatch):
    pcap = write_pcap(tmp_path / "syns.pcap", syn_frames(seed * 31 + len(nat), 1200))
    served = assert_same(host_text(nat), pcap, monkeypatch)
    assert served >= 200, served            # the lane did serve: the comparison is not vacuous


@pytest.mark.parametrize("sysctl", sorted(set(SYSCTLS) - {"default"}))
def test_conntrack_settings_same_with_the_lane(sysctl, tmp_path, monkeypatch):
    """Entries expiring and deleted while the lane runs, a full table, checksums not verified."""
    pcap = write_pcap(tmp_path / "syns.pcap", syn_frames(7, 1500))
    served = assert_same(host_text("masquerade", sysctl=sysctl), pcap, monkeypatch)
    assert served >= 300, served


def test_a_replayed_host_is_still_collected(tmp_path, monkeypatch):
    """The lane's entries are not tracked by the cyclic collector while in the table; once the replay
    is over they are again, so a host that is no longer used is freed (no leak per replay)."""
    import gc
    import weakref
    pcap = write_pcap(tmp_path / "syns.pcap", syn_frames(3, 800))
    _, _, r = replay(host_text("masquerade", sysctl="short"), pcap, "lane", monkeypatch)
    table = r.net.nf.conntrack
    assert r.cache.mega.lane_served > 100 and table.conns
    assert all(gc.is_tracked(ct) for ct in table.conns.values())
    assert all(gc.is_tracked(v) for v in table.hash.values())
    gone = weakref.ref(table)
    del r, table
    gc.collect()
    assert gone() is None


def test_the_bench_scan_is_served_by_the_lane(tmp_path, monkeypatch):
    """bench/workload's scan: every packet a new connection, nearly every one a NAT port search."""
    pcap = tmp_path / "scan.pcap"
    workload.write_scan(pcap, 3000)
    served = assert_same(workload.host_yaml(200), pcap, monkeypatch)
    assert served >= 2900


def test_a_udp_flood_is_served_by_the_lane(tmp_path, monkeypatch):
    """Every datagram from a random source port (a flood, DNS from many clients): the lane serves the
    new flows, and keeps serving them after a repeated flow's packet (a known connection of the same
    class) taught the megaflow cache a path of its own."""
    r = random.Random(5)
    frames, t = [], 1000.0
    for i in range(3000):
        client = 2 + i % 12
        sport = r.randrange(1024, 65536) if r.random() < 0.95 else 40000    # a few repeats
        pkt = build.udp_packet(f"192.168.1.{client}", f"203.0.113.{1 + i % 3}", sport, 53, r.randbytes(30))
        frames.append((t, workload._lan_eth(client) + pkt))
        t += 0.001
    pcap = write_pcap(tmp_path / "flood.pcap", frames)
    served = assert_same(host_text("masquerade"), pcap, monkeypatch)
    assert served >= 2700, served


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_nat_port_exhaustion_is_the_models_drop(proto, tmp_path, monkeypatch):
    """SNAT to four ports and many clients to one server port: the port search finds no free tuple,
    the confirmation clashes and the kernel drops the packet (insert_failed).  The megaflow cache
    (lane or Python) hands such a packet to the model with the random numbers its search drew; it
    used to raise "a confirmation the learned path passed failed"."""
    host = workload.host_yaml(40).replace(
        NAT_RULES["masquerade"], f"-A POSTROUTING -o eth0 -p {proto} -j SNAT --to-source 198.51.100.1:2000-2003")
    make = build.tcp_packet if proto == "tcp" else build.udp_packet
    frames = []
    for i in range(300):
        client = 2 + i % 12
        pkt = make(f"192.168.1.{client}", "203.0.113.1", 30000 + i, 80)
        frames.append((1000.0 + i * 0.001, workload._lan_eth(client) + pkt))
    pcap = write_pcap(tmp_path / "exhaust.pcap", frames)
    assert_same(host, pcap, monkeypatch)
    state, count, r = replay(host, pcap, "lane", monkeypatch)
    assert dict(state["stats"])["insert_failed"] == 296
    assert r.cache.mega.aborted >= 290


def _host_seeds() -> list[int]:
    """PATHTRACE_MEGALANE_HOSTS=A-B: more hosts drawn by the differential generator (default 7000-7019)."""
    import os
    lo, _, hi = os.environ.get("PATHTRACE_MEGALANE_HOSTS", "7000-7019").partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


@pytest.mark.parametrize("seed", _host_seeds())
def test_generated_hosts_same_with_the_lane(seed, tmp_path, monkeypatch):
    """Hosts and packets drawn independently of this code (tests/differential/generate.py), each packet
    multiplied into new connections, written as a pcap (ingress then follows the destination MAC)."""
    g = gen.draw(seed)
    pcap = write_pcap(tmp_path / "drawn.pcap", multiplied(g, seed, raw=True))
    assert_same(g.yaml(), pcap, monkeypatch)


def test_generated_hosts_exercise_the_lane(tmp_path, monkeypatch):
    """The property above is not vacuous: the lane serves new connections on the drawn hosts."""
    served = 0
    for seed in range(7000, 7020):
        g = gen.draw(seed)
        pcap = write_pcap(tmp_path / f"drawn-{seed}.pcap", multiplied(g, seed, raw=True))
        _, _, r = replay(g.yaml(), pcap, "lane", monkeypatch)
        served += r.cache.mega.lane_served if r.cache.mega is not None else 0
    assert served >= 50, served


def test_rate_limited_paths_are_left_to_the_python_megaflow(tmp_path, monkeypatch):
    """A path through a `limit` match is not the lane's (its bucket is run in Python per packet): the
    replay agrees with the Python megaflow and with none, and the lane serves only the other paths."""
    host = host_text("masquerade").replace(
        "  -A FORWARD -i eth1 -o eth0 -j ACCEPT",
        "  -A FORWARD -p udp -m limit --limit 20/sec -j LOG\n  -A FORWARD -i eth1 -o eth0 -j ACCEPT")
    pcap = write_pcap(tmp_path / "syns.pcap", syn_frames(11, 1500))
    served = assert_same(host, pcap, monkeypatch)
    _, _, r = replay(host, pcap, "lane", monkeypatch)
    assert 100 <= served < r.cache.mega.hits


def _mutation_seeds() -> list[int]:
    """PATHTRACE_MEGALANE_MUTATIONS=A-B: more mutated captures (default 0-2 and the two that found a bug)."""
    import os
    text = os.environ.get("PATHTRACE_MEGALANE_MUTATIONS")
    if not text:
        return [0, 1, 2, 31, 56]
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


@pytest.mark.parametrize("seed", _mutation_seeds())
def test_mutated_frames_same_with_the_lane(seed, tmp_path, monkeypatch):
    """Frames of the random SYN and UDP captures with bytes of their Ethernet, IP and transport headers
    overwritten at random (lengths, header length, fragment bits, protocol, flags, offsets): the lane
    parses each one as the model does or leaves it to the model, never differently.  Seeds 31 and 56
    found the megaflow cache (in Python) running the conntrack gc for a frame the model drops before
    conntrack (a total length past the captured bytes), which moved later expiries."""
    r = random.Random(1000 + seed)
    frames = []
    for t, f in syn_frames(seed + 500, 1200):
        f = bytearray(f)
        if r.random() < 0.3:
            for _ in range(r.randrange(1, 4)):
                f[r.randrange(12, min(len(f), 14 + 40))] = r.randrange(256)
        if r.random() < 0.05:
            f = f[:r.randrange(14, len(f))]          # truncated in the capture
        frames.append((t, bytes(f)))
    pcap = write_pcap(tmp_path / "mutated.pcap", frames)
    served = assert_same(host_text(sorted(NAT_RULES)[seed % 5]), pcap, monkeypatch)
    assert served >= 50, served


@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_same_with_the_lane(e, tmp_path, monkeypatch):
    """The same random SYNs and datagrams in a pcapng (either byte order) whose interfaces are a host
    interface by name, an interface the host does not have (ingress by destination MAC) and a
    second section-wide name; some blocks say inbound in epb_flags."""
    from test_capture_direction import _flags, _pcapng
    r = random.Random(3)
    packets = [(r.choice([0, 0, 1, 2]), t, f, _flags(e, 0x1) if r.random() < 0.3 else None)
               for t, f in syn_frames(77, 1200)]
    pcap = tmp_path / "syns.pcapng"
    pcap.write_bytes(_pcapng(packets, e, ifaces=(("eth1", 1), ("any", 1), ("lan0", 1))))
    served = assert_same(host_text("snat-ports"), pcap, monkeypatch)
    assert served >= 200, served


def test_a_ping_flood_is_served_by_the_lane(tmp_path, monkeypatch):
    """Echo requests with ever new ids (hping3 --icmp, many pinging hosts): the lane makes each one's
    conntrack entry and NAT binding (the id is the port NAT searches)."""
    r = random.Random(9)
    frames = []
    for i in range(2000):
        client = 2 + i % 12
        pkt = build.icmp_packet(f"192.168.1.{client}", f"203.0.113.{1 + i % 3}", 8, 0, r.randbytes(56),
                                id=r.randrange(65536), seq=i & 0xFFFF)
        frames.append((1000.0 + i * 0.001, workload._lan_eth(client) + pkt))
    pcap = write_pcap(tmp_path / "pings.pcap", frames)
    for nat in ("masquerade", "snat-random"):
        served = assert_same(host_text(nat), pcap, monkeypatch)
        assert served >= 1900, (nat, served)
