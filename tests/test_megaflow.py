"""The megaflow cache (pathtrace/megaflow.py) changes nothing but speed: counts-only replays of
captures full of new connections give the same verdict counts, rule and device counters,
conntrack entries (NAT ports, timeouts, TCP window state), neighbours and statistics with the
megaflow cache on and off.  The hosts and captures are drawn by the differential generator
(tests/differential/generate.py: hosts built independently of this cache) and from the shipped
rulesets, then multiplied into many new connections per path."""
from __future__ import annotations

import dataclasses
import random
import sys
from pathlib import Path

import pytest

from pathtrace.capture.linktypes import frame_from_ethernet
import tempfile

from pathtrace.host.loader import load_host
from pathtrace.megaflow import AddressClasses
from pathtrace.packet import build
from pathtrace.render.summary import SummaryCounter
from pathtrace.replay import Replayer, ReplayOptions, create_namespace

from test_flowcache import final_state

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
import workload  # noqa: E402
from differential import generate as gen  # noqa: E402


def load_host_text(text: str):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
        fh.write(text)
        fh.flush()
        return load_host(fh.name)


def tally(net, frames, mega: bool) -> tuple[dict, SummaryCounter, Replayer]:
    """A counts-only replay (what --summary and --counters run) and the state it leaves."""
    r = Replayer(net, ReplayOptions(record=False, emit_frames=False))
    if not mega:
        r.cache.mega = None
    counter = SummaryCounter()
    r.tally(iter(frames), counter)
    return final_state(net, r), counter, r


def compare(host_text: str, frames: list) -> int:
    """Replay with the megaflow cache and without; assert the same; return the megaflow hits."""
    on_state, on_count, r = tally(create_namespace(load_host_text(host_text)), frames, True)
    off_state, off_count, _ = tally(create_namespace(load_host_text(host_text)), frames, False)
    assert on_count.verdicts == off_count.verdicts
    assert on_count.emitted == off_count.emitted
    for key in off_state:
        assert on_state[key] == off_state[key], key
    return r.cache.mega.hits if r.cache.mega else 0


def _near(addr: str, r: random.Random) -> str:
    """The same address, a neighbour in its /24, or an unrelated one."""
    roll = r.random()
    if roll < 0.4:
        return addr
    if roll < 0.85:
        a = gen.aton(addr)
        return gen.ntoa((a & ~0xFF) | r.randrange(1, 255))
    return gen.ntoa(r.randrange(1, 0xDFFFFFFF))


def multiplied(g: gen.Gen, seed: int, copies: int = 6, raw: bool = False) -> list:
    """The scenario's packets, each followed by `copies` new connections like it (other ports, nearby
    or unrelated addresses, sometimes a bad checksum), 2 ms apart; as Frames, or with `raw` as
    (time, Ethernet bytes) for a pcap file."""
    r = random.Random(seed)
    out = []
    t = 1000.0
    for n, p in enumerate(g.packets):
        variants = [p]
        if not p.frag:
            for _ in range(copies):
                variants.append(dataclasses.replace(
                    p, sport=r.choice([p.sport, r.randrange(1, 65536)]), dport=r.choice([p.dport, r.randrange(1, 65536)]),
                    src=_near(p.src, r), dst=_near(p.dst, r), bad=r.choice(["", "", "", "", "ip", "l4"])))
        for v in variants:
            ifname, data = gen.frame(g, n, v)
            out.append((t, data) if raw else frame_from_ethernet(data, len(out), t, ifname))
            t += 0.002
    return out


def _seeds() -> list[int]:
    """PATHTRACE_MEGAFLOW_SEEDS=A-B widens the property to more drawn hosts (default 7000-7039)."""
    import os
    lo, _, hi = os.environ.get("PATHTRACE_MEGAFLOW_SEEDS", "7000-7039").partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


@pytest.mark.parametrize("seed", _seeds())
def test_generated_hosts_same_with_and_without_megaflow(seed):
    g = gen.draw(seed)
    compare(g.yaml(), multiplied(g, seed))


def test_generated_hosts_exercise_the_megaflow_cache():
    """The property above is not vacuous: across the drawn hosts, many packets are megaflow hits."""
    hits = 0
    for seed in range(7000, 7040):
        g = gen.draw(seed)
        hits += compare(g.yaml(), multiplied(g, seed))
    assert hits >= 200


def _scan_frames(n: int) -> list:
    eths = [workload._lan_eth(h) for h in range(2, 12)]
    frames = []
    for i in range(n):
        pkt = build.tcp_packet(f"192.168.1.{2 + i % 10}", f"203.0.113.{1 + i % 7}", 1024 + i % 3000,
                               [80, 443, 20005, 1003, 22][i % 5], "S" if i % 3 else "A", seq=i * 7919, window=64240)
        frames.append(frame_from_ethernet(eths[i % 10] + pkt, i, 1000.0 + i * 0.001))
    return frames


def test_scan_through_nat_router_is_served_and_identical():
    """The bench's router: SYNs and mid-stream ACKs of new connections, masqueraded (port clashes make
    the NAT search ports, which draws from the model's RNG), DNAT port forwards, stateful FORWARD."""
    host = workload.host_yaml(300)
    hits = compare(host, _scan_frames(1500))
    assert hits >= 1400


@pytest.mark.parametrize("rate", ["50/sec --limit-burst 20", "3/min", "1000/sec"])
def test_rate_limited_logging_is_served_and_identical(rate):
    """A `limit` match on the path (LOG rate limits, as ufw writes them): the megaflow cache runs its
    bucket per packet and serves only while it gives the learned result; the counts, the rule counters
    (those of the LOG rule say how many packets the bucket let through) and the state are the model's."""
    host = workload.host_yaml(120).replace(
        "  -A FORWARD -i eth1 -o eth0 -j ACCEPT",
        f"  -A FORWARD -p tcp -m limit --limit {rate} -j LOG --log-prefix \"fwd \"\n"
        "  -A FORWARD -i eth1 -o eth0 -j ACCEPT")
    assert "-m limit" in host
    hits = compare(host, _scan_frames(1500))
    assert hits >= 700, hits


def test_no_cache_agrees_on_a_scan(tmp_path):
    """Also against the whole model for every packet (--no-cache)."""
    host = workload.host_yaml(120)
    frames = _scan_frames(600)
    on_state, on_count, _ = tally(create_namespace(load_host_text(host)), frames, True)
    r = Replayer(create_namespace(load_host_text(host)), ReplayOptions(record=False, emit_frames=False, cache=False))
    counter = SummaryCounter()
    r.tally(iter(frames), counter)
    assert counter.verdicts == on_count.verdicts
    assert final_state(r.net, r) == on_state


@pytest.mark.parametrize("name", ["home-router.yaml", "real-router.yaml", "two-uplink.yaml", "web-server.yaml"])
def test_shipped_rulesets_same_with_and_without_megaflow(name):
    net = create_namespace(load_host(str(ROOT / "rulesets" / name)))
    r = random.Random(name)
    devs = [d for d in net.devices.values() if not d.loopback and d.addrs]
    addrs = [ifa.local for d in devs for ifa in d.addrs] + [0x08080808, 0xC0A80164, 0x0A000005]
    frames = []
    for i in range(800):
        dev = r.choice(devs)
        src = gen.ntoa((r.choice(addrs) & ~0xFF) | r.randrange(1, 255))
        dst = gen.ntoa((r.choice(addrs) & ~0xFF) | r.randrange(1, 255)) if r.random() < 0.7 else "93.184.216.34"
        proto = r.choice(["tcp", "tcp", "udp", "icmp"])
        if proto == "tcp":
            pkt = build.tcp_packet(src, dst, r.randrange(1024, 65536), r.choice([22, 80, 443, 8080, 25, 53, 3389]),
                                   r.choice(["S", "S", "A", "SA", "R"]), seq=r.randrange(1 << 32), window=29200)
        elif proto == "udp":
            pkt = build.udp_packet(src, dst, r.randrange(1024, 65536), r.choice([53, 67, 123, 500, 5353]), b"x" * 20)
        else:
            pkt = build.icmp_packet(src, dst, 8, 0, b"p" * 16, id=r.randrange(65536), seq=1)
        eth = dev.mac + bytes.fromhex("020000aabbcc") + b"\x08\x00"
        frames.append(frame_from_ethernet(eth + pkt, i, 1000.0 + i * 0.003, dev.name))
    host_text = (ROOT / "rulesets" / name).read_text()
    compare(host_text, frames)


def test_address_classes_are_longest_prefixes():
    c = AddressClasses({(0, 0), (0x0A000000, 8), (0x0A010000, 16), (0x0A010203, 32)}, {1000, 2000}, {22, 23})
    assert c.addr(0x0A010203) == (32 << 32) | 0x0A010203
    assert c.addr(0x0A010204) == c.addr(0x0A01FFFF) == (16 << 32) | 0x0A010000
    assert c.addr(0x0A020000) == (8 << 32) | 0x0A000000
    assert c.addr(0x0B000000) == 0
    assert c.ports(999, 21) != c.ports(1000, 21)
    assert c.ports(1000, 21) == c.ports(1999, 21)
    assert c.ports(5, 22) != c.ports(5, 21) and c.ports(5, 23) == c.ports(5, 9999)


@pytest.mark.parametrize("rule,why", [
    ("-A FORWARD -m recent --name x --rcheck -j DROP", "match recent"),
    ("-A FORWARD -j MARK --set-mark 1", "target MARK"),
    ("-A FORWARD -s 10.0.0.0/255.0.255.0 -j DROP", "non-contiguous address mask"),
    ("-A FORWARD -m conntrack --ctorigdst 10.0.0.1 -j DROP", "match conntrack on tuples or expiry"),
    ("-A FORWARD -p tcp --dport 9 -j DROP", None),
])
def test_paths_through_rules_it_cannot_serve_are_not_learned(rule, why):
    """The bench router with one more FORWARD rule before its LAN->WAN accept: a SYN's path goes
    through FORWARD, so the rule decides whether the path may become a megaflow."""
    host = workload.host_yaml(10).replace("-A FORWARD -i eth1 -o eth0 -j ACCEPT",
                                          f"{rule}\n  -A FORWARD -i eth1 -o eth0 -j ACCEPT")
    net = create_namespace(load_host_text(host))
    _, _, r = tally(net, _scan_frames(40), True)
    mega = r.cache.mega
    assert mega.off is None
    learned = sum(1 for _ in mega.entries)
    if why is None:
        assert learned and set(mega.refused) <= {"neighbour state changed"}     # (the first SYN resolves hh)
    else:
        # (stateful matches make the path uncacheable before the megaflow cache is asked)
        assert not learned and (mega.refused.get(why) or r.cache.refused.get(why))


# ---- captures nobody wrote for this cache: the shipped samples (real ones recorded in namespaces
# among them) and the shared corpus, each through the CLI's counts-only output ------------------
def _cli_counts(host: Path, capture: Path, monkeypatch, mega: bool) -> str:
    from click.testing import CliRunner

    from pathtrace.cli import main
    monkeypatch.setenv("PATHTRACE_MEGAFLOW", "1" if mega else "0")
    res = CliRunner().invoke(main, ["replay", str(host), str(capture), "--summary", "--counters", "--conntrack",
                                    "--no-progress"])
    assert res.exit_code in (0, 1), res.output
    return res.output


def _pairs() -> list[tuple[Path, Path]]:
    from helpers import CORPUS
    hosts = sorted(p for p in (ROOT / "rulesets").glob("*.yaml") if not p.name.endswith(".expect.yaml"))
    pairs = []
    for host in hosts:
        stem = host.stem.removesuffix("-nft")
        pairs += [(host, c) for c in sorted((ROOT / "samples").glob(stem + "*.pcap*"))]
    corpus = sorted((CORPUS / "pcaps").glob("*.pcap*")) if (CORPUS / "pcaps").is_dir() else []
    pairs += [(ROOT / "rulesets" / "home-router.yaml", c) for c in corpus]
    return pairs


@pytest.mark.parametrize("host,capture", _pairs(), ids=lambda p: p.name)
def test_samples_and_corpus_same_with_and_without_megaflow(host, capture, monkeypatch):
    assert _cli_counts(host, capture, monkeypatch, True) == _cli_counts(host, capture, monkeypatch, False)


def test_relearned_paths_keep_their_counts():
    """The gateway's neighbour entry is a learned one (reachable) and the gateway announces itself
    every 100 packets, alternately with a new MAC and its own (gratuitous ARP): each change fails the
    megaflow's neighbour guard, the next SYN runs the whole model and its path is learned again under
    the same key; the hits counted on the entry it replaces must not be lost."""
    host = workload.host_yaml(50).replace(f"lladdr {workload.GATEWAY_MAC} permanent",
                                          f"lladdr {workload.GATEWAY_MAC} reachable")
    frames = _scan_frames(1500)
    for i in range(100, len(frames), 100):
        mac = workload.GATEWAY_MAC if i % 200 else "02:00:00:00:00:fd"
        garp = build.ether("ff:ff:ff:ff:ff:ff", mac, 0x0806,
                           build.arp("reply", mac, "198.51.100.254", "ff:ff:ff:ff:ff:ff", "198.51.100.254"))
        frames[i] = dataclasses.replace(frame_from_ethernet(garp, i, frames[i].ts), ifname="eth0")
    net = create_namespace(load_host_text(host))
    _, _, r = tally(net, frames, True)
    assert r.cache.mega.hits > 1000 and r.cache.mega.relearned >= 5
    compare(host, frames)


def test_full_table_runs_the_model():
    """With nf_conntrack_max reached, a new connection is the model's to decide (early_drop or a drop):
    the megaflow cache steps aside, and the outcome is the same with it and without."""
    host = workload.host_yaml(50).replace("sysctl:\n", "sysctl:\n  net.netfilter.nf_conntrack_max: 300\n")
    frames = _scan_frames(1200)
    net = create_namespace(load_host_text(host))
    state, counts, r = tally(net, frames, True)
    assert r.cache.mega.hits > 200
    assert sum(n for (verdict, _), n in counts.verdicts.items() if verdict == "DROP") > 0 or \
        net.nf.conntrack.stats["early_drop"] > 0
    compare(host, frames)


# ---- known connections: handshakes, first replies, state changes ---------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from test_flowcache import EVENT, _conversation  # noqa: E402

CONVERSATION = st.tuples(st.lists(EVENT, min_size=0, max_size=12), st.integers(2, 9), st.booleans())


def _conversations(drawn: list, t0: float = 1000.0) -> list:
    """Masqueraded TCP connections through the bench router (test_flowcache's conversation builder),
    each from its own client port, interleaved by time."""
    frames = []
    for k, (events, host, options) in enumerate(drawn):
        frames += _conversation(events, t0 + k * 0.0003, options=options, isn=(1000 + 7919 * k, 5000 + 104729 * k),
                                client=f"192.168.1.{host}", sport=40000 + k)
    frames.sort(key=lambda f: f.ts)
    return [dataclasses.replace(f, index=i) for i, f in enumerate(frames)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(CONVERSATION, min_size=2, max_size=8))
def test_random_conversations_same_with_and_without_megaflow(drawn):
    compare(workload.host_yaml(60), _conversations(drawn))


def test_handshakes_are_served():
    """2,000 conversations' handshakes and first data: after the first few connections, the SYN, the
    SYN-ACK (de-masqueraded to an on-link client: its own neighbour entry), the ACK and each side's first
    data segment are megaflow hits."""
    events = [(0, "PA", 0, 0, 100, 0.001, 0), (1, "PA", 0, 0, 100, 0.001, 0), (0, "A", 0, 0, 0, 0.001, 0)]
    frames = _conversations([(events, 2 + k % 20, False) for k in range(300)])
    hits = compare(workload.host_yaml(60), frames)
    assert hits > 0.9 * len(frames)


def test_bad_icmp_checksum_of_a_known_ping_is_not_served():
    """Regression (hypothesis, test_flowcache_oneway): nf_conntrack_in checks an ICMP message
    (nf_conntrack_icmpv4_error) before looking its connection up, so a known ping's corrupted request
    is INVALID; the megaflow of the ping's steady state must not count it as the others."""
    from test_flowcache_oneway import _icmp_frames
    frames = _icmp_frames([(0, 0.001, 0, 0, 7), (0, 0.001, 0, 0, 7), (0, 0.001, 2, 0, 7)])
    compare(workload.host_yaml(60), frames)
