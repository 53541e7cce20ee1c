"""NETMAP (net/netfilter/xt_NETMAP.c netmap_tg4): 1:1 prefix mapping.

The host part of the address is kept and the network part replaced by the range's;
destination in PRE_ROUTING / LOCAL_OUT, source in POST_ROUTING / LOCAL_IN.
The step is netmap_tg4's (NF-A's target); nf_nat_setup_info records the binding.
"""
from __future__ import annotations

from pathtrace.net.netfilter.nf_conntrack_core import (
    NF_ACCEPT, NF_INET_LOCAL_OUT, NF_INET_PRE_ROUTING, nf_ct_get,
)
from pathtrace.net.netfilter.nf_nat_core import NF_NAT_RANGE_MAP_IPS, NatRange, nf_nat_setup_info
from pathtrace.net.netfilter.nf_nat_proto import hook2manip


def netmap_address(skb, rng: NatRange, hook: int) -> int:
    netmask = ~(rng.min_addr ^ rng.max_addr) & 0xFFFFFFFF
    if hook in (NF_INET_PRE_ROUTING, NF_INET_LOCAL_OUT):
        base = skb.iph.daddr
    else:
        base = skb.iph.saddr
    return (base & ~netmask & 0xFFFFFFFF) | (rng.min_addr & netmask)


def nf_nat_netmap_ipv4(skb, rng: NatRange, hook: int) -> int:
    ct = nf_ct_get(skb)
    if ct is None:
        return NF_ACCEPT
    new_ip = netmap_address(skb, rng, hook)
    newrange = NatRange(rng.flags | NF_NAT_RANGE_MAP_IPS, new_ip, new_ip, rng.min_proto, rng.max_proto)
    return nf_nat_setup_info(ct, newrange, hook2manip(hook))
