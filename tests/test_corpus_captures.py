"""Every real-world capture in the shared corpus replays: one record per packet, no model errors."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from helpers import CORPUS
from pathtrace.capture import count_frames
from pathtrace.cli import main

PCAPS = sorted((CORPUS / "pcaps").glob("*.pcap*")) if (CORPUS / "pcaps").is_dir() else []

HOST = """
interfaces:
  - name: eth0
    mac: 02:00:00:00:00:01
    addresses: [10.0.0.1/8, 192.168.1.1/24]
  - name: eth1
    mac: 02:00:00:00:00:02
    addresses: [172.16.0.1/12]
sysctl:
  net.ipv4.ip_forward: 1
routes:
  - default via 172.16.0.254
sockets:
  - tcp 0.0.0.0:80
  - udp 0.0.0.0:53
iptables: |
  *nat
  :PREROUTING ACCEPT [0:0]
  :INPUT ACCEPT [0:0]
  :OUTPUT ACCEPT [0:0]
  :POSTROUTING ACCEPT [0:0]
  -A POSTROUTING -o eth1 -j MASQUERADE
  COMMIT
  *filter
  :INPUT ACCEPT [0:0]
  :FORWARD DROP [0:0]
  :OUTPUT ACCEPT [0:0]
  -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
  -A FORWARD -i eth0 -j ACCEPT
  COMMIT
"""


@pytest.mark.skipif(not PCAPS, reason="shared corpus not present")
@pytest.mark.parametrize("capture", PCAPS, ids=lambda p: p.name)
def test_corpus_capture_replays(tmp_path, capture):
    host = tmp_path / "host.yaml"
    host.write_text(HOST)
    result = CliRunner().invoke(main, ["replay", str(host), str(capture), "--in", "eth0", "--format", "jsonl"])
    assert result.exit_code == 0, result.output[-2000:]
    records = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    expected = count_frames(str(capture))
    if expected is not None:
        assert len(records) == expected
    # replayed in timestamp order when the file may be out of it; each frame once, with its index in the file
    assert sorted(r["index"] for r in records) == list(range(len(records)))
    if [r["index"] for r in records] != sorted(r["index"] for r in records):
        assert [r["time"] for r in records] == sorted(r["time"] for r in records)
    errors = [r for r in records if r["verdict"] == "MODEL_ERROR"]
    assert not errors, errors[0]["warnings"]
    assert all(r["verdict"] != "DROP" or r["reason"] for r in records)
