"""Record the real kernel's behaviour for the differential scenarios (needs root).

    python -m pathtrace.verify.record [--scenarios tests/differential/scenarios.py]
                                      [--out tests/differential/expected] [NAME ...]

Writes one JSON file per scenario: the host YAML, each packet and the kernel's
Observation, so machines without root can still check the model against it.
Runs every scenario three times and refuses to write if the runs differ.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

from pathtrace.verify.netns import Unavailable
from pathtrace.verify.runner import run_kernel
from pathtrace.verify.scenario import Scenario

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_SCENARIOS = os.path.join(ROOT, "tests", "differential", "scenarios.py")
DEFAULT_OUT = os.path.join(ROOT, "tests", "differential", "expected")


def load_scenarios(path: str) -> list[Scenario]:
    spec = importlib.util.spec_from_file_location("differential_scenarios", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.SCENARIOS)


def record(scenario: Scenario, runs: int = 3) -> dict:
    injections = scenario.injections()
    results = [[o.to_json() for o in run_kernel(scenario.host(), injections)] for _ in range(runs)]
    stable = all(r == results[0] for r in results)
    packets = [{"ingress": i.ingress, "frame": i.wire.hex(), "packet": i.text, "kernel": k}
               for i, k in zip(injections, results[0])]
    return {"name": scenario.name, "note": scenario.note, "host_yaml": scenario.host_yaml.strip() + "\n",
            "kernel_release": os.uname().release, "stable_over_runs": runs if stable else 0,
            "packets": packets, "unstable_runs": [] if stable else results}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default=DEFAULT_SCENARIOS)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("names", nargs="*")
    args = ap.parse_args(argv)
    scenarios = [s for s in load_scenarios(args.scenarios) if not args.names or s.name in args.names]
    os.makedirs(args.out, exist_ok=True)
    unstable = 0
    for sc in scenarios:
        try:
            data = record(sc, args.runs)
        except Unavailable as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            return 77
        if not data["stable_over_runs"]:
            unstable += 1
            print(f"{sc.name}: UNSTABLE over {args.runs} runs, not written", file=sys.stderr)
            continue
        with open(os.path.join(args.out, f"{sc.name}.json"), "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.write("\n")
        fates = ", ".join(p["kernel"]["verdict"] + (f" {p['kernel']['reason']}" if p["kernel"]["reason"] else "")
                          for p in data["packets"])
        print(f"{sc.name}: {fates}")
    return 1 if unstable else 0


if __name__ == "__main__":
    sys.exit(main())
