"""Real captures of real hosts (samples/record_real.py) replayed as a user would: both directions,
three capture ways.  The kernel's own frames in each capture are the expected results."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pathtrace.cli import main

ROOT = Path(__file__).resolve().parents[1]
WHOLE = [("real-server", "real-server-eth0.pcap"), ("real-server", "real-server-dumpcap.pcapng"),
         ("real-server", "real-server-any.pcap"), ("real-router", "real-router-dumpcap.pcapng"),
         ("real-router", "real-router-any.pcap"), ("web-server", "web-server-bidir.pcap"),
         ("home-router", "home-router-bidir.pcapng"), ("two-uplink", "two-uplink-bidir.pcapng")]


def replay(host: str, capture: str) -> list[dict]:
    result = CliRunner().invoke(main, ["replay", str(ROOT / "rulesets" / f"{host}.yaml"),
                                       str(ROOT / "samples" / capture), "--format", "jsonl"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("host,capture", WHOLE, ids=[c for _, c in WHOLE])
def test_every_frame_the_kernel_built_or_forwarded_is_predicted(host, capture):
    records = replay(host, capture)
    assert sorted(r["index"] for r in records) == list(range(len(records)))     # each frame once
    sent = [r for r in records if "agreement" in r]
    assert sent, "a bidirectional capture"
    kernel = [r for r in sent if r["agreement"]["origin"] in ("kernel", "forwarded")]
    predicted = [r for r in kernel if r["agreement"]["predicted_by"] is not None]
    assert len(predicted) >= 0.99 * len(kernel), [r["packet"] for r in kernel if r not in predicted]
    assert not [r for r in sent if r["agreement"].get("differences")]
    assert all(r["verdict"] == "SENT" for r in sent)          # nothing the host sent is dropped by the model


@pytest.mark.parametrize("host,capture", WHOLE, ids=[c for _, c in WHOLE])
def test_no_received_frame_that_was_answered_or_forwarded_is_dropped(host, capture):
    records = {r["index"]: r for r in replay(host, capture)}
    for r in records.values():
        info = r.get("agreement")
        if not info or info["predicted_by"] is None:
            continue
        cause = records[info["predicted_by"]]
        if info["as"] == "forward":
            assert cause["verdict"] == "FORWARD", (r["packet"], cause["packet"])
        elif " TCP [.] " in r["packet"] or " TCP [S.] " in r["packet"]:       # the stack's ACK / SYN-ACK
            assert cause["verdict"] in ("LOCAL_DELIVER", "CONSUMED", "SENT"), (r["packet"], cause)


def test_frames_the_host_sent_are_not_received():
    for host, capture in WHOLE:
        for r in replay(host, capture):
            if "agreement" not in r:
                assert r["verdict"] != "DROP" or r["reason"] not in ("OTHERHOST", "IP_INVALID_SOURCE"), r


def test_one_side_of_a_nat_router_is_replayed_through_its_inferred_arrivals():
    """tcpdump -i lan0 on the router: replies forwarded to the LAN arrived on wan0, which the capture
    does not cover; they are replayed as received there.  What cannot be inferred (the first packet
    of a DNAT, whose address before NAT no conntrack entry holds yet) stays not predicted."""
    records = replay("real-router", "real-router-lan0.pcap")
    sent = [r for r in records if "agreement" in r]
    inferred = [r for r in sent if r["agreement"].get("inferred_arrival") == "wan0"]
    assert len(inferred) >= 20
    predicted = [r for r in sent if r["agreement"]["predicted_by"] is not None]
    assert len(predicted) >= 0.85 * len(sent)
