"""Drop reasons from the skb:kfree_skb tracepoint, in a tracing instance of our own.

An instance keeps our buffer, filter and enable bits apart from anyone else using
tracefs; the reason enum is mapped through the tracepoint's own print fmt so the
names are the running kernel's, not a copied table.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from pathtrace.verify.netns import Unavailable, run

TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
# Frames reaching the wire namespace are dropped by its disabled bridge port: not the host's doing.
IGNORED_REASONS = ("BRIDGE_INGRESS_STP_STATE",)
_LINE = re.compile(r"kfree_skb:.*?skbaddr=(\S+).*?protocol=(\d+) location=(\S+) reason: (\S+)")


@dataclass(slots=True)
class DropEvent:
    skbaddr: str
    protocol: int
    location: str       # function name, offset stripped (stable across runs)
    reason: str


def reason_table(fmt: str) -> dict[int, str]:
    """enum skb_drop_reason value -> name, from the `__print_symbolic` list of the print fmt."""
    return {int(num): name for num, name in re.findall(r'\{\s*(\d+),\s*"([A-Z0-9_]+)"\s*\}', fmt)}


def _tracefs_root() -> tuple[str, bool]:
    for root in TRACEFS:
        if os.path.exists(os.path.join(root, "instances")):
            return root, False
    root = TRACEFS[0]
    proc = run(["mount", "-t", "tracefs", "nodev", root], check=False)
    if proc.returncode != 0 or not os.path.exists(os.path.join(root, "instances")):
        raise Unavailable(f"tracefs is not available ({proc.stderr.strip() or 'no instances directory'})")
    return root, True


class DropTracer:
    """One tracing instance with only skb:kfree_skb enabled, filtered to IPv4 and ARP."""

    def __init__(self, tag: str):
        self.root, self.mounted = _tracefs_root()
        self.dir = os.path.join(self.root, "instances", tag)
        event = os.path.join(self.root, "events", "skb", "kfree_skb", "format")
        if not os.path.exists(event):
            raise Unavailable("this kernel has no skb:kfree_skb tracepoint")
        with open(event, encoding="utf-8") as fh:
            self.reasons = reason_table(fh.read())
        os.mkdir(self.dir)
        try:
            by_name = {v: k for k, v in self.reasons.items()}
            clauses = [f"(protocol == {ETH_P_IP} || protocol == {ETH_P_ARP})"]
            clauses += [f"reason != {by_name[r]}" for r in IGNORED_REASONS if r in by_name]
            ev = os.path.join(self.dir, "events", "skb", "kfree_skb")
            self._write(os.path.join(ev, "filter"), " && ".join(clauses))
            self._write(os.path.join(ev, "enable"), "1")
            self._write(os.path.join(self.dir, "tracing_on"), "1")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _write(path: str, text: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)

    def clear(self) -> None:
        self._write(os.path.join(self.dir, "trace"), "")

    def read(self) -> list[DropEvent]:
        """Events since the last clear(), oldest first."""
        with open(os.path.join(self.dir, "trace"), encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        events = []
        for line in text.splitlines():
            m = _LINE.search(line)
            if not m:
                continue
            reason = m.group(4)
            if reason.isdigit():
                reason = self.reasons.get(int(reason), reason)
            if reason in IGNORED_REASONS:
                continue
            events.append(DropEvent(m.group(1), int(m.group(2)), m.group(3).split("+")[0], reason))
        return events

    def close(self) -> None:
        """Disable and remove the instance (rmdir fails while events are enabled)."""
        if not os.path.isdir(self.dir):
            return
        for path, text in ((os.path.join(self.dir, "tracing_on"), "0"),
                           (os.path.join(self.dir, "events", "skb", "kfree_skb", "enable"), "0")):
            try:
                self._write(path, text)
            except OSError:
                pass
        try:
            os.rmdir(self.dir)
        except OSError:
            pass
