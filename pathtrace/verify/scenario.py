"""A differential scenario: a host YAML text, frames with their ingress, and a note.

Scenarios are data so the same definition drives the recorder (real kernel, root)
and the test (model vs recorded expectations, anywhere).
"""
from __future__ import annotations

import os
import tempfile
import textwrap
from dataclasses import dataclass, field

from pathtrace.host.loader import load_host
from pathtrace.host.model import HostConfig
from pathtrace.verify.runner import Injection, frame_from_ether, plan

PACKET_GAP = 0.2   # capture-time spacing given to the model, close to the kernel's per-packet wait


@dataclass(slots=True)
class Scenario:
    name: str
    host_yaml: str
    packets: list[tuple[str, bytes]]           # (ingress interface, Ethernet frame)
    note: str = ""
    needs_iptables: bool = False
    tags: list[str] = field(default_factory=list)
    gap: float = PACKET_GAP                   # capture-time spacing of the packets (the kernel is paced by it)

    def host(self) -> HostConfig:
        """Load the YAML through the real loader (it wants a file, for line numbers)."""
        with tempfile.TemporaryDirectory(prefix="ptv-") as tmp:
            path = os.path.join(tmp, f"{self.name}.yaml")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(textwrap.dedent(self.host_yaml))
            return load_host(path)

    def injections(self) -> list[Injection]:
        frames = [frame_from_ether(data, i, 1000.0 + i * self.gap, ifname=dev)
                  for i, (dev, data) in enumerate(self.packets)]
        return plan(self.host(), frames)
