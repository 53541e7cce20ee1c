"""Write Ethernet frames to a classic pcap file, streaming (the model's emitted frames,
test fixtures).  Microsecond resolution unless nanosecond=True."""
from __future__ import annotations

import struct
from typing import BinaryIO

LINKTYPE_ETHERNET = 1


class OwnedFile:
    """A capture file the writer opened itself (closed at the end) or was handed (only flushed)."""

    _f: BinaryIO | None
    _own: bool

    def _open(self, dest: str | BinaryIO) -> BinaryIO:
        self._own = isinstance(dest, str)
        self._f = open(dest, "wb") if isinstance(dest, str) else dest
        return self._f

    def close(self) -> None:
        if self._f is not None:
            if self._own:
                self._f.close()
            else:
                self._f.flush()
            self._f = None


class PcapWriter(OwnedFile):
    """with PcapWriter("out.pcap") as w: w.write(frame_bytes, ts)"""

    def __init__(self, dest: str | BinaryIO, linktype: int = LINKTYPE_ETHERNET,
                 snaplen: int = 262144, nanosecond: bool = False):
        self._open(dest)
        self._scale = 1_000_000_000 if nanosecond else 1_000_000
        self._snaplen = snaplen
        magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
        self._f.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))
        self._rec = struct.Struct("<IIII").pack
        self.count = 0

    def write(self, frame: bytes, ts: float = 0.0, wirelen: int | None = None) -> None:
        """Append one record; frames longer than snaplen are cut (wirelen keeps the original)."""
        ticks = round(ts * self._scale)
        sec, frac = divmod(ticks, self._scale)
        data = bytes(frame[:self._snaplen])
        # one write per record: an interrupt cannot leave a header without its data
        self._f.write(self._rec(sec & 0xFFFFFFFF, frac, len(data), len(frame) if wirelen is None else wirelen) + data)
        self.count += 1

    def __enter__(self) -> "PcapWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PcapDirWriter:
    """`--write-pcap-dir DIR`: one pcap per interface frames left on (DIR/IFACE.pcap), opened at its
    first frame; the directory must exist (checked before the replay)."""

    def __init__(self, directory: str):
        import os
        if not os.path.isdir(directory):
            raise OSError(2, "no such directory")
        self.directory = directory
        self._writers: dict[str, PcapWriter] = {}

    def write_emitted(self, dev: str, frame: bytes, ts: float) -> None:
        import os
        w = self._writers.get(dev)
        if w is None:
            w = self._writers[dev] = PcapWriter(os.path.join(self.directory, f"{dev}.pcap"))
        w.write(frame, ts)

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
