"""Which frames of a capture the host sent, and on which interface (README: "Direction of each frame").

In order, the first rule that decides:
1. The capture says so: a pcapng EPB's inbound/outbound flag, or a LINUX_SLL/SLL2 packet
   type (4, OUTGOING, is sent; anything else received).
2. A plain Ethernet frame whose source MAC is one of the host's own (and whose
   destination is not that same MAC) was sent by the host: by its own stack when the
   source address is local, as a forwarded copy otherwise.
3. Everything else was received.
The interface a sent frame left on: the pcapng interface name, the SLL2 interface index
(mapped to a host interface by `ifindex:` in the host file, `--ifindex`, or inference),
the interface owning the source MAC, then --in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pathtrace.capture.frame import Frame

if TYPE_CHECKING:  # pragma: no cover
    from pathtrace.net.core.net_namespace import Net
    from pathtrace.net.core.netdevice import NetDevice

DIRECTION_UNKNOWN, DIRECTION_IN, DIRECTION_OUT = 0, 1, 2
SLL_OUTGOING = 4


@dataclass
class Direction:
    net: "Net"
    ingress: str | None = None                       # --in
    ifindex: dict[int, str] = field(default_factory=dict)   # SLL2 interface index -> host interface

    def sent_by_host(self, frame: Frame) -> "NetDevice | None":
        """The interface the host sent `frame` on, or None when the host received it."""
        direction = getattr(frame, "direction", DIRECTION_UNKNOWN)
        if direction == DIRECTION_IN:
            return None
        if direction != DIRECTION_OUT:
            if frame.pkt_type is not None:
                if frame.pkt_type != SLL_OUTGOING:
                    return None
            elif frame.src_mac is None or frame.src_mac not in self.net.by_mac or frame.dst_mac == frame.src_mac:
                return None
        return self.device_of(frame, outgoing=True)

    def device_of(self, frame: Frame, outgoing: bool) -> "NetDevice | None":
        """The host interface a frame was captured on, when the capture names it or its MAC does."""
        devices = self.net.devices
        if frame.ifname and frame.ifname in devices:
            return devices[frame.ifname]
        index = getattr(frame, "ifindex", None)
        if index is not None and index in self.ifindex:
            return devices[self.ifindex[index]]
        mac = frame.src_mac if outgoing else frame.dst_mac
        if mac is not None and mac in self.net.by_mac:
            return self.net.by_mac[mac]
        if self.ingress:
            return devices[self.ingress]
        return next((d for d in devices.values() if not d.loopback), self.net.loopback) if outgoing else None
