"""nftables rulesets (issue 16): parsing, refusals with nft's line:column, nft_do_chain's evaluation.

Expected behaviour comes from the kernel: the nft hosts in rulesets/ are translations of the
iptables ones (iptables-restore-translate, then `nft list ruleset` on 6.x), so both must give
the same verdict, reason, egress and emitted frames for every packet of the same capture.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pathtrace.errors import HostFileError
from pathtrace.net.netfilter.nf_tables_parse import NftParseError, parse_ruleset

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus" / "rulesets"


def _replay(host: str, capture: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "pathtrace.cli", "replay", host, capture, "--format", "jsonl"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _outcome(rec: dict) -> tuple:
    return rec["verdict"], rec["reason"], rec["egress"], [e["packet"] for e in rec["emitted"]]


@pytest.mark.parametrize("ipt, nft, capture", [
    ("rulesets/web-server.yaml", "rulesets/web-server-nft.yaml", "samples/web-server.pcap"),
    ("rulesets/web-server.yaml", "rulesets/web-server-nft.yaml", "samples/web-server-bidir.pcap"),
    ("rulesets/home-router.yaml", "rulesets/home-router-nft.yaml", "samples/home-router.pcapng"),
    ("rulesets/home-router.yaml", "rulesets/home-router-nft.yaml", "samples/home-router-bidir.pcapng"),
])
def test_translated_host_gives_the_iptables_hosts_outcomes(ipt: str, nft: str, capture: str) -> None:
    a, b = _replay(ipt, capture), _replay(nft, capture)
    assert len(a) == len(b) > 5
    assert [_outcome(r) for r in a] == [_outcome(r) for r in b]
    # the nft host's decisions are nft_do_chain's, naming table, chain and rule handle
    steps = [s for r in b for s in r["path"] if s["fn"] == "nft_do_chain"]
    assert steps and all("handle" in s and "text" in s for s in steps)
    assert not any(s["fn"] == "ipt_do_table" for r in b for s in r["path"])


def _ruleset(text: str, **kw):
    return parse_ruleset(textwrap.dedent(text), "t.nft", **kw)


@pytest.mark.parametrize("text, where, words", [
    ("table ip6 x {\n}\n", (1, 7), "family ip6"),
    ("table bridge x {\n}\n", (1, 7), "family bridge"),
    ("table ip t {\n chain c {\n  tcp option maxseg size 1-500 drop\n }\n}\n", (3, 7), "tcp option"),
    ("table ip t {\n chain c {\n  queue num 1\n }\n}\n", (3, 3), "queue"),
    ("table ip t {\n chain c {\n  ip saddr 1.2.3.400 drop\n }\n}\n", (3, 12), "1.2.3.400"),
    ("table ip t {\n chain c {\n  jump nowhere\n }\n}\n", (3, 8), "does not exist"),
    ("table ip t {\n chain c {\n  type nat hook forward priority 0;\n }\n}\n", (3, 17), "forward"),
    ("table ip t {\n chain c {\n  ip saddr @nope drop\n }\n}\n", (3, 13), "does not exist"),
    ("table ip t {\n chain c {\n  tcp dport 99999 drop\n }\n}\n", (3, 13), "exceeds"),
    ("table ip t {\n chain c {\n  ip saddr 1.2.3.4 accept\n", (4, 1), "unexpected end of file"),
])
def test_refusals_name_line_column_and_feature(text: str, where: tuple[int, int], words: str) -> None:
    with pytest.raises(NftParseError) as exc:
        _ruleset(text)
    e = exc.value
    assert (e.line, e.col) == where, str(e)
    assert words in str(e) and str(e).startswith(f"t.nft:{where[0]}:{where[1]}-")


def test_jump_loops_and_nat_outside_nat_chains_are_refused() -> None:
    loop = """
        table ip t {
            chain in { type filter hook input priority 0; jump a
            }
            chain a { jump b
            }
            chain b { jump a
            }
        }
        """
    with pytest.raises(HostFileError, match="Too many levels of symbolic links"):
        _ruleset(loop)
    nat = """
        table ip t {
            chain in { type filter hook input priority 0;
                dnat to 10.0.0.1
            }
        }
        """
    with pytest.raises(HostFileError, match="Operation not supported"):
        _ruleset(nat)


def test_handles_follow_nft_batch_order() -> None:
    """Measured with nft 1.0.6 on 6.x (`nft -a list ruleset`): chains first, then sets, then rules."""
    rs = _ruleset("""
        table ip t {
            set s { type ipv4_addr; elements = { 1.2.3.4 }; }
            chain b { ip saddr @s accept
                ip daddr 1.1.1.1 drop; }
            chain a { type filter hook input priority filter; policy accept;
                tcp dport 22 jump b
                counter; }
            map m { type ifname : verdict; elements = { "lo" : accept }; }
        }
        """)
    t = rs.tables[0]
    assert (t.chains["b"].handle, t.chains["a"].handle, t.sets["s"].handle, t.sets["m"].handle) == (1, 2, 3, 4)
    assert [r.handle for r in t.chains["b"].rules + t.chains["a"].rules] == [5, 6, 7, 8]


@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is absent")
@pytest.mark.parametrize("name, refused", [
    ("ipt_nft_compat_0010.nft", None),
    ("moby_bridge_nat_masq.nft", None),
    ("nft_sets_0047nat.nft", None),
    ("nn_ongy_flat_share_2015.nft", None),
    ("nft_merge_reject.nft", (8, "family ip6")),
    ("nft_sample-ruleset.nft", (54, "tcp option")),
])
def test_corpus_rulesets_load_or_are_refused_by_line_and_feature(name: str, refused) -> None:
    path = CORPUS / name
    text = path.read_text()
    if refused is None:
        rs = parse_ruleset(text, str(path))
        assert sum(len(c.rules) for t in rs.tables for c in t.chains.values()) > 2
    else:
        with pytest.raises(NftParseError) as exc:
            parse_ruleset(text, str(path))
        assert exc.value.line == refused[0] and refused[1] in str(exc.value)


def test_every_corpus_nft_file_is_covered() -> None:
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus is absent")
    names = {p.name for p in CORPUS.glob("*.nft")}
    assert names == {"ipt_nft_compat_0010.nft", "moby_bridge_nat_masq.nft", "nft_sets_0047nat.nft",
                     "nn_ongy_flat_share_2015.nft", "nft_merge_reject.nft", "nft_sample-ruleset.nft"}


# ---- corpus pair A: the same rules as iptables-save and as native nft, hook by hook ------------------

def _nf(text: str, nft: bool):
    from types import SimpleNamespace

    from pathtrace.net.netfilter import Netfilter
    host = SimpleNamespace(ipsets={}, ipsets_line=0, path="host.yaml", iptables_path="rules", iptables_first_line=1,
                           iptables_text=None if nft else text, nftables_text=text if nft else None,
                           nftables_path="rules.nft", nftables_first_line=1)
    return Netfilter.from_config(host, None)


def _battery(seed: int, n: int):
    """Deterministic packets that reach every rule of pair A: sources, destinations, TTLs, flags, types."""
    import random

    from netfilter_helpers import ETH0, ETH1, icmp_payload, make_skb, tcp_payload, udp_payload
    from pathtrace.net.core.netdevice import NetDevice
    lo = NetDevice("lo", 1, b"\0" * 6, loopback=True)
    rng = random.Random(seed)
    for k in range(n):
        proto = rng.choice((6, 17, 1))
        if proto == 6:
            payload = tcp_payload(rng.choice((80, 1000, 1024, 5000)), rng.choice((23, 443, 80)),
                                  rng.choice((0x02, 0x12, 0x10, 0x01, 0x03, 0x04, 0x00)))
        elif proto == 17:
            payload = udp_payload(rng.choice((68, 5000)), rng.choice((42, 67, 68, 69, 70)))
        else:
            payload = icmp_payload(rng.choice((1, 2, 8, 0)), rng.choice((0, 3)))
        skb = make_skb(rng.choice(("1.2.3.4", "1.2.3.9", "1.5.6.7", "9.9.9.9", "0.0.0.0")),
                       rng.choice(("0.0.0.0", "10.0.0.1", "8.1.2.3", "100.1.1.1", "200.1.1.1", "255.255.255.255")),
                       proto, payload, ttl=rng.choice((1, 2, 3, 64, 254, 255)), now=k * 30.0)
        skb.pkt_type = rng.choice((0, 0, 1, 2))
        hook = rng.choice((1, 2))
        indev = rng.choice((ETH0, lo))
        outdev = rng.choice((lo, ETH1, NetDevice("lo0", 9, b"\0" * 6))) if hook == 2 else None
        yield skb, hook, indev, outdev


@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is absent")
def test_pair_a_iptables_and_nft_give_the_same_verdicts_and_counters() -> None:
    ipt = _nf((CORPUS / "ipt_nft_compat_0010.iptables-save").read_text(), nft=False)
    nft = _nf((CORPUS / "ipt_nft_compat_0010.nft").read_text(), nft=True)
    import copy
    verdicts = []
    for skb, hook, indev, outdev in _battery(16, 600):
        twin = copy.deepcopy(skb)
        a = ipt.hook(hook, skb, indev, outdev)
        b = nft.hook(hook, twin, indev, outdev)
        verdicts.append(a)
        assert a == b, (hook, skb.iph, bytes(skb.payload).hex())
    assert len(set(verdicts)) == 2          # both ACCEPT and DROP were exercised
    ipt_rules = [r for t in ipt.tables.values() for c in t.chains.values() for r in c.rules]
    nft_rules = [r for t in nft.nft.tables for c in t.chains.values() for r in c.rules]
    assert [r.pkts for r in ipt_rules] == [r.pkts for r in nft_rules]
    assert sum(1 for r in nft_rules if r.pkts) >= 15       # most rules were reached


# ---- corpus pair B: Docker's bridge network as iptables-save and as its nftables backend ---------------

PAIR_B_HOST = """
    name: docker-host
    interfaces:
      - name: eth0
        mac: 02:00:00:00:00:01
        addresses: [198.51.100.1/24]
      - name: br-dummy
        mac: 02:00:00:00:00:02
        addresses: [192.168.0.1/24]
    sysctl:
      net.ipv4.ip_forward: 1
    routes:
      - default via 198.51.100.254 dev eth0
    neighbours:
      - 198.51.100.254 dev eth0 lladdr 02:00:00:00:01:fe reachable
      - 192.168.0.2 dev br-dummy lladdr 02:00:00:00:02:02 reachable
      - 192.168.0.3 dev br-dummy lladdr 02:00:00:00:02:03 reachable
    sockets:
      - tcp 0.0.0.0:22
    {key}: {path}
    """


@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is absent")
def test_pair_b_docker_iptables_and_nftables_backends_agree(tmp_path: Path) -> None:
    from helpers import Rig
    from pathtrace.packet import build
    rigs = []
    for key, name in (("iptables-file", "moby_bridge_nat_masq.iptables-save"), ("nftables-file", "moby_bridge_nat_masq.nft")):
        (tmp_path / key).mkdir()
        rigs.append(Rig(tmp_path / key, PAIR_B_HOST.format(key=key, path=CORPUS / name)))
    wan, ctr = "02:00:00:00:01:fe", "02:00:00:00:02:02"
    cases = [
        ("eth0", build.tcp_packet("203.0.113.5", "198.51.100.1", 40000, 8080, "S"), wan),    # published port: DNAT
        ("br-dummy", build.tcp_packet("192.168.0.2", "203.0.113.5", 80, 40000, "SA", ack=1), ctr),   # its reply
        ("eth0", build.tcp_packet("203.0.113.5", "198.51.100.1", 40000, 8080, "A", seq=1, ack=1), wan),
        ("eth0", build.tcp_packet("203.0.113.5", "192.168.0.2", 40001, 80, "S"), wan),       # direct access: raw drop
        ("eth0", build.tcp_packet("203.0.113.5", "198.51.100.1", 40002, 22, "S"), wan),      # the host's own sshd
        ("br-dummy", build.tcp_packet("192.168.0.2", "203.0.113.9", 50000, 443, "S"), ctr),  # outgoing: masquerade
        ("br-dummy", build.tcp_packet("192.168.0.2", "192.168.0.3", 50001, 80, "S"), ctr),   # inter-container: ICC drop
        ("br-dummy", build.udp_packet("192.168.0.2", "203.0.113.9", 5353, 53, b"q"), ctr),
        ("eth0", build.udp_packet("203.0.113.5", "198.51.100.1", 5000, 8080, b"x"), wan),    # not published for UDP
        ("br-dummy", build.tcp_packet("192.168.0.2", "198.51.100.1", 50002, 8080, "S"), ctr),   # hairpin to the host
    ]
    outcomes, sends = [], []
    for dev, pkt, mac in cases:
        a, b = (r.send(dev, pkt, src_mac=mac) for r in rigs)
        assert _outcome_rec(a) == _outcome_rec(b), (dev, a.packet, _outcome_rec(a), _outcome_rec(b))
        outcomes.append(_outcome_rec(a)[:2])
        sends.append(_outcome_rec(b)[3])
    assert ("FORWARD", None) in outcomes and ("DROP", "NETFILTER_DROP") in outcomes
    assert "192.168.0.2.80" in sends[0][0]                     # DNAT to the container
    assert "198.51.100.1" in sends[5][0]                       # masqueraded behind eth0


def _outcome_rec(rec) -> tuple:
    from pathtrace.render.fields import emitted_summary
    return rec.verdict, rec.reason, rec.egress, [emitted_summary(e) for e in rec.emitted]


def test_json_of_nft_list_ruleset_gives_the_same_outcomes() -> None:
    """tests/data/nftables/home-router.json is `nft -j list ruleset` after loading home-router's translation."""
    a = _replay("rulesets/home-router.yaml", "samples/home-router-bidir.pcapng")
    b = _replay("tests/data/nftables/home-router-json.yaml", "samples/home-router-bidir.pcapng")
    assert [_outcome(r) for r in a] == [_outcome(r) for r in b]
    assert any(s["fn"] == "nft_do_chain" for r in b for s in r["path"])


def test_json_errors_name_the_object(tmp_path: Path) -> None:
    doc = {"nftables": [{"table": {"family": "ip", "name": "t", "handle": 1}},
                        {"chain": {"family": "ip", "table": "t", "name": "c", "handle": 1}},
                        {"rule": {"family": "ip", "table": "t", "chain": "c", "handle": 2,
                                  "expr": [{"queue": {"num": 1}}]}}]}
    with pytest.raises(HostFileError, match=r"nftables\[2\] \(rule\): not modelled: queue"):
        parse_ruleset(json.dumps(doc), "r.json")
    with pytest.raises(HostFileError, match="no \"nftables\" array"):
        parse_ruleset("{}", "r.json")


# ---- the replay cache: nft counters and tallies are kept by it, outcomes unchanged --------------------

def _bench_nft(rules: int) -> str:
    """bench/workload.py's router with its iptables rules written as nft rules (same order and meaning)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import workload
    text = workload.host_yaml(rules)
    head = text[:text.index("iptables: |")]
    filler = max(rules - 4, 0)
    dnat, fwd = min(filler // 10, 200), filler - min(filler // 10, 200)
    pre = [f'iifname "eth0" tcp dport {20000 + i} counter dnat to 192.168.2.{1 + i % 250}:{8000 + i}'
           for i in range(dnat)]
    forward = ["ct state established,related counter accept", "ct state invalid counter drop"]
    for i in range(fwd):
        a, b = divmod(i, 250)
        forward.append(f"ip saddr 10.{a % 250}.{b}.0/24 ip daddr 172.16.{a % 250}.{b + 1} tcp dport {1000 + i % 50000} "
                       f"counter {'accept' if i % 3 else 'drop'}")
    forward.append('iifname "eth1" oifname "eth0" counter accept')
    body = ["table ip nat {", "\tchain PREROUTING {", "\t\ttype nat hook prerouting priority dstnat; policy accept;",
            *("\t\t" + r for r in pre), "\t}", "\tchain POSTROUTING {",
            "\t\ttype nat hook postrouting priority srcnat; policy accept;", '\t\toifname "eth0" counter masquerade',
            "\t}", "}", "table ip filter {", "\tchain INPUT {", "\t\ttype filter hook input priority filter; policy accept;",
            "\t}", "\tchain FORWARD {", "\t\ttype filter hook forward priority filter; policy drop;",
            *("\t\t" + r for r in forward), "\t}", "}"]
    return head + "nftables: |\n" + "".join(f"  {line}\n" for line in body)


@pytest.mark.parametrize("record", [True, False])
def test_replay_cache_keeps_nft_counters_and_outcomes(tmp_path: Path, record: bool) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import workload
    from test_flowcache import assert_same
    from pathtrace.capture import read_frames
    host = tmp_path / "router-nft.yaml"
    host.write_text(_bench_nft(60))
    (tmp_path / "router.yaml").write_text(workload.host_yaml(60))
    cap = tmp_path / "flows.pcap"
    workload.write_capture(cap, 1500, 20)
    frames = list(read_frames(str(cap)))
    r = assert_same(host, frames, record=record, min_hits=0.8)      # records and final counters, cache on and off
    listing = r.net.nf.format_listing()
    assert "counter" in listing and "(packets 0 bytes 0)" in listing
    assert any(int(n) > 100 for n in __import__("re").findall(r"\(packets (\d+) bytes", listing))
    a = _replay(str(tmp_path / "router.yaml"), str(cap))
    b = _replay(str(host), str(cap))
    assert [_outcome(x) for x in a] == [_outcome(y) for y in b]


def test_mangled_rulesets_are_one_line_errors_never_tracebacks() -> None:
    """Deterministic mutations of a real listing (deletions, insertions of nft tokens): every outcome is
    a loaded ruleset or a HostFileError (the CLI's one-line, exit 2 error)."""
    import random
    base = (ROOT / "rulesets" / "home-router-nft.yaml").read_text()
    base = textwrap.dedent(base[base.index("nftables: |") + len("nftables: |\n"):])
    words = ["{", "}", ";", "\n", ",", ".", ":", "-", "/", "@", "$", "!=", "&", "|", "(", ")", '"', "#", "0",
             "99999999999", "1.2.3.4/99", "jump", "vmap", "map", "set", "ip", "tcp", "ct", "meta", "fib", "counter",
             "limit rate", "to", "dnat", "elements", "=", "type", "hook", "priority", "policy", "-1", "interval",
             "iifname &", "tcp flags", "\x00", "é", "٣", "ct mark set", "reject with", "typeof", "0x1ff"]
    rng = random.Random(16)
    loaded = refused = 0
    for _ in range(1500):
        chars = list(base)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(chars))
            if rng.random() < 0.5:
                del chars[pos]
            else:
                chars.insert(pos, rng.choice(words) + " ")
        try:
            parse_ruleset("".join(chars), "m.nft")
            loaded += 1
        except HostFileError as e:
            assert "\n" not in str(e).strip() and str(e).startswith("m.nft")
            refused += 1
    assert loaded and refused


# ---- the features host: every modelled statement on the packets that reach it ----------------------------

FEATURES = ROOT / "tests" / "data" / "nftables" / "features.yaml"
WAN, LAN = ("02:00:00:00:00:fe", "02:00:00:00:00:01"), ("02:00:00:00:01:10", "02:00:00:00:01:01")


def feature_packets() -> list[tuple[tuple[str, str], bytes]]:
    """(MACs, IP packet) for tests/data/nftables/features.yaml, one per rule or verdict path."""
    from pathtrace.packet import build
    t, u, i = build.tcp_packet, build.udp_packet, build.icmp_packet
    return [
        (WAN, t("198.51.100.9", "198.51.100.1", 40000, 22, "S")),        # vmap -> jump ssh -> return -> policy drop
        (LAN, t("192.168.1.10", "192.168.1.1", 40001, 22, "S")),         # jump ssh -> accept
        (WAN, t("198.51.100.50", "198.51.100.1", 40002, 22, "S")),       # goto sshlog -> log, accept
        (WAN, t("198.51.100.9", "198.51.100.1", 40003, 80, "S")),        # vmap accept
        # the clients reset those handshakes: no SYN-ACK retransmission a second later
        (LAN, t("192.168.1.10", "192.168.1.1", 40001, 22, "R", seq=1)),
        (WAN, t("198.51.100.50", "198.51.100.1", 40002, 22, "R", seq=1)),
        (WAN, t("198.51.100.9", "198.51.100.1", 40003, 80, "R", seq=1)),
        (WAN, t("198.51.100.9", "198.51.100.1", 40004, 23, "S")),        # reject with tcp reset
        (WAN, u("198.51.100.9", "198.51.100.1", 40005, 161, b"x")),      # concatenated set -> reject (icmpx)
        (WAN, t("198.51.100.9", "198.51.100.1", 40006, 8443, "S")),      # concatenated set, tcp -> reject (inet: RST? no: icmpx)
        (WAN, t("198.51.100.205", "198.51.100.1", 40007, 80, "S")),      # interval set -> admin-prohibited
        (WAN, i("198.51.100.9", "198.51.100.1", 8, 0, b"p1", id=7, seq=1)),   # limit burst 2
        (WAN, i("198.51.100.9", "198.51.100.1", 8, 0, b"p2", id=8, seq=2)),
        (WAN, i("198.51.100.9", "198.51.100.1", 8, 0, b"p3", id=9, seq=3)),   # over the limit: policy drop
        (LAN, t("192.168.1.10", "203.0.113.80", 40008, 443, "S")),       # forward, marks, masquerade
        (WAN, t("198.51.100.9", "198.51.100.1", 40009, 8080, "S")),      # dnat, ct status dnat accept
        (WAN, t("198.51.100.9", "198.51.100.1", 40010, 2222, "S")),      # dnat to a map
        (WAN, t("198.51.100.9", "198.51.100.1", 40011, 2224, "S")),      # not in the map: input, policy drop
        (WAN, u("198.51.100.9", "198.51.100.1", 40012, 5353, b"m")),     # notrack: untracked, policy drop
        (WAN, u("198.51.100.9", "198.51.100.255", 40013, 9, b"b")),      # fib daddr type broadcast
        (LAN, u("192.168.1.10", "192.168.1.1", 40014, 53, b"q")),        # iifname + udp dport accept
        (WAN, u("198.51.100.9", "198.51.100.1", 40015, 53, b"q")),       # same from the WAN: counter, policy drop
    ]


def write_feature_capture(path: Path) -> None:
    from pathtrace.packet import build
    from pathtrace.packet.pcapwriter import PcapWriter
    with PcapWriter(str(path)) as w:
        for k, ((src, dst), pkt) in enumerate(feature_packets()):
            dst_mac = dst if not pkt[16:20] == bytes([198, 51, 100, 255]) else "ff:ff:ff:ff:ff:ff"
            w.write(build.ether(dst_mac, src, 0x0800, pkt), 1000.0 + k * 0.01)


def test_features_host_paths(tmp_path: Path) -> None:
    """Verdicts that follow from the rules (the live test checks them against the kernel)."""
    cap = tmp_path / "features.pcap"
    write_feature_capture(cap)
    recs = _replay(str(FEATURES), str(cap))
    got = [(r["verdict"], r["reason"]) for r in recs]
    drop, local, fwd = ("DROP", "NETFILTER_DROP"), ("LOCAL_DELIVER", None), ("FORWARD", None)
    assert all(g != drop for g in got[4:7])                           # the resets pass (ct state established)
    del got[4:7], recs[4:7]
    assert got == [drop, local, local, local, drop, drop, drop, drop, local, local, drop, fwd, fwd, fwd, drop, drop,
                   drop, local, drop]
    sent = [[e["packet"] for e in r["emitted"]] for r in recs]
    assert "TCP [R.]" in sent[4][0] and "ICMP dest unreachable port" in sent[5][0]
    assert "admin prohibited" in sent[7][0]
    assert sent[11][0].startswith("IP 198.51.100.1.")                 # masqueraded
    assert "192.168.1.20.80" in sent[12][0] and "192.168.1.21.2222" in sent[13][0]
    steps = [s for r in recs for s in r["path"] if s["fn"] == "nft_log_eval"]
    assert len(steps) == 1 and steps[0]["prefix"] == "ssh "


def test_nft_command_scripts_as_iptables_restore_translate_writes_them() -> None:
    """add table / add chain ... { type ...; } / add rule lines (iptables-restore-translate 1.8.9 output of
    home-router's rules) replay as the iptables host does."""
    a = _replay("rulesets/home-router.yaml", "samples/home-router-bidir.pcapng")
    b = _replay("tests/data/nftables/home-router-translated.yaml", "samples/home-router-bidir.pcapng")
    assert [_outcome(r) for r in a] == [_outcome(r) for r in b]
    rs = _ruleset("""
        add table ip t
        add chain ip t c { type filter hook input priority 0; policy drop; }
        add rule ip t c tcp dport 22 accept
        insert rule ip t c iifname "lo" accept
        add set ip t s { type ipv4_addr; }
        add element ip t s { 10.0.0.1, 10.0.0.2 }
        """)
    c = rs.tables[0].chains["c"]
    assert [r.text for r in c.rules] == ['iifname "lo" accept', "tcp dport 22 accept"]
    assert len(rs.tables[0].sets["s"].elements) == 2
    with pytest.raises(NftParseError, match="not modelled: 'delete' commands"):
        _ruleset("delete table ip t\n")


# What nft -f on 6.x (nftables 1.0.6) accepts or refuses at load; test_nftables_live.py re-runs them on the
# kernel.  (chain line, rule) -> refused?
LOAD_CASES = [
    ("type filter hook prerouting priority 0;", "reject", False),
    ("type filter hook postrouting priority 0;", "reject", True),
    ("type nat hook prerouting priority -200;", "accept", True),
    ("type nat hook prerouting priority -199;", "masquerade", True),
    ("type nat hook postrouting priority 100;", "masquerade", False),
    ("type filter hook input priority 0;", "dnat to 1.2.3.4", True),
    ("type nat hook input priority 100;", "snat to 1.2.3.4", False),
    ("type nat hook output priority -100;", "redirect to :8080", True),
    ("type nat hook output priority -100;", "tcp dport 80 redirect to :8080", False),
    ("type filter hook input priority 0;", "notrack", False),
    ("type route hook output priority -150;", "meta mark set 1", False),
    ("type route hook input priority -150;", "accept", True),
    ("type filter hook forward priority 0;", "tcp dport 22 reject with tcp reset", False),
]


def load_case_text(chain_line: str, rule: str) -> str:
    return f"table ip t {{\n chain c {{\n  {chain_line}\n  {rule}\n }}\n}}\n"


@pytest.mark.parametrize("chain_line, rule, refused", LOAD_CASES)
def test_load_time_checks_are_the_kernels(chain_line: str, rule: str, refused: bool) -> None:
    try:
        parse_ruleset(load_case_text(chain_line, rule), "c.nft")
        got = False
    except HostFileError as e:
        assert "Operation not supported" in str(e) or "transport protocol" in str(e), str(e)
        got = True
    assert got == refused


def test_check_and_explain_name_the_deciding_nft_rule(tmp_path: Path) -> None:
    run = lambda *a: subprocess.run([sys.executable, "-m", "pathtrace.cli", *a], cwd=ROOT, capture_output=True,
                                    text=True)
    ok = run("check", "rulesets/web-server-nft.yaml", "rulesets/web-server-nft.expect.yaml")
    assert ok.returncode == 0 and "7 passed, 0 failed" in ok.stdout, ok.stdout + ok.stderr
    bad = tmp_path / "e.yaml"
    bad.write_text("cases:\n  - name: wrong on purpose\n    packet: tcp 198.51.100.7:40000 203.0.113.10:22 --in eth0\n"
                   "    expect: {rule: 5}\n")
    fail = run("check", "rulesets/web-server-nft.yaml", str(bad))
    assert fail.returncode == 1 and "inet filter/input rule 9 (tcp dport { 22, 80, 443 } ct state new accept)" \
        in fail.stdout, fail.stdout
    ex = run("explain", "rulesets/web-server-nft.yaml", "udp", "198.51.100.9:4000", "203.0.113.10:33434")
    assert "table inet filter, hook LOCAL_IN: input" in ex.stdout
    assert "input#10: MATCH -> DROP: udp dport 33434-33534 reject with icmp type port-unreachable" in ex.stdout
    assert "input#9: no match (meta l4proto tcp (nft's dependency): packet has udp)" in ex.stdout


def test_handles_printed_by_nft_a_are_kept() -> None:
    """`nft -a list ruleset` after a delete and an insert (recorded on 6.x): the stated handles are used,
    new objects continue the table's generator."""
    rs = _ruleset("""
        table inet filter { # handle 2
        	chain input { # handle 1
        		type filter hook input priority filter; policy drop;
        		tcp dport 9999 drop # handle 26
        		iif "lo" accept # handle 7
        		ip saddr { 10.0.0.1, 10.0.0.2 } drop
        	}
        }
        """)
    chain = rs.tables[0].chains["input"]
    assert (chain.handle, [r.handle for r in chain.rules]) == (1, [26, 7, 28])


def test_define_variables_as_nft_f_reads_them() -> None:
    rs = _ruleset("""
        define lan = 192.168.1.0/24
        define dmz = { 10.0.0.1, 10.0.0.2 }
        define ports = { 22, 443 }
        table ip t {
            chain c {
                type filter hook input priority 0; policy drop;
                ip saddr $lan tcp dport $ports accept
                ip daddr $dmz drop
            }
        }
        """)
    rules = rs.tables[0].chains["c"].rules
    assert [r.text for r in rules] == ["ip saddr $lan tcp dport $ports accept", "ip daddr $dmz drop"]
    with pytest.raises(NftParseError, match="unknown identifier 'wan'") as exc:
        _ruleset("table ip t {\n chain c {\n  iifname $wan drop\n }\n}\n")
    assert (exc.value.line, exc.value.col) == (3, 12)


MIXED = ROOT / "tests" / "data" / "nftables" / "mixed.yaml"


def mixed_packets():
    from pathtrace.packet import build
    return [(WAN, build.tcp_packet("198.51.100.9", "198.51.100.1", 40000, 8080, "S")),   # nft dnat first
            (WAN, build.tcp_packet("198.51.100.9", "198.51.100.1", 40001, 8081, "S")),   # iptables dnat, RST
            (WAN, build.tcp_packet("198.51.100.9", "198.51.100.1", 40002, 22, "S"))]     # nft input -5 rejects


def test_iptables_and_nftables_on_one_host(tmp_path: Path) -> None:
    from pathtrace.packet import build
    from pathtrace.packet.pcapwriter import PcapWriter
    cap = tmp_path / "mixed.pcap"
    with PcapWriter(str(cap)) as w:
        for k, ((src, dst), pkt) in enumerate(mixed_packets()):
            w.write(build.ether(dst, src, 0x0800, pkt), 1000.0 + k * 0.01)
    recs = _replay(str(MIXED), str(cap))
    assert [r["verdict"] for r in recs] == ["FORWARD", "DROP", "DROP"]
    assert "192.168.1.21.80" in recs[0]["emitted"][0]["packet"]
    # at equal priority (filter, 0) the nft chain, registered after iptables' filter table, runs first
    # (nf_hook_entries_grow; checked on 6.x): its drop wins over iptables' REJECT, no RST
    assert recs[1]["emitted"] == [] and "TCP [R.]" in recs[2]["emitted"][0]["packet"]
    order = [(s["fn"], s["chain"]) for s in recs[1]["path"]
             if s["fn"] in ("ipt_do_table", "nft_do_chain") and s["depth"] == 0]
    assert order == [("nft_do_chain", "pre"), ("ipt_do_table", "PREROUTING"), ("nft_do_chain", "forwarding")]


def test_equal_priority_base_chains_run_latest_first(tmp_path: Path) -> None:
    """Two input chains at priority 0: the one created second runs first (measured on 6.x with verify:
    the kernel dropped this packet)."""
    from helpers import Rig
    from pathtrace.packet import build
    rig = Rig(tmp_path, """
        interfaces:
          - name: eth0
            addresses: [198.51.100.1/24]
        sockets:
          - tcp 0.0.0.0:22
        nftables: |
          table ip t {
            chain a {
              type filter hook input priority filter; policy accept;
              meta mark 0 meta mark set 1
            }
            chain b {
              type filter hook input priority filter; policy accept;
              meta mark 0 meta mark set 2
            }
            chain z {
              type filter hook input priority 10; policy accept;
              meta mark 2 drop
            }
          }
        """)
    rec = rig.send("eth0", build.tcp_packet("198.51.100.9", "198.51.100.1", 40000, 22, "S"))
    assert (rec.verdict, rec.reason) == ("DROP", "NETFILTER_DROP")


RPFILTER = ROOT / "tests" / "data" / "nftables" / "rpfilter.yaml"


def rpfilter_packets():
    from pathtrace.packet import build
    t, u, i = build.tcp_packet, build.udp_packet, build.icmp_packet
    return [
        (WAN, t("192.168.1.66", "198.51.100.1", 40000, 22, "S")),      # LAN source on the WAN: fib ... missing
        (WAN, i("192.168.1.66", "198.51.100.1", 8, 0, b"x", id=3, seq=1)),   # counted by the icmp rule
        (LAN, t("192.168.1.10", "198.51.100.1", 40001, 22, "S")),      # legit: input accept
        (WAN, t("198.51.100.9", "198.51.100.1", 40002, 2222, "S")),    # dnat; forward by the original tuple
        (WAN, t("198.51.100.9", "198.51.100.1", 40003, 23, "S")),      # reject with icmpx admin-prohibited
        (LAN, t("192.168.1.10", "203.0.113.7", 40004, 443, "S")),      # forward out
        (LAN, t("192.168.1.10", "198.51.100.1", 40001, 22, "R", seq=1)),   # close the handshake of #2
    ]


def write_capture(path: Path, packets) -> None:
    from pathtrace.packet import build
    from pathtrace.packet.pcapwriter import PcapWriter
    with PcapWriter(str(path)) as w:
        for k, ((src, dst), pkt) in enumerate(packets):
            w.write(build.ether(dst, src, 0x0800, pkt), 1000.0 + k * 0.01)


def test_rpfilter_and_ct_original_tuple(tmp_path: Path) -> None:
    cap = tmp_path / "rpf.pcap"
    write_capture(cap, rpfilter_packets())
    recs = _replay(str(RPFILTER), str(cap))
    got = [(r["verdict"], r["reason"]) for r in recs]
    drop = ("DROP", "NETFILTER_DROP")
    assert got[:6] == [drop, drop, ("LOCAL_DELIVER", None), ("FORWARD", None), drop, ("FORWARD", None)]
    decided = [s for s in recs[0]["path"] if s["fn"] == "nft_do_chain" and s["verdict"] == "DROP"]
    assert [s["chain"] for s in decided] == ["filter_PREROUTING"]
    with pytest.raises(NftParseError, match="Can't parse symbolic invalid expressions"):
        _ruleset("table ip t {\n chain c {\n  ct original proto-dst 22 accept\n }\n}\n")
    assert "ICMP dest unreachable admin prohibited" in recs[4]["emitted"][0]["packet"]


def test_anonymous_chains_and_one_element_sets_as_the_kernel_numbers_them() -> None:
    """jump { ... } is a binding chain; its handle and its rules' come before the binding rule, and a
    one-element anonymous set is no set (nft -a list ruleset on 6.x: binding rule 6, next rule 7)."""
    rs = _ruleset("""
        table inet filter {
        	chain input {
        		type filter hook input priority filter; policy drop;
        		meta l4proto { tcp, udp } th dport 53 jump {
        			ip saddr != { 10.0.0.0/8 } counter reject
        			accept
        		}
        		tcp dport 22 accept
        	}
        }
        """)
    chains = rs.tables[0].chains
    assert [r.handle for r in chains["input"].rules] == [6, 7]
    anon = [c for name, c in chains.items() if name.startswith("__chain")]
    assert len(anon) == 1 and [r.text for r in anon[0].rules] == ["ip saddr != { 10.0.0.0/8 } counter reject",
                                                                    "accept"]
    from netfilter_helpers import ETH0, make_skb, udp_payload
    host_nf = _nf(textwrap.dedent("""
        table inet filter {
        	chain input {
        		type filter hook input priority filter; policy drop;
        		meta l4proto { tcp, udp } th dport 53 jump {
        			ip saddr != { 10.0.0.0/8 } counter drop
        			accept
        		}
        	}
        }
        """), nft=True)
    inside = make_skb("10.1.2.3", "10.0.0.1", 17, udp_payload(5000, 53))
    outside = make_skb("192.0.2.1", "10.0.0.1", 17, udp_payload(5000, 53))
    assert host_nf.hook(1, inside, ETH0, None) == 1 and host_nf.hook(1, outside, ETH0, None) == 0


ROUTE_LIMIT = ROOT / "tests" / "data" / "nftables" / "route-limit.yaml"


def route_limit_packets():
    from pathtrace.packet import build
    t, i = build.tcp_packet, build.icmp_packet
    wan = ("02:00:00:00:00:fe", "02:00:00:00:00:01")
    return [
        (wan, t("203.0.113.9", "198.51.100.1", 40000, 22, "S")),      # SYN-ACK marked in output: leaves by eth1
        (wan, t("203.0.113.9", "198.51.100.1", 40000, 22, "R", seq=1)),
        (wan, i("203.0.113.9", "198.51.100.1", 8, 0, b"a", id=1, seq=1)),   # limit over, burst 2: passes
        (wan, i("203.0.113.9", "198.51.100.1", 8, 0, b"b", id=2, seq=1)),   # passes
        (wan, i("203.0.113.9", "198.51.100.1", 8, 0, b"c", id=3, seq=1)),   # over: dropped
        (wan, t("203.0.113.9", "198.51.100.1", 40001, 80, "S", payload=b"x" * 100)),   # 140 bytes: within 200
        (wan, t("203.0.113.9", "198.51.100.1", 40002, 80, "S", payload=b"x" * 100)),   # bucket: (rate+burst)
        (wan, t("203.0.113.9", "198.51.100.1", 40003, 80, "S", payload=b"x" * 100)),   # over the byte bucket
    ]


def test_route_chain_reroutes_and_limit_over(tmp_path: Path) -> None:
    cap = tmp_path / "rl.pcap"
    write_capture(cap, route_limit_packets())
    recs = _replay(str(ROUTE_LIMIT), str(cap))
    assert recs[0]["emitted"][0]["dev"] == "eth1"               # rerouted by the mark (ip_route_me_harder)
    assert [r["verdict"] for r in recs[2:5]] == ["LOCAL_DELIVER", "LOCAL_DELIVER", "DROP"]
    assert [r["verdict"] for r in recs[5:8]] == ["LOCAL_DELIVER", "LOCAL_DELIVER", "DROP"]


@pytest.mark.parametrize("body, words", [
    ("nftables-file: nope.nft\n", "cannot read nftables-file 'nope.nft'"),
    ("nftables: |\n  table ip t {\n  }\nnftables-file: x.nft\n", "use either 'nftables' or 'nftables-file'"),
    ("nftables: |\n  table ip t {\n   chain c {\n    ip saddr 1.2.3 drop\n   }\n  }\n", "host.yaml:8:12-16: Error:"),
])
def test_host_file_nftables_errors_are_one_line_exit_2(tmp_path: Path, body: str, words: str) -> None:
    host = tmp_path / "host.yaml"
    host.write_text("name: h\ninterfaces:\n  - name: eth0\n    addresses: [10.0.0.1/24]\n" + body)
    cap = ROOT / "samples" / "web-server.pcap"
    r = subprocess.run([sys.executable, "-m", "pathtrace.cli", "replay", str(host), str(cap), "--summary"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr


def test_stateful_object_definitions_load_their_use_is_refused() -> None:
    """A ct helper / counter / quota definition does nothing to packets (and takes a handle after the
    chains, before the sets, as on 6.x); a rule using one is refused by name."""
    rs = parse_ruleset((ROOT / "tests" / "data" / "nftables" / "firewalld-like.nft").read_text(), "f.nft")
    t = rs.tables[0]
    assert list(t.objects) == ["helper helper-tftp-udp"] and t.objects["helper helper-tftp-udp"] == 6
    assert [r.handle for r in t.chains["filter_INPUT"].rules] == [8, 9, 10, 11, 12, 13]
    for rule, what in (("ct helper set \"ftp\"", "ct helper set"), ("counter name cnt", "named counters"),
                       ("quota name q drop", "quota")):
        with pytest.raises(NftParseError, match=what):
            _ruleset(f"table ip t {{\n chain c {{\n  {rule}\n }}\n}}\n")
