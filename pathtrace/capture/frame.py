"""The record the capture reader hands to the model: one per packet record in the file."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Frame:
    """One captured packet with its link layer already taken apart.

    The model starts at the network layer (what the driver hands to
    __netif_receive_skb), so L2 is parsed here once; `payload` is everything after
    the link header and VLAN tags, untrimmed (Ethernet padding included).
    `error` is set, and `payload` may be empty, when the link header is unusable.
    """

    index: int              # 0-based position among the capture's packet records
    ts: float               # seconds since the epoch
    ifname: str | None      # pcapng if_name of the packet's interface, else None
    linktype: int           # LINKTYPE_* of the record (-1: pcapng interface undefined)
    dst_mac: bytes | None   # None when the link layer has no destination (raw, SLL, null)
    src_mac: bytes | None
    pkt_type: int | None    # SLL/SLL2 packet type (0 host .. 4 outgoing), else None
    vlan: tuple[int, ...]   # VLAN TCIs, outer -> inner
    ethertype: int          # protocol of `payload` (0 when unknown)
    payload: bytes          # network-layer bytes
    wirelen: int            # original length on the wire
    caplen: int             # bytes actually captured
    error: str | None       # why the link header is unusable, or the record truncated
