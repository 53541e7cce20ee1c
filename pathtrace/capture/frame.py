"""The record the capture reader hands to the model: one per packet record in the file."""
from __future__ import annotations

from dataclasses import dataclass

# Which way the frame crossed the capturing interface (pcapng epb_flags bits 0-1, or the
# LINUX_SLL/SLL2 packet type: 4 OUTGOING is outbound, 0-3 inbound).
DIR_UNKNOWN = 0
DIR_INBOUND = 1
DIR_OUTBOUND = 2

# LINUX_SLL/SLL2 packet types as the kernel's PACKET_* (include/uapi/linux/if_packet.h)
SLL_OUTGOING = 4


@dataclass(slots=True)
class Frame:
    """One captured packet with its link layer already taken apart.

    The model starts at the network layer (what the driver hands to
    __netif_receive_skb), so L2 is parsed here once; `payload` is everything after
    the link header and VLAN tags, untrimmed (Ethernet padding included).
    `error` is set, and `payload` may be empty, when the link header is unusable.
    For a LINUX_SLL/SLL2 record `src_mac` is the cooked header's link-layer address when it
    is 6 bytes long: the sender's for a received frame, the host's own for an OUTGOING one.
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
    direction: int = DIR_UNKNOWN   # DIR_INBOUND / DIR_OUTBOUND when the capture says so
    ifindex: int | None = None     # LINUX_SLL2's interface index (tcpdump -i any), else None


def sll_direction(pkt_type: int | None) -> int:
    """The direction a LINUX_SLL/SLL2 packet type means: OUTGOING (4) is a frame the host sent,
    HOST/BROADCAST/MULTICAST/OTHERHOST (0-3) one it received; others (netlink, 5+) unknown."""
    if pkt_type is None or pkt_type > SLL_OUTGOING:
        return DIR_UNKNOWN
    return DIR_OUTBOUND if pkt_type == SLL_OUTGOING else DIR_INBOUND
