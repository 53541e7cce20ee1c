"""The model against the real kernel's recorded behaviour (tests/differential/expected).

Each scenario's packets are replayed through the model and compared, packet by
packet, with what `python -m pathtrace.verify.record` saw the kernel do.  Known
model disagreements are xfail(strict=True): fixing one makes its test XPASS and
fail, so the entry must then be removed from KNOWN_DISAGREEMENTS.
With root, network namespaces and PATHTRACE_LIVE=1 (or CI=true) the model is also
compared with the live kernel.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import live_skip_reason
from pathtrace.verify.compare import agreements, differences
from pathtrace.verify.observe import Observation
from pathtrace.verify.record import load_scenarios
from pathtrace.verify.runner import run_model

HERE = Path(__file__).resolve().parent / "differential"
SCENARIOS = {s.name: s for s in load_scenarios(str(HERE / "scenarios.py"))}
EXPECTED = HERE / "expected"

# scenario -> why the model disagrees with the kernel (diagnosis in the reason).
KNOWN_DISAGREEMENTS: dict[str, str] = {}


def _params() -> list:
    out = []
    for name in sorted(SCENARIOS):
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN_DISAGREEMENTS[name])] if name in KNOWN_DISAGREEMENTS else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def _explain(name: str, kernel: list[Observation], model: list[Observation]) -> str:
    rows = agreements([f"packet {i}" for i in range(len(kernel))], kernel, model)
    lines = [f"{name}: model disagrees with the kernel"]
    for r in rows:
        if not r.agrees:
            lines.append(f"  #{r.index} {r.differences}\n    kernel {r.kernel}\n    model  {r.model}")
    return "\n".join(lines)


def test_enough_scenarios_are_recorded() -> None:
    assert len(SCENARIOS) >= 30
    missing = [n for n in SCENARIOS if not (EXPECTED / f"{n}.json").exists()]
    assert not missing, f"no kernel recording for {missing}: run python -m pathtrace.verify.record (root)"


@pytest.mark.parametrize("name", _params())
def test_model_matches_recorded_kernel(name: str) -> None:
    path = EXPECTED / f"{name}.json"
    if not path.exists():
        pytest.skip(f"{name}: not recorded yet")
    data = json.loads(path.read_text())
    scenario = SCENARIOS[name]
    injections = scenario.injections()
    recorded = [(p["ingress"], p["frame"]) for p in data["packets"]]
    assert recorded == [(i.ingress, i.wire.hex()) for i in injections], \
        f"{name}: scenario changed since it was recorded; re-run python -m pathtrace.verify.record {name}"
    kernel = [Observation.from_json(p["kernel"]) for p in data["packets"]]
    model = run_model(scenario.host(), injections)
    assert all(not differences(k, m) for k, m in zip(kernel, model)), _explain(name, kernel, model)


@pytest.mark.parametrize("name", _params())
def test_model_matches_live_kernel(name: str) -> None:
    why = live_skip_reason()
    if why:
        pytest.skip(why)
    from pathtrace.verify.runner import run_kernel
    scenario = SCENARIOS[name]
    injections = scenario.injections()
    kernel = run_kernel(scenario.host(), injections)
    model = run_model(scenario.host(), injections)
    assert all(not differences(k, m) for k, m in zip(kernel, model)), _explain(name, kernel, model)
