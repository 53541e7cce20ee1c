"""struct net_device: what the model needs of an interface."""
from __future__ import annotations

from dataclasses import dataclass, field

from pathtrace.lib.inet import prefix_mask


@dataclass(slots=True, eq=False)
class InAddr:
    """struct in_ifaddr: one address on a device."""

    local: int
    prefixlen: int
    peer: int = 0        # ifa_address of `ip addr add LOCAL peer PEER/LEN` (0: the same as local)

    @property
    def mask(self) -> int:
        return prefix_mask(self.prefixlen)

    @property
    def address(self) -> int:
        """ifa_address: the address whose subnet the prefix covers (inet_ifa_match)."""
        return self.peer or self.local

    @property
    def broadcast(self) -> int:
        return (self.address | (~self.mask & 0xFFFFFFFF)) if self.prefixlen < 31 else 0


@dataclass(slots=True, eq=False)
class NetDevice:
    name: str
    ifindex: int
    mac: bytes
    mtu: int = 1500
    up: bool = True
    driver: str = "veth"
    txqueuelen: int = 1000
    addrs: list[InAddr] = field(default_factory=list)
    loopback: bool = False
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_dropped: int = 0

    def __repr__(self) -> str:
        return f"<dev {self.name}>"
