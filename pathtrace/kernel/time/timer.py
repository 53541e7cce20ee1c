"""kernel/time/timer.c: when a timer armed with mod_timer really fires.

The timer wheel never fires a timer early: calc_wheel_index puts a timer in the level its distance
falls in, and calc_index rounds the expiry up to the next granule of that level (level 0: one jiffy;
level 1, 63..503 jiffies away: 8 jiffies; level 2, up to 4031: 64; each level 8 times the last).
At HZ=250 a neighbour's one-second retransmit timer (250 jiffies, level 1) fires 1.004-1.032 s after
it is armed, and 1.024 s after when it is re-armed from its own expiry — the intervals measured
between a 6.18 kernel's ARP probes.  The model counts jiffies on capture time.
"""
from __future__ import annotations

import math

HZ = 250                 # CONFIG_HZ of the reference kernels (Debian, Ubuntu generic, the lab's 6.18)
LVL_CLK_SHIFT = 3
LVL_BITS = 6
LVL_DEPTH = 9


def _lvl_start(n: int) -> int:
    return ((1 << LVL_BITS) - 1) << ((n - 1) * LVL_CLK_SHIFT)


def timer_expiry(now: float, delay: float, hz: int = HZ) -> float:
    """The capture time a timer armed at `now` for `delay` seconds (jiffies + delay*HZ) fires."""
    clk = math.floor(now * hz + 1e-9)
    expires = clk + max(round(delay * hz), 0)
    delta = expires - clk
    lvl = 0
    while lvl < LVL_DEPTH - 1 and delta >= _lvl_start(lvl + 1):
        lvl += 1
    shift = lvl * LVL_CLK_SHIFT
    bucket = ((expires >> shift) + 1) << shift
    return bucket / hz
