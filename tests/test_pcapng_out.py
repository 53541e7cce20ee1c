"""--write-pcapng: every input frame and every frame the host sent, per-interface blocks, EPB direction
flags and the model's decision as each packet's comment, read back with tshark where installed."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from pathtrace.capture import read_frames
from pathtrace.cli import main

ROOT = Path(__file__).resolve().parent.parent
HOST, CAP = str(ROOT / "rulesets/real-server.yaml"), str(ROOT / "samples/real-server-eth0.pcap")


def _replay(tmp_path: Path) -> tuple[Path, list[dict]]:
    out = tmp_path / "o.pcapng"
    res = CliRunner().invoke(main, ["replay", HOST, CAP, "--format", "jsonl", "--write-pcapng", str(out)])
    assert res.exit_code == 0, res.output
    return out, [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]


def test_every_input_and_sent_frame_with_direction(tmp_path) -> None:
    out, records = _replay(tmp_path)
    frames = list(read_frames(str(out)))
    assert len(frames) == len(records) + sum(len(r["emitted"]) for r in records)
    inbound = [f for f in frames if f.direction == 1]
    assert len(inbound) == sum(1 for r in records if r.get("agreement") is None)
    assert {f.ifname for f in frames} <= {"eth0", "lo", "?"}


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_filters_on_the_comments(tmp_path) -> None:
    out, records = _replay(tmp_path)
    dropped = [r for r in records if r["reason"] == "NETFILTER_DROP"]
    assert dropped
    res = subprocess.run(["tshark", "-r", str(out), "-Y", 'frame.comment contains "NETFILTER_DROP"', "-T", "fields",
                          "-e", "frame.comment"], capture_output=True, text=True, check=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert len(lines) == len(dropped)
    assert [int(ln.split("#")[1].split(":")[0]) for ln in lines] == [r["index"] for r in dropped]


def test_bad_path_is_one_line(tmp_path) -> None:
    res = CliRunner().invoke(main, ["replay", HOST, CAP, "--write-pcapng", str(tmp_path / "no/such/dir/x.pcapng")])
    assert res.exit_code == 2 and "cannot write" in res.output


def test_pcap_dir_has_one_pcap_per_egress_interface(tmp_path) -> None:
    res = CliRunner().invoke(main, ["replay", str(ROOT / "rulesets/home-router.yaml"),
                                    str(ROOT / "samples/home-router.pcapng"), "--format", "jsonl",
                                    "--write-pcap-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    records = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    per_dev: dict[str, int] = {}
    for r in records:
        for e in r["emitted"]:
            per_dev[e["dev"]] = per_dev.get(e["dev"], 0) + 1
    assert per_dev and {p.stem: len(list(read_frames(str(p)))) for p in tmp_path.glob("*.pcap")} == per_dev
