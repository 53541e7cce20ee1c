"""Packet selection with tcpdump's pcap-filter language, compiled by libpcap itself.

The expression is compiled once by libpcap (pcap_compile on a dead Ethernet handle, through the
`libpcap` binding) and each record is run through the compiled BPF program (pcap_offline_filter), so
`'tcp port 22 and not net 10.0.0.0/8'` means exactly what it means to tcpdump.  Records are matched
as Ethernet frames rebuilt from what the reader decoded (MACs, VLAN tags, EtherType, network layer):
for Ethernet captures that is the record itself; for link types without MAC addresses (raw IP,
LINUX_SLL) the `ether` primitives see zero addresses.  Selection happens before the model: a record
keeps its index in the capture whether or not the ones before it were selected.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from pathtrace.capture.frame import Frame
from pathtrace.errors import PathtraceError

DLT_EN10MB = 1
SNAPLEN = 262144
_ZERO_MAC = bytes(6)


class FilterError(PathtraceError):
    """An expression libpcap does not compile, or no libpcap to compile it."""


@dataclass
class PcapFilter:
    """A compiled pcap-filter expression; `matches(frame)` runs it on one record."""

    expression: str
    _lib: Any = field(default=None, repr=False)
    _prog: Any = field(default=None, repr=False)
    _hdr: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        import ctypes
        try:
            import libpcap
        except Exception as exc:            # the binding, or the libpcap shared library, is missing
            raise FilterError(f"filter {self.expression!r}: pcap-filter expressions need libpcap "
                              f"(pip install libpcap; apt install libpcap0.8): {exc}") from None
        handle = libpcap.open_dead(DLT_EN10MB, SNAPLEN)
        prog = libpcap.bpf_program()
        if libpcap.compile(handle, ctypes.byref(prog), self.expression.encode("utf-8", "replace"), 1,
                           libpcap.PCAP_NETMASK_UNKNOWN) != 0:
            why = libpcap.geterr(handle).decode("utf-8", "replace")
            libpcap.close(handle)
            raise FilterError(f"filter {self.expression!r}: {why}")
        libpcap.close(handle)
        self._lib, self._prog, self._hdr = libpcap, prog, libpcap.pkthdr()

    def matches(self, frame: Frame) -> bool:
        import ctypes
        data = ethernet_bytes(frame)
        self._hdr.caplen = len(data)
        self._hdr.len = max(len(data), frame.wirelen)
        buf = (ctypes.c_ubyte * len(data)).from_buffer_copy(data) if data else (ctypes.c_ubyte * 1)()
        return self._lib.offline_filter(ctypes.byref(self._prog), ctypes.byref(self._hdr), buf) != 0

    def select(self, frames: Iterable[Frame]) -> Iterator[Frame]:
        """The records the expression selects, with their capture indexes unchanged."""
        return (f for f in frames if self.matches(f))


def ethernet_bytes(frame: Frame) -> bytes:
    """The record as an Ethernet frame: its MACs (zero when the link has none), VLAN tags, EtherType
    and network-layer bytes."""
    out = bytearray((frame.dst_mac or _ZERO_MAC) + (frame.src_mac or _ZERO_MAC))
    for tci in frame.vlan:
        out += struct.pack("!HH", 0x8100, tci)
    out += struct.pack("!H", frame.ethertype & 0xFFFF) + frame.payload
    return bytes(out)


def compile_filter(words: Iterable[str]) -> PcapFilter | None:
    """tcpdump's convention: the expression is the remaining arguments joined by spaces; none selects all."""
    expression = " ".join(words).strip()
    return PcapFilter(expression) if expression else None
