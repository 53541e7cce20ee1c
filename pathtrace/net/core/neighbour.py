"""The neighbour table (net/core/neighbour.c) with ARP's parameters (net/ipv4/arp.c).

States and timers follow the kernel's NUD machine: INCOMPLETE entries queue packets
(arp_queue, unres_qlen_bytes) and send up to mcast_probes requests retrans_time apart;
STALE goes to DELAY on use and to PROBE after delay_first_probe_time.  Timers run on
capture time, before each packet is processed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NUD_INCOMPLETE = "INCOMPLETE"
NUD_REACHABLE = "REACHABLE"
NUD_STALE = "STALE"
NUD_DELAY = "DELAY"
NUD_PROBE = "PROBE"
NUD_FAILED = "FAILED"
NUD_NOARP = "NOARP"
NUD_PERMANENT = "PERMANENT"
NUD_NONE = "NONE"
NUD_CONNECTED = {NUD_PERMANENT, NUD_NOARP, NUD_REACHABLE}
NUD_VALID = NUD_CONNECTED | {NUD_STALE, NUD_DELAY, NUD_PROBE}


@dataclass(slots=True)
class NeighParms:
    """arp_tbl.parms defaults (ip -s ntable)."""

    mcast_probes: int = 3
    ucast_probes: int = 3
    app_probes: int = 0
    retrans_time: float = 1.0
    base_reachable_time: float = 30.0
    delay_probe_time: float = 5.0
    gc_stale_time: float = 60.0
    unres_qlen_bytes: int = 212992       # SK_WMEM_MAX in the kernel's default build


@dataclass(slots=True, eq=False)
class Neighbour:
    addr: int
    dev: str
    lladdr: bytes | None
    state: str
    arp_queue: list[Any] = field(default_factory=list)   # SkBuffs waiting for resolution
    queue_bytes: int = 0
    probes: int = 0
    _timer: float | None = None         # capture time the entry's timer fires (see `timer`)
    confirmed: float = 0.0
    updated: float = 0.0
    hh_cached: bool = False             # neigh_hh_init done: later packets use neigh_hh_output
    clock: "TimerClock | None" = None   # the table's earliest-deadline record

    @property
    def timer(self) -> float | None:
        return self._timer

    @timer.setter
    def timer(self, when: float | None) -> None:
        self._timer = when
        if when is not None and self.clock is not None and when < self.clock.earliest:
            self.clock.earliest = when


@dataclass(slots=True)
class TimerClock:
    """The earliest pending timer (neighbour or TCP), so a replay need not scan every entry before each
    packet: the replay cache serves packets only while `now < earliest`.  `tcp` keeps the TCP timers'
    minimum (tcp_timer.py) so a recomputation of the neighbour minimum cannot forget them."""

    earliest: float = float("inf")
    tcp: float = float("inf")

    def arm(self, when: float) -> None:
        """A timer was set for `when`: lower the earliest deadline."""
        if when < self.earliest:
            self.earliest = when


@dataclass(slots=True)
class NeighTable:
    parms: NeighParms = field(default_factory=NeighParms)
    entries: dict[tuple[int, str], Neighbour] = field(default_factory=dict)
    clock: TimerClock = field(default_factory=TimerClock)
    hh_inits: list[tuple[int, str]] = field(default_factory=list)   # entries whose header cache was filled,
    # in order: the one piece of neighbour state `replay --jobs` reconciles between workers (parallel.py)

    def lookup(self, addr: int, dev: str) -> Neighbour | None:
        return self.entries.get((addr, dev))

    def create(self, addr: int, dev: str) -> Neighbour:
        """__neigh_create: a new NONE entry (arp_constructor)."""
        n = Neighbour(addr=addr, dev=dev, lladdr=None, state=NUD_NONE, clock=self.clock)
        self.entries[(addr, dev)] = n
        return n

    def pending_timers(self, now: float) -> list[Neighbour]:
        if now < self.clock.earliest:
            return []
        live = [n.timer for n in self.entries.values() if n.timer is not None]
        self.clock.earliest = min(min(live, default=float("inf")), self.clock.tcp)
        due = [n for n in self.entries.values() if n.timer is not None and n.timer <= now]
        due.sort(key=lambda n: n.timer)
        return due
