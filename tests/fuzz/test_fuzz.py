"""Hypothesis runs of the fuzz targets (tests/fuzz/targets.py) on mutations of the repository's own
inputs.  A few seconds each in the normal suite; longer with PATHTRACE_FUZZ_EXAMPLES:

    PATHTRACE_FUZZ_EXAMPLES=5000 python -m pytest tests/fuzz -q

(tests/fuzz/mutate.py runs the same targets for the counts the issue asks, without Hypothesis.)
A crash Hypothesis finds fails the test with the shrunk input; keep it in tests/data/fuzz/<target>/.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutate import mutate, seeds  # noqa: E402
from targets import TARGETS  # noqa: E402

EXAMPLES = int(os.environ.get("PATHTRACE_FUZZ_EXAMPLES", "0"))
# per target: examples in the normal suite (a few seconds each: a capture is replayed, a host loaded)
SHORT = {"capture": 100, "host": 150, "ruleset": 100, "flowspec": 200, "expect": 80, "nftables": 80}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_mutated_inputs(target: str) -> None:
    pool = seeds(target)
    text = target != "capture"

    @settings(max_examples=EXAMPLES or SHORT[target], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(seed=st.sampled_from(pool), rng=st.randoms(use_true_random=False))
    def check(seed: bytes, rng) -> None:
        TARGETS[target](mutate(rng, seed, pool, text))

    check()


@settings(max_examples=EXAMPLES or 60, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_as_flow_spec(data: bytes) -> None:
    TARGETS["flowspec"](data)


@settings(max_examples=EXAMPLES or 30, deadline=None, database=None)
@given(st.text(max_size=300))
def test_arbitrary_text_as_host_file(text: str) -> None:
    TARGETS["host"](text.encode("utf-8", "surrogatepass"))
