"""Fuzz targets: each takes raw bytes, feeds them to one reader of the tool, and raises
`Crash` when the tool breaks one of its promises (pathtrace(1)); else it returns whether the
input was taken (True) or refused with a clean error (False):

- bad input is a PathtraceError (a one-line `FILE:LINE: what`, exit 2), never another exception;
- every frame of a readable capture gives exactly one record;
- a host file that loads replays a packet without a model error.

Shared by the Hypothesis tests (tests/fuzz/test_fuzz.py) and the long mutation runner
(tests/fuzz/mutate.py); crashes found are kept in tests/data/fuzz/<target>/ and replayed
by tests/test_hostile_regressions.py.
"""
from __future__ import annotations

import os
import tempfile
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
HOST = ROOT / "rulesets" / "home-router.yaml"      # the host the capture, flow spec and expectation targets use


class Crash(Exception):
    """The tool broke a promise on this input (message: what, with the traceback when there is one)."""


def _unexpected(exc: BaseException) -> Crash:
    return Crash(f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exception(exc)[-6:]))


def _session():
    from pathtrace.commands.session import Session
    from pathtrace.host.loader import load_host
    return Session(load_host(str(HOST)))


def _with_file(data: bytes, name: str, fn: Callable[[str], bool]) -> bool:
    with tempfile.TemporaryDirectory(prefix="pathtrace-fuzz-") as d:
        path = os.path.join(d, name)
        with open(path, "wb") as fh:
            fh.write(data)
        return fn(path)


# ---- captures -------------------------------------------------------------------------------

def capture(data: bytes) -> bool:
    """Read and replay a capture: a CaptureError is fine; otherwise frames are numbered 0..n-1, as many
    as count_frames says, and the replay (replay cache and C lane on) gives one record per frame."""
    return _with_file(data, "c.pcap", _capture_file)


def _capture_file(path: str) -> bool:
    from pathtrace.capture import count_frames, read_frames
    from pathtrace.errors import PathtraceError
    from pathtrace.render.summary import SummaryCounter
    from pathtrace.replay import Replayer, ReplayOptions, create_namespace
    from pathtrace.host.loader import load_host
    try:
        indices = [f.index for f in read_frames(path)]
    except PathtraceError:
        return False
    except Exception as exc:
        raise _unexpected(exc) from None
    if indices != list(range(len(indices))):
        raise Crash(f"frame indices are not 0..{len(indices) - 1}: {indices[:20]}")
    try:
        counted = count_frames(path)
    except Exception as exc:
        raise _unexpected(exc) from None
    if counted is not None and counted != len(indices):
        raise Crash(f"count_frames says {counted}, the reader gave {len(indices)} frames")
    records: list[int] = []
    try:
        net = create_namespace(load_host(str(HOST)))
        replayer = Replayer(net, ReplayOptions(record=False, emit_frames=False, cache=True))
        counter = SummaryCounter()
        replayer.stream(read_frames(path, ordered="auto"), counter)
        records.append(counter.packets)
    except PathtraceError:
        return False
    except Exception as exc:
        raise _unexpected(exc) from None
    if records[0] != len(indices):
        raise Crash(f"{len(indices)} frames in, {records[0]} records out")
    return True


# ---- host files and rulesets ------------------------------------------------------------------

def host(data: bytes) -> bool:
    """Load a host file and build its namespace; when it loads, one packet must replay cleanly."""
    return _with_file(data, "host.yaml", _host_file)


def ruleset(data: bytes) -> bool:
    """An iptables-save text as a host's iptables-file (the decoding layer, then iptables-restore)."""
    def run(path: str) -> bool:
        host_yaml = HOST.read_text().split("iptables:")[0] + f"iptables-file: {path}\n"
        return _with_file(host_yaml.encode(), "host.yaml", _host_file)
    return _with_file(data, "rules.v4", run)


def nftables(data: bytes) -> bool:
    """An nft ruleset (nft list ruleset text, or its -j JSON) as a host's nftables-file."""
    def run(path: str) -> bool:
        base = (ROOT / "rulesets" / "home-router-nft.yaml").read_text().split("nftables:")[0]
        return _with_file((base + f"nftables-file: {path}\n").encode(), "host.yaml", _host_file)
    return _with_file(data, "ruleset.nft", run)


def _host_file(path: str) -> bool:
    from pathtrace.commands.flowspec import FlowSpecError, parse_words
    from pathtrace.commands.session import Session
    from pathtrace.errors import PathtraceError
    from pathtrace.host.loader import load_host
    try:
        session = Session(load_host(path))
    except PathtraceError:
        return False
    except Exception as exc:
        raise _unexpected(exc) from None
    devices = [d for d in session.net.devices if d != "lo"]
    spec = f"udp 192.0.2.7:5000 {_an_address(session)}:53" + (f" --in {devices[0]}" if devices else "")
    try:
        rec = session.inject(parse_words(spec)).record
    except (FlowSpecError, PathtraceError):
        return True
    except Exception as exc:
        raise _unexpected(exc) from None
    if rec.verdict == "MODEL_ERROR":
        raise Crash(f"host loaded, then the replay gave MODEL_ERROR: {rec.reason}")
    return True


def _an_address(session) -> str:
    from pathtrace.lib.inet import ntoa
    for dev in session.net.devices.values():
        for a in dev.addrs:
            if not dev.loopback:
                return ntoa(a.local if hasattr(a, "local") else a.addr)
    return "198.51.100.1"


# ---- flow specs and expectation files ---------------------------------------------------------

def flowspec(data: bytes) -> bool:
    """A packet spelling (as in an expectation file) parsed and injected into the home router."""
    from pathtrace.commands.flowspec import FlowSpecError, parse_words
    from pathtrace.errors import PathtraceError
    text = data.decode("utf-8", "surrogateescape")
    try:
        spec = parse_words(text)
    except FlowSpecError:
        return False
    except Exception as exc:
        raise _unexpected(exc) from None
    try:
        _session().inject(spec)
    except (FlowSpecError, PathtraceError):
        return True
    except Exception as exc:
        raise _unexpected(exc) from None
    return True


def expectations(data: bytes) -> bool:
    """An expectation file loaded, validated and run against the home router as `check` does."""
    return _with_file(data, "e.yaml", _expect_file)


def _expect_file(path: str) -> bool:
    from pathtrace.commands.check import run_case, validate_cases
    from pathtrace.commands.expectfile import load_expectations
    from pathtrace.errors import PathtraceError
    from pathtrace.host.loader import load_host
    cfg = load_host(str(HOST))
    try:
        cases = load_expectations(path)
        validate_cases(cfg, cases, path)
    except PathtraceError:
        return False
    except Exception as exc:
        raise _unexpected(exc) from None
    for case in cases[:5]:
        result = run_case(cfg, case, None)
        if result.error and result.error.startswith("model error"):
            raise Crash(f"case {case.name!r}: {result.error}")
    return True


TARGETS: dict[str, Callable[[bytes], None]] = {
    "capture": capture, "host": host, "ruleset": ruleset, "flowspec": flowspec, "expect": expectations,
    "nftables": nftables,
}
