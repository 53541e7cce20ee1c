"""Per-packet agreement between the model's and the kernel's Observations."""
from __future__ import annotations

from dataclasses import dataclass

from tabulate import tabulate

from pathtrace.verify.observe import Observation


@dataclass(slots=True)
class Agreement:
    index: int
    packet: str
    kernel: Observation
    model: Observation
    differences: list[str]

    @property
    def agrees(self) -> bool:
        return not self.differences


def differences(kernel: Observation, model: Observation) -> list[str]:
    """Names of the fields that disagree: verdict, reason, egress, emitted."""
    diff = []
    if kernel.verdict != model.verdict:
        diff.append("verdict")
    elif kernel.verdict == "DROP" and kernel.reason != model.reason:
        diff.append("reason")
    elif kernel.verdict == "FORWARD" and kernel.egress != model.egress:
        diff.append("egress")
    if sorted(kernel.emitted) != sorted(model.emitted):
        diff.append("emitted")
    return diff


def _fate(o: Observation) -> str:
    if o.verdict == "DROP":
        return f"DROP {o.reason}"
    if o.verdict == "FORWARD":
        return f"FORWARD {o.egress}"
    return o.verdict


def agreements(packets: list[str], kernel: list[Observation], model: list[Observation]) -> list[Agreement]:
    return [Agreement(i, p, k, m, differences(k, m)) for i, (p, k, m) in enumerate(zip(packets, kernel, model))]


def render(rows: list[Agreement]) -> str:
    """The table, the agreement rate, then every emitted-frame difference spelled out."""
    table = [[r.index, r.packet[:60], _fate(r.kernel), _fate(r.model), len(r.kernel.emitted),
              len(r.model.emitted), "yes" if r.agrees else "NO " + ",".join(r.differences)] for r in rows]
    out = [tabulate(table, headers=["#", "packet", "kernel", "model", "k-out", "m-out", "agree"])]
    agreed = sum(r.agrees for r in rows)
    rate = 100.0 * agreed / len(rows) if rows else 100.0
    out.append(f"\nagreement: {agreed}/{len(rows)} packets ({rate:.1f}%)")
    for r in rows:
        if "emitted" not in r.differences:
            continue
        out.append(f"\n#{r.index} frames out:")
        out += [f"  kernel only: {e}" for e in sorted(set(r.kernel.emitted) - set(r.model.emitted))]
        out += [f"  model only:  {e}" for e in sorted(set(r.model.emitted) - set(r.kernel.emitted))]
        if set(r.kernel.emitted) == set(r.model.emitted):
            out.append(f"  same frames, different counts: kernel {r.kernel.emitted} model {r.model.emitted}")
    return "\n".join(out) + "\n"
