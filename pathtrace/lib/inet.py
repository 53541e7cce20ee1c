"""IPv4 and MAC address conversions used by the model and the loaders."""
from __future__ import annotations

import functools
import socket
import struct


def aton(text: str) -> int:
    """Dotted quad to host-order int; raises ValueError on anything else."""
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts):
        raise ValueError(f"bad IPv4 address {text!r}")
    value = 0
    for p in parts:
        n = int(p)
        if n > 255:
            raise ValueError(f"bad IPv4 address {text!r}")
        value = (value << 8) | n
    return value


@functools.lru_cache(maxsize=1 << 16)
def ntoa(addr: int) -> str:
    """Dotted quad; memoised (a pure function): traces and rule-miss reasons print the same
    few addresses over and over."""
    return socket.inet_ntoa(struct.pack("!I", addr))


def prefix_mask(plen: int) -> int:
    return (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0


def parse_prefix(text: str) -> tuple[int, int]:
    """'10.0.0.0/8' or a bare address (a /32) to (network, plen)."""
    if text == "default":
        return 0, 0
    addr, _, plen_text = text.partition("/")
    plen = 32 if not plen_text else int(plen_text) if plen_text.isascii() and plen_text.isdigit() and len(plen_text) <= 2 else -1
    if not 0 <= plen <= 32:
        raise ValueError(f"bad prefix length in {text!r}")
    return aton(addr) & prefix_mask(plen), plen


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) and p.isascii() and p.isalnum() for p in parts):
        raise ValueError(f"bad MAC address {text!r}")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"bad MAC address {text!r}") from None


def mac_ntoa(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def ipv4_is_multicast(addr: int) -> bool:
    return (addr & 0xF0000000) == 0xE0000000


def ipv4_is_lbcast(addr: int) -> bool:
    return addr == 0xFFFFFFFF


def ipv4_is_zeronet(addr: int) -> bool:
    """Only 0.0.0.0 itself since Linux 5.3 (0.0.0.0/8 became a usable range)."""
    return addr == 0


def ipv4_is_loopback(addr: int) -> bool:
    return (addr & 0xFF000000) == 0x7F000000
