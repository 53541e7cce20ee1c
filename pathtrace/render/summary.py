"""--summary: verdict/reason counts and per-interface transmit counts as tables."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tabulate import tabulate

from pathtrace.trace import PacketRecord


@dataclass
class SummaryCounter:
    verdicts: Counter = field(default_factory=Counter)
    emitted: Counter = field(default_factory=Counter)
    packets: int = 0

    def add(self, record: PacketRecord) -> None:
        self.packets += 1
        self.verdicts[(record.verdict, record.reason or "")] += 1
        for e in record.emitted:
            self.emitted[(e.dev, e.kind)] += 1

    def add_many(self, verdict: str, reason: str | None, emitted: tuple[tuple[str, str], ...], count: int) -> None:
        """`count` packets with the same outcome (flows the replay cache counted in bulk)."""
        self.packets += count
        self.verdicts[(verdict, reason or "")] += count
        for dev, kind in emitted:
            self.emitted[(dev, kind)] += count

    def render(self, net, warnings: list[str], partial: bool = False) -> str:
        """The tables; `partial`: the replay was interrupted, the counts are those so far."""
        rows = [(v, r or "-", n, f"{100.0 * n / max(self.packets, 1):.1f}%")
                for (v, r), n in sorted(self.verdicts.items(), key=lambda kv: (-kv[1], kv[0]))]
        head = f"{self.packets} packets" + (" (partial: interrupted)" if partial else "")
        out = [head, tabulate(rows, headers=["verdict", "reason", "packets", "share"])]
        tx = [(d.name, d.rx_packets, d.tx_packets, d.tx_bytes) for d in net.devices.values()
              if d.rx_packets or d.tx_packets]
        if tx:
            out.append(tabulate(tx, headers=["interface", "rx packets", "tx packets", "tx bytes"]))
        if self.emitted:
            kinds = [(dev, kind, n) for (dev, kind), n in sorted(self.emitted.items())]
            out.append(tabulate(kinds, headers=["interface", "frames sent", "count"]))
        out.extend(f"warning: {w}" for w in warnings)
        return "\n\n".join(out) + "\n"
