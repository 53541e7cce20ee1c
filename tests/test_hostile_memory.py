"""Issue 13: replay memory must not grow with the capture.  cli.py raises the collector's thresholds
(per-packet garbage is freed by reference counting), so any reference cycle made per packet or per
flow would pile up: these tests replay with the collector off and require that a full collection
then finds nothing unreachable, for each output format, with and without the replay cache."""
from __future__ import annotations

import gc
import io
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import workload  # noqa: E402


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[str, str, str]:
    d = tmp_path_factory.mktemp("mem")
    (d / "host.yaml").write_text(workload.host_yaml(50))
    workload.write_capture(d / "flows.pcap", 2500, 60)
    workload.write_scan(d / "scan.pcap", 1200)
    return str(d / "host.yaml"), str(d / "flows.pcap"), str(d / "scan.pcap")


@pytest.mark.parametrize("fmt", ["jsonl", "text"])
@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("which", [1, 2])
def test_replay_makes_no_reference_cycles(bench, fmt: str, cache: bool, which: int) -> None:
    from pathtrace.capture import read_frames
    from pathtrace.host.loader import load_host
    from pathtrace.render.record import render_record
    from pathtrace.render.summary import SummaryCounter
    from pathtrace.render.template import FlowTemplate, flat_for
    from pathtrace.replay import LineLane, Replayer, ReplayOptions, create_namespace
    host, capture = bench[0], bench[which]
    net = create_namespace(load_host(host))
    replayer = Replayer(net, ReplayOptions(record=fmt != "none", emit_frames=fmt != "none", cache=cache))
    out = io.StringIO()

    def emit(record, frame) -> None:
        out.write(render_record(record, frame, fmt, False))
        out.seek(0)
        out.truncate()
    lines = LineLane(FlowTemplate, flat_for, lambda data: None) if fmt != "none" else None
    gc.collect()
    gc.disable()
    try:
        replayer.stream(read_frames(capture), SummaryCounter(), 0, None, emit if fmt != "none" else None, lines)
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert replayer.count > 0
    assert unreachable == 0, f"{unreachable} objects in reference cycles after {replayer.count} packets"
