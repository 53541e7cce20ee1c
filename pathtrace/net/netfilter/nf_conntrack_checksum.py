"""nf_checksum / nf_ip_checksum (net/netfilter/utils.c): the checksum conntrack verifies.

With net.netfilter.nf_conntrack_checksum=1 (default) TCP, UDP and ICMP trackers
verify the transport checksum in PRE_ROUTING only (the outgoing path is trusted);
a packet that fails becomes INVALID.  The replayed bytes are what the NIC delivered,
so no CHECKSUM_UNNECESSARY shortcut applies.
"""
from __future__ import annotations

from pathtrace.lib.checksum import csum_fold, csum_partial, l4_checksum

IPPROTO_ICMP = 1
IPPROTO_UDP = 17


def nf_ip_checksum(skb, proto: int) -> bool:
    """True when the transport checksum of skb (IPv4) is wrong; a CHECKSUM_PARTIAL skb is trusted."""
    if skb.ip_summed == 3:
        return False
    data = bytes(skb.payload)
    if proto == IPPROTO_ICMP:
        return csum_fold(csum_partial(data)) != 0
    if proto == IPPROTO_UDP and len(data) >= 8 and data[6] == 0 and data[7] == 0:
        return False
    iph = skb.iph
    return l4_checksum(iph.saddr, iph.daddr, proto, data) != 0
