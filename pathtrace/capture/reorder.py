"""Frames in timestamp order through a bounded reorder window.

dumpcap with several interfaces (`dumpcap -i eth0 -i eth1`) writes each interface's
packets in batches as it drains that interface's ring, so a file is in time order per
interface but not overall: the outgoing copy of a forwarded packet can come before its
incoming original.  The model must see them in the order the kernel did.  Sorting the
whole file would hold it in memory; instead a heap holds at most `window_frames` frames
(and no frame longer than `window_seconds` of capture time behind the newest one seen),
which is enough for the skew one capture tool's batching makes, and memory stays flat
however large the file.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from pathtrace.capture.frame import Frame

WINDOW_FRAMES = 10_000      # ~20 MB of full-size frames at most
WINDOW_SECONDS = 2.0        # dumpcap's per-interface batches are far shorter (250 ms read timeout)


@dataclass(slots=True)
class ReorderStats:
    """What the window saw: frames older than an earlier frame of the file (put back in place),
    frames that came too late to be put in place (older than one already handed out: the
    window was too small for this file), and the most frames held at once."""

    out_of_order: int = 0
    late: int = 0
    max_held: int = 0


def time_ordered(frames: Iterable[Frame], window_frames: int = WINDOW_FRAMES,
                 window_seconds: float = WINDOW_SECONDS, stats: ReorderStats | None = None) -> Iterator[Frame]:
    """Yield `frames` sorted by timestamp, equal timestamps in file order, each keeping its
    `index`; a frame older than one already yielded (beyond the window) is yielded at once
    and counted in `stats.late`."""
    if window_frames < 1:
        raise ValueError("window_frames must be at least 1")
    st = stats if stats is not None else ReorderStats()
    heap: list[tuple[float, int, Frame]] = []
    push, pop = heapq.heappush, heapq.heappop
    newest = float("-inf")
    last_out = float("-inf")
    seq = 0                         # arrival number: the tie-break that keeps equal times in file order
    for frame in frames:
        ts = frame.ts
        if ts < newest:
            st.out_of_order += 1
            if ts < last_out:
                st.late += 1
                yield frame
                continue
        else:
            newest = ts
        push(heap, (ts, seq, frame))
        seq += 1
        if len(heap) > st.max_held:
            st.max_held = len(heap)
        horizon = newest - window_seconds
        while len(heap) > window_frames or heap[0][0] < horizon:
            last_out, _, out = pop(heap)
            yield out
            if not heap:
                break
    while heap:
        yield pop(heap)[2]


@dataclass
class OrderedFrames:
    """A reader's frames in time order (read_frames(path, ordered=True)).

    Deliberately has no `cursor`: the replay cache's C lanes serve records in file order
    straight from the reader's buffer, which a reordered stream must not do."""

    reader: "Iterable[Frame]"
    window_frames: int = WINDOW_FRAMES
    window_seconds: float = WINDOW_SECONDS
    stats: ReorderStats = field(default_factory=ReorderStats)
    _gen: Iterator[Frame] | None = None

    def __iter__(self) -> Iterator[Frame]:
        if self._gen is None:
            self._gen = time_ordered(self.reader, self.window_frames, self.window_seconds, self.stats)
        return self._gen

    def __next__(self) -> Frame:
        return next(iter(self))

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
        close = getattr(self.reader, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "OrderedFrames":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
