"""pcap-filter selection (capture/filter.py) against tcpdump itself: for each expression, the records
pathtrace selects from a shipped sample are the ones `tcpdump -r SAMPLE EXPR` prints."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

try:        # the binding loads the system's libpcap.so when imported: either may be missing
    import libpcap  # noqa: F401
except Exception as exc:    # noqa: BLE001
    pytest.skip(f"libpcap is not usable here: {exc}", allow_module_level=True)

from pathtrace.capture import read_frames            # noqa: E402
from pathtrace.capture.filter import FilterError, PcapFilter, compile_filter   # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
EXPRESSIONS = ["tcp", "udp port 53", "icmp", "arp", "not arp", "tcp[tcpflags] & tcp-syn != 0",
               "ip and len > 100", "ether broadcast", "dst port 80 or dst port 22", "net 10.0.0.0/8",
               "ip[8] < 64", "tcp and not port 22"]


def _tcpdump_count(path: Path, expr: str) -> int:
    out = subprocess.run(["tcpdump", "-r", str(path), "-n", "-q", expr], capture_output=True, text=True, check=True)
    return len([ln for ln in out.stdout.splitlines() if ln.strip()])


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
@pytest.mark.parametrize("sample", ["web-server.pcap", "real-server-eth0.pcap", "real-router-lan0.pcap", "home-router.pcapng"])
def test_selection_is_tcpdumps(sample: str) -> None:
    path = SAMPLES / sample
    if not path.exists():
        pytest.skip(f"{sample} not shipped")
    frames = list(read_frames(str(path)))
    for expr in EXPRESSIONS:
        chosen = [f.index for f in PcapFilter(expr).select(frames)]
        assert len(chosen) == _tcpdump_count(path, expr), expr
        assert chosen == sorted(chosen)              # indexes are the capture's, in order


def test_bad_expression_is_libpcaps_error() -> None:
    with pytest.raises(FilterError, match="syntax error"):
        PcapFilter("tcp port")
    assert compile_filter([]) is None and compile_filter(["tcp", "port", "22"]).expression == "tcp port 22"


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
def test_linux_sll2_capture_selects_as_tcpdump_on_ip_expressions() -> None:
    """tcpdump -i any (LINUX_SLL2): libpcap compiles for SLL2, pathtrace matches the rebuilt Ethernet
    frame; on network-layer expressions the selections are the same."""
    path = SAMPLES / "real-server-any.pcap"
    frames = list(read_frames(str(path)))
    for expr in ["tcp", "udp port 53", "icmp", "tcp and not port 22", "host 10.0.0.1 or host 192.0.2.10"]:
        assert len(list(PcapFilter(expr).select(frames))) == _tcpdump_count(path, expr), expr


def test_replay_takes_the_expression_after_the_capture_and_keeps_indexes() -> None:
    import json
    from click.testing import CliRunner
    from pathtrace.cli import main
    root = SAMPLES.parent
    res = CliRunner().invoke(main, ["replay", str(root / "rulesets/web-server.yaml"), str(SAMPLES / "web-server.pcap"),
                                    "--format", "jsonl", "tcp[tcpflags] & tcp-syn != 0"])
    assert res.exit_code == 0, res.output
    indexes = [json.loads(ln)["index"] for ln in res.output.splitlines() if ln.startswith("{")]
    frames = list(read_frames(str(SAMPLES / "web-server.pcap")))
    assert indexes == [f.index for f in PcapFilter("tcp[tcpflags] & tcp-syn != 0").select(frames)] and indexes
    bad = CliRunner().invoke(main, ["replay", str(root / "rulesets/web-server.yaml"), str(SAMPLES / "web-server.pcap"),
                                    "tcp", "port"])
    assert bad.exit_code == 2 and "syntax error" in bad.output
