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
    expected: list[str] | None = None   # the capture's own host frames after this packet (summaries)

    @property
    def capture_matches(self) -> bool | None:
        """Did the kernel send what the capture's host sent (same summaries, same counts)? None: nothing to check."""
        if not self.expected:
            return None
        return sorted(self.expected) == sorted(self.kernel.emitted)

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


def agreements(packets: list[str], kernel: list[Observation], model: list[Observation],
               expected: list[list[str]] | None = None) -> list[Agreement]:
    exp = expected or [[] for _ in packets]
    return [Agreement(i, p, k, m, differences(k, m), e or None)
            for i, (p, k, m, e) in enumerate(zip(packets, kernel, model, exp))]


def render(rows: list[Agreement]) -> str:
    """The table, the agreement rate, then every emitted-frame difference spelled out."""
    with_capture = any(r.expected for r in rows)
    table = []
    for r in rows:
        row = [r.index, r.packet[:60], _fate(r.kernel), _fate(r.model), len(r.kernel.emitted),
               len(r.model.emitted), "yes" if r.agrees else "NO " + ",".join(r.differences)]
        if with_capture:
            row.append({None: "", True: "yes", False: "NO"}[r.capture_matches])
        table.append(row)
    headers = ["#", "packet", "kernel", "model", "k-out", "m-out", "agree"] + (["capture-out"] if with_capture else [])
    out = [tabulate(table, headers=headers)]
    agreed = sum(r.agrees for r in rows)
    rate = 100.0 * agreed / len(rows) if rows else 100.0
    out.append(f"\nagreement: {agreed}/{len(rows)} packets ({rate:.1f}%)")
    if with_capture:
        checked = [r for r in rows if r.expected]
        same = sum(bool(r.capture_matches) for r in checked)
        out.append(f"capture's host frames: kernel sent the same after {same}/{len(checked)} packets")
        for r in checked:
            if not r.capture_matches:
                out.append(f"\n#{r.index} host frames:")
                out += [f"  capture only: {e}" for e in sorted(set(r.expected) - set(r.kernel.emitted))]
                out += [f"  kernel only:  {e}" for e in sorted(set(r.kernel.emitted) - set(r.expected))]
    for r in rows:
        if "emitted" not in r.differences:
            continue
        out.append(f"\n#{r.index} frames out:")
        out += [f"  kernel only: {e}" for e in sorted(set(r.kernel.emitted) - set(r.model.emitted))]
        out += [f"  model only:  {e}" for e in sorted(set(r.model.emitted) - set(r.kernel.emitted))]
        if set(r.kernel.emitted) == set(r.model.emitted):
            out.append(f"  same frames, different counts: kernel {r.kernel.emitted} model {r.model.emitted}")
    return "\n".join(out) + "\n"
