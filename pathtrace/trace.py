"""What the model records while it runs: the steps of a path, and the packet's fate.

Model functions call `ctx.step(fn, ...)` as they execute, so the path is the real
order of execution, nested by `depth` for packets the host builds on the way
(ICMP errors, resets, ARP requests).  With `record=False` (summary runs) steps are
not kept, which keeps the hot path free of per-step allocations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Verdicts of an input packet (documented in man/pathtrace.1).
LOCAL_DELIVER = "LOCAL_DELIVER"   # handed to a local socket or answered by the stack itself
FORWARD = "FORWARD"               # routed and transmitted on another (or the same) interface
DROP = "DROP"                     # freed with a drop reason (kfree_skb_reason)
CONSUMED = "CONSUMED"             # consumed without error (ARP processed, TCP RST sent for no socket is a DROP)
QUEUED = "QUEUED"                 # held in a neighbour's arp_queue waiting for resolution
STOLEN = "STOLEN"                 # taken by netfilter (NFQUEUE) – left the model's view
TRANSMIT = "TRANSMIT"             # host-generated packet left on an interface
SENT = "SENT"                     # a frame the capture shows the host sending, which the model sends too


@dataclass(slots=True)
class Step:
    fn: str
    depth: int
    detail: dict[str, Any]
    json: str | None = None     # its JSON text once rendered (steps are never changed after creation)


@dataclass(slots=True)
class Emitted:
    """A frame that left the host because of the current input packet."""

    dev: str
    frame: bytes
    summary: str
    kind: str  # forwarded | generated | released


@dataclass(slots=True)
class PacketRecord:
    index: int
    time: float
    ingress: str | None
    packet: str
    verdict: str
    reason: str | None
    egress: str | None
    path: list[Step]
    emitted: list[Emitted]
    warnings: list[str]
    rules: list[dict] = field(default_factory=list)  # deciding netfilter rules (table/chain/rule)
    flow: Any = None            # the replay cache's entry this record was served from (renderers key caches on it)
    agreement: dict | None = None   # frames the host sent (pathtrace/sent.py): prediction, differences


class PacketContext:
    """The trace of one input event; shared by every skb the event creates."""

    __slots__ = ("record", "steps", "depth", "emitted", "warnings", "now", "verdicts", "emit_frames", "net",
                 "learn", "counted")

    def __init__(self, now: float, record: bool = True, emit_frames: bool = True, net: Any = None):
        self.net = net   # the Net namespace the event happens in
        self.record = record
        self.emit_frames = emit_frames
        self.steps: list[Step] = []
        self.depth = 0
        self.emitted: list[Emitted] = []
        self.warnings: list[str] = []
        self.now = now
        self.verdicts: list[dict] = []   # netfilter decisions, for summaries and checks
        # Set by the replay decision cache while it learns a flow's path (pathtrace/flowcache.py):
        # `learn` collects guards and effects, `counted` every x_tables counter (Rule/Chain) bumped.
        self.learn: Any = None
        self.counted: list | None = None

    def step(self, fn: str, **detail: Any) -> None:
        if self.record:
            self.steps.append(Step(fn, self.depth, detail))

    def uncacheable(self, why: str) -> None:
        """This event's path depends on more than the flow's headers and state (rate limits,
        fragments, local sockets...): the replay cache must not reuse it for later packets."""
        if self.learn is not None:
            self.learn.nocache = why

    def nested(self) -> "_Nest":
        """Context manager: steps of a packet the host builds sit one level deeper."""
        return _Nest(self)


class _Nest:
    __slots__ = ("ctx",)

    def __init__(self, ctx: PacketContext):
        self.ctx = ctx

    def __enter__(self) -> None:
        self.ctx.depth += 1

    def __exit__(self, *exc: object) -> None:
        self.ctx.depth -= 1
