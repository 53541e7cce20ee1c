"""Every crashing input the fuzzers found (tests/data/fuzz/<target>/*), and the hostile inputs of
issue 13, replayed through their fuzz target: each must now be refused cleanly or handled."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
from targets import TARGETS  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "fuzz"
CASES = sorted(p for p in DATA.glob("*/*") if p.is_file() and p.parent.name in TARGETS)


def test_regression_inputs_exist() -> None:
    assert {p.parent.name for p in CASES} == set(TARGETS)


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.name}" for p in CASES])
def test_regression_input(path: Path) -> None:
    TARGETS[path.parent.name](path.read_bytes())
