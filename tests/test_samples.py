"""The example hosts in rulesets/ replayed with their captures in samples/, through the CLI.

Every rulesets/NAME.yaml (except NAME.expect.yaml) has a samples/NAME.pcap or samples/NAME.pcapng (made by
samples/make_samples.py).  The README's first command replays one of them, so these
tests are what keeps that command working; the verdicts asserted are the ones a real
6.x kernel gives for these packets.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pathtrace.capture import read_frames
from pathtrace.cli import main

ROOT = Path(__file__).resolve().parents[1]
# host files; NAME.expect.yaml files next to them are `pathtrace check` expectations
# real-*.yaml describe hosts recorded by samples/record_real.py; their captures (real-NAME-IFACE.pcap,
# -dumpcap.pcapng, -any.pcap) are checked by tests/test_real_samples.py
RULESETS = sorted(p for p in (ROOT / "rulesets").glob("*.yaml")
                  if not p.name.endswith(".expect.yaml") and not p.name.startswith("real-"))


def sample_for(host: Path) -> Path:
    stem = host.stem.removesuffix("-nft")       # NAME-nft.yaml: NAME.yaml's firewall in nftables, same capture
    for ext in (".pcap", ".pcapng"):
        path = ROOT / "samples" / (stem + ext)
        if path.exists():
            return path
    raise AssertionError(f"{host.name} has no samples/{stem}.pcap or .pcapng")


def replay(host: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["replay", str(host), str(sample_for(host)), *extra])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def records(name: str) -> list[dict]:
    code, out = replay(ROOT / "rulesets" / f"{name}.yaml", "--format", "jsonl")
    assert code == 0, out
    return [json.loads(line) for line in out.splitlines()]


def outcome(r: dict) -> tuple:
    return (r["ingress"], r["verdict"], r["reason"], r["egress"])


def sent(r: dict) -> list[tuple[str, str, str]]:
    return [(e["dev"], e["kind"], e["packet"]) for e in r["emitted"]]


@pytest.mark.parametrize("host", RULESETS, ids=[p.stem for p in RULESETS])
def test_every_ruleset_replays_its_sample(host: Path) -> None:
    code, out = replay(host, "--format", "jsonl")
    assert code == 0, out
    lines = out.splitlines()
    frames = list(read_frames(str(sample_for(host))))
    assert len(lines) == len(frames)
    recs = [json.loads(line) for line in lines]
    assert [r["index"] for r in recs] == list(range(len(frames)))
    assert not [r for r in recs if r["verdict"] in ("MODEL_ERROR", "NOT_MODELLED")]


@pytest.mark.parametrize("host", RULESETS, ids=[p.stem for p in RULESETS])
@pytest.mark.parametrize("fmt", ["text", "none"])
def test_other_formats_and_summary(host: Path, fmt: str) -> None:
    code, out = replay(host, "--format", fmt, "--summary")
    assert code == 0, out
    n = len(list(read_frames(str(sample_for(host)))))
    assert f"{n} packets" in out


def test_show_every_ruleset() -> None:
    for host in RULESETS:
        result = CliRunner().invoke(main, ["show", str(host)])
        assert result.exit_code == 0, result.output
        assert "interface" in result.output


def test_web_server_verdicts() -> None:
    recs = records("web-server")
    assert [(r["verdict"], r["reason"]) for r in recs] == [
        ("CONSUMED", None),                  # ARP request for our address: answered
        ("CONSUMED", None),                  # ARP reply from the gateway
        ("LOCAL_DELIVER", None),             # SYN to :80
        ("LOCAL_DELIVER", None),             # handshake ACK
        ("LOCAL_DELIVER", None),             # GET
        ("LOCAL_DELIVER", None),             # FIN
        ("LOCAL_DELIVER", None),             # ping
        ("DROP", "NETFILTER_DROP"),          # DNS from outside: INPUT policy
        ("DROP", "NETFILTER_DROP"),          # SYN to closed :25: INPUT policy, no RST
        ("DROP", "NETFILTER_DROP"),          # traceroute probe: REJECT
        ("DROP", "IP_CSUM"),                 # bad header checksum
    ]
    assert sent(recs[0]) == [("eth0", "generated", "ARP reply 203.0.113.10 is-at 52:54:00:12:34:56")]
    (synack,) = sent(recs[2])
    assert synack[0] == "eth0" and "203.0.113.10.80 > 198.51.100.23.51514: TCP [S.]" in synack[2]
    assert recs[2]["rules"][0]["chain"] == "INPUT" and "--dports 22,80,443" in recs[2]["rules"][0]["text"]
    assert "ESTABLISHED" in recs[3]["rules"][0]["text"]
    (ack_of_get,) = sent(recs[4])                  # quick ACK of the request
    assert "203.0.113.10.80 > 198.51.100.23.51514: TCP [.]" in ack_of_get[2]
    assert sent(recs[5]) == []                      # the FIN's ACK is delayed (CLOSE_WAIT: interactive mode)...
    delayed, reply = sent(recs[6])                  # ...and its timer fires before the ping is handled
    assert "203.0.113.10.80 > 198.51.100.23.51514: TCP [.]" in delayed[2]
    assert reply[0] == "eth0" and "203.0.113.10 > 198.51.100.23: ICMP echo reply id 7978 seq 1" in reply[2]
    assert sent(recs[7]) == [] and sent(recs[8]) == []
    (unreach,) = sent(recs[9])
    assert "ICMP dest unreachable port" in unreach[2]
    assert "REJECT" in [r for r in recs[9]["rules"] if r["verdict"] == "DROP"][0]["text"]
    assert sent(recs[10]) == []


def test_home_router_verdicts() -> None:
    recs = records("home-router")
    fwd_out, fwd_in = ("eth1", "FORWARD", None, "eth0"), ("eth0", "FORWARD", None, "eth1")
    assert [outcome(r) for r in recs] == [
        ("eth1", "CONSUMED", None, None),                      # laptop ARPs for the router
        fwd_out, fwd_in,                                       # DNS query / answer
        fwd_out, fwd_in, fwd_out, fwd_out, fwd_in, fwd_out, fwd_out, fwd_in, fwd_out,   # TCP to 198.51.100.80
        ("eth1", "LOCAL_DELIVER", None, None),                 # ping to the router
        ("eth0", "QUEUED", None, "eth1"),                      # DNAT'ed SYN waits for ARP
        ("eth1", "CONSUMED", None, None),                      # NAS ARP reply releases it
        ("eth1", "FORWARD", None, "eth0"), ("eth0", "FORWARD", None, "eth1"),   # SYN-ACK, ACK
        ("eth1", "CONSUMED", None, None),                      # laptop answers the ARP probe
        ("eth0", "DROP", "NETFILTER_DROP", None),              # closed port on WAN
        ("eth1", "DROP", "IP_INHDR", None),                    # TTL=1 while forwarding
        ("eth0", "DROP", "IP_CSUM", None),                     # bad header checksum
    ]
    # MASQUERADE: the query leaves with the WAN address; the answer comes back de-NATed
    assert "IP 192.0.2.10.53124 > 203.0.113.53.53: UDP" in sent(recs[1])[0][2]
    assert "IP 203.0.113.53.53 > 192.168.1.10.53124: UDP" in sent(recs[2])[0][2]
    # DNAT: ARP request for the NAS, then the SYN released towards 192.168.1.20:80
    assert sent(recs[13]) == [("eth1", "generated", "ARP who-has 192.168.1.20 tell 192.168.1.1")]
    (released,) = sent(recs[14])
    assert released[:2] == ("eth1", "released") and "198.51.100.99.40001 > 192.168.1.20.80: TCP [S]" in released[2]
    assert "IP 192.0.2.10.8080 > 198.51.100.99.40001: TCP [S.]" in sent(recs[15])[0][2]
    dnat = [r for r in recs[13]["rules"] if r["table"] == "nat"][0]
    assert "DNAT --to-destination 192.168.1.20:80" in dnat["text"]
    # TTL=1: time exceeded back to the laptop
    assert any("ICMP time exceeded" in p for _, _, p in sent(recs[19]))
    assert sent(recs[20]) == []


def test_two_uplink_verdicts() -> None:
    recs = records("two-uplink")
    assert [outcome(r) for r in recs] == [
        ("eth2", "CONSUMED", None, None),
        ("eth2", "FORWARD", None, "eth0"), ("eth0", "FORWARD", None, "eth2"),   # DNS via ISP A
        ("eth2", "CONSUMED", None, None),
        ("eth2", "QUEUED", None, "eth1"),                                       # guest SYN, marked -> table 200
        ("eth1", "CONSUMED", None, None),                                       # ISP B gateway answers ARP
        ("eth1", "FORWARD", None, "eth2"),
        ("eth2", "FORWARD", None, "eth1"), ("eth2", "FORWARD", None, "eth1"),
        ("eth1", "FORWARD", None, "eth2"),
        ("eth2", "FORWARD", None, "eth1"),
        ("eth1", "FORWARD", None, "eth2"),
        ("eth2", "FORWARD", None, "eth1"),
        ("eth1", "LOCAL_DELIVER", None, None), ("eth0", "LOCAL_DELIVER", None, None),   # pings
        ("eth1", "DROP", "NETFILTER_DROP", None),                               # REJECT tcp-reset
        ("eth2", "CONSUMED", None, None),                                       # PC answers the ARP probe
        ("eth2", "DROP", "IP_INHDR", None),                                     # TTL=1
        ("eth0", "DROP", "IP_CSUM", None),
    ]
    assert "IP 192.0.2.10.36001 > 203.0.113.53.53" in sent(recs[1])[0][2]
    (released,) = sent(recs[5])
    assert released[:2] == ("eth1", "released") and "198.51.100.10.49152 > 203.0.113.80.443: TCP [S]" in released[2]
    # policy routing of the host's own replies: 'from 198.51.100.10 lookup 200' sends it out eth1
    (reply_b,) = sent(recs[13])
    assert reply_b[0] == "eth1" and "198.51.100.10 > 203.0.113.99: ICMP echo reply" in reply_b[2]
    (reply_a,) = sent(recs[14])
    assert reply_a[0] == "eth0" and "192.0.2.10 > 203.0.113.99: ICMP echo reply" in reply_a[2]
    (rst,) = sent(recs[15])
    assert rst[0] == "eth1" and "TCP [R.]" in rst[2]


def test_samples_are_what_make_samples_writes(tmp_path: Path) -> None:
    """The committed captures match the generator (rerun samples/make_samples.py if this fails)."""
    spec = importlib.util.spec_from_file_location("make_samples", ROOT / "samples" / "make_samples.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    for name, make in mod.SAMPLES.items():
        make(str(tmp_path / name))
        assert (tmp_path / name).read_bytes() == (ROOT / "samples" / name).read_bytes(), name
    assert {p.stem.removesuffix("-nft") for p in RULESETS} == {Path(n).stem for n in mod.SAMPLES}
