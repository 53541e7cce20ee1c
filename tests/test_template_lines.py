"""Per-flow templates (render/template.py) as the replay writes them: ICMP echoes with their own
sequence numbers, and the C lane writing lines straight to the output's file descriptor
(DirectLines) - through a file and a pipe, in order with the lines Python writes, byte for byte
what --no-cache and the Python closures (PATHTRACE_PURE_PYTHON=1) write."""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pathtrace.capture import read_frames
from pathtrace.host.loader import load_host
from pathtrace.render import template as T
from pathtrace.render.summary import SummaryCounter
from pathtrace.replay import LineLane, Replayer, create_namespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import workload  # noqa: E402

WRITERS = {
    "conversations": lambda path, n: workload.write_capture(path, n, 40),
    "midstream": lambda path, n: workload.write_midstream(path, n, 40),
    "udp": lambda path, n: workload.write_udp(path, n, 40),
    "ping": lambda path, n: workload.write_ping(path, n, 40),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lines")
    host = d / "router.yaml"
    host.write_text(workload.host_yaml(300))
    out = {"host": host}
    for name, write in WRITERS.items():
        out[name] = d / f"{name}.pcap"
        write(out[name], 3000)
    return out


def _replay(host: Path, cap: Path, *args: str, stdout, pure: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PATHTRACE_PURE_PYTHON", None)
    if pure:
        env["PATHTRACE_PURE_PYTHON"] = "1"
    return subprocess.run([sys.executable, "-m", "pathtrace.cli", "replay", str(host), str(cap), "--no-progress",
                           *args], stdout=stdout, stderr=subprocess.PIPE, env=env, timeout=600)


FORMATS = [("--format", "jsonl"), ("--format", "text"), ("--format", "text", "--verbose")]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(WRITERS))
def test_lines_written_by_the_lane_same_as_uncached(files, tmp_path, name, fmt):
    """stdout a file (the lane writes with writev) and a pipe (partial writes: lines of tens of
    kilobytes through a 64 KiB pipe): the same bytes as without the cache and with the Python
    closures (lines through Python)."""
    host, cap = files["host"], files[name]
    outputs = {}
    for how, extra, pure in (("lane", (), False), ("python", (), True), ("uncached", ("--no-cache",), False)):
        path = tmp_path / f"{how}.out"
        with open(path, "wb") as fh:
            r = _replay(host, cap, *fmt, *extra, stdout=fh, pure=pure)
        assert r.returncode == 0, r.stderr
        outputs[how] = path.read_bytes()
    piped = _replay(host, cap, *fmt, stdout=subprocess.PIPE)
    assert piped.returncode == 0, piped.stderr
    expected = outputs["uncached"]
    records = expected.count(b"\n{") + 1 if fmt[1] == "jsonl" else expected.count(b"\n#") + 1
    assert records == 3000
    for how, out in (("lane", outputs["lane"]), ("python", outputs["python"]), ("pipe", piped.stdout)):
        assert out == expected, f"{how}: first difference at byte {_first_difference(out, expected)}"


def _first_difference(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _stream(host: Path, cap: Path, out, fmt: T.Format, limit: int = 0) -> tuple[int, list[bytes]]:
    """Replayer.stream as `replay` runs it with the lane writing to `out`: (records Python rendered,
    the bytes the lane handed back instead of writing)."""
    from pathtrace.render.record import render_record
    replayer = Replayer(create_namespace(load_host(str(host))))
    rendered = []
    returned: list[bytes] = []

    def emit(record, frame) -> None:
        rendered.append(record.index)
        out.write(render_record(record, frame, "jsonl" if fmt is T.JSONL else "text", fmt is T.TEXT_VERBOSE))

    def write(data: bytes) -> None:
        returned.append(data)
        out.buffer.write(data)
    lines = LineLane(T.FlowTemplate, T.lane_flat_for(out), write)
    replayer.stream(read_frames(str(cap)), SummaryCounter(), limit, emit=emit, lines=lines)
    out.flush()
    return len(rendered), returned


@pytest.mark.parametrize("name", ["ping", "udp"])
def test_echoes_and_datagrams_are_written_by_the_lane(files, tmp_path, name):
    """After each flow's first packets every echo request (each its own sequence number) and datagram
    is written by the C lane itself: Python renders only the learning runs and each entry's first
    served record (its template's check), and the lane hands no bytes back."""
    pytest.importorskip("pathtrace._fastpath")
    with open(tmp_path / "out.jsonl", "w", encoding="utf-8") as out:
        rendered, returned = _stream(files["host"], files[name], out, T.JSONL)
    assert not any(returned)
    assert rendered <= 40 * 3, rendered            # 40 flows: two learning runs and one template check
    expected = _replay(files["host"], files[name], "--format", "jsonl", "--no-cache", stdout=subprocess.PIPE)
    assert (tmp_path / "out.jsonl").read_bytes() == expected.stdout


def test_lines_of_more_pieces_than_one_writev_takes(files, tmp_path, monkeypatch):
    """Flats cut into thousands of pieces (more than IOV_MAX, 1024, per line): the lane writes a
    line over several writev calls, with the same bytes."""
    pytest.importorskip("pathtrace._fastpath")
    split = T._split_marks

    def chopped(text: str, marks: dict) -> tuple:
        flat: list = []
        for x in split(text, marks):
            if x.__class__ is str:
                pieces = [x[i:i + 7] for i in range(0, len(x), 7)] or [""]
                flat += [y for piece in pieces for y in (piece, "")][:-1]   # literal pieces side by side
            else:
                flat.append(x)
        return tuple(flat)
    monkeypatch.setattr(T, "_split_marks", chopped)
    with open(tmp_path / "out.jsonl", "w", encoding="utf-8") as out:
        rendered, returned = _stream(files["host"], files["udp"], out, T.JSONL, limit=600)
    assert not any(returned) and rendered < 600
    expected = _replay(files["host"], files["udp"], "--format", "jsonl", "--no-cache", "--limit", "600",
                       stdout=subprocess.PIPE)
    assert (tmp_path / "out.jsonl").read_bytes() == expected.stdout


def test_lines_come_back_as_bytes_without_a_descriptor(files):
    """An output stream without a file descriptor (io.StringIO, click's test runner): flat_for itself,
    and the lane returns its lines to Python."""
    assert T.lane_flat_for(io.StringIO()) is T.flat_for
    fd_out = open(os.devnull, "w")
    try:
        direct = T.lane_flat_for(fd_out)
        assert isinstance(direct, T.DirectLines) and direct.fd == fd_out.fileno()
    finally:
        fd_out.close()


def test_sigint_with_the_lane_writing_stops_on_a_line_boundary(files, tmp_path):
    """^C while the lane writes lines itself (after the flows' first packets, which Python writes):
    exit 130, every line whole and in order, and the summary counts exactly the lines written."""
    import json
    cap = tmp_path / "long.pcap"
    workload.write_udp(cap, 200_000, 40)
    p = subprocess.Popen([sys.executable, "-m", "pathtrace.cli", "replay", str(files["host"]), str(cap),
                          "--format", "jsonl", "--summary", "--no-progress"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    first = [p.stdout.readline() for _ in range(300)]
    p.send_signal(signal.SIGINT)
    out = p.stdout.read()
    err = p.stderr.read()
    assert p.wait(timeout=300) == 130, err
    lines = (b"".join(first) + out).decode().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    head = next(line for line in lines if line.endswith("packets (partial: interrupted)"))
    assert 300 <= len(records) == int(head.split()[0]) < 200_000, head
    assert [r["index"] for r in records] == list(range(len(records)))
    assert b"Traceback" not in err


# ---- the template's pieces ------------------------------------------------------------------------

MARKS = {"-731048591247113": 0, "1.0000000000000002e-299": 1, **T._CHAR_MARKS}


def _split_by_regex(text: str, marks: dict[str, int]) -> tuple:
    """The straightforward split _split_marks must equal (longest marker first where two start together)."""
    pattern = re.compile("|".join(re.escape(m) for m in sorted(marks, key=len, reverse=True)))
    flat: list = []
    pos = 0
    for m in pattern.finditer(text):
        flat += [text[pos:m.start()], marks[m.group()]]
        pos = m.end()
    flat.append(text[pos:])
    return tuple(flat)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(alphabet="ab-1\\ue0", max_size=8), st.sampled_from(sorted(MARKS))), max_size=30))
def test_split_marks_same_as_a_regex_split(pieces):
    text = "".join(pieces)
    assert T._split_marks(text, MARKS) == _split_by_regex(text, MARKS)


@pytest.mark.parametrize("desc,seq,expected", [
    ("IP a > b: ICMP echo request id 7 seq 2 ttl 64", 2, "IP a > b: ICMP echo request id 7 seq \ue000 ttl 64"),
    ("IP a > b: ICMP echo reply id 7 seq 65535 code 3 ttl 64", 65535,
     "IP a > b: ICMP echo reply id 7 seq \ue000 code 3 ttl 64"),
    ("IP a > b: ICMP echo request id 7 seq 23 ttl 64", 2, None),       # not this number
    ("IP a > b: ICMP echo request id 7 seq 2 seq 2", 2, None),         # not exactly once
    ("IP a > b: ICMP echo request id 7 ttl 64", 2, None),
])
def test_echo_sequence_is_marked_exactly_once(desc, seq, expected):
    assert T._mark(desc, seq, 0, T.ECHO_SEQ, False) == expected


def test_which_numbers_a_flow_shows():
    from pathtrace.packet import build
    s, d = "192.168.1.2", "203.0.113.1"
    echo = build.icmp_packet(s, d, 8, 0, b"x" * 8, id=7, seq=513)
    assert T._numbers(echo, 20) == T.ECHO_SEQ
    t = T.FlowTemplate()
    t.numbers, t.hlen = T.ECHO_SEQ, 20
    assert T._numbers_of(t, echo) == (513, 0)
    assert T._numbers(build.icmp_packet(s, d, 13, 0, b"x" * 12, id=7, seq=1), 20) == T.NO_NUMBERS
