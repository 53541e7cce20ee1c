"""MASQUERADE (net/netfilter/nf_nat_masquerade.c): SNAT to the out device's address.

The address is inet_select_addr(out, nexthop, RT_SCOPE_UNIVERSE) — the primary
address of the device in the next hop's subnet, else its first global one.  The
out device's ifindex is remembered; if the flow later leaves another way, the entry
is killed and the packet dropped (nf_nat_oif_changed in nf_nat_inet_fn).
"""
from __future__ import annotations

from pathtrace.lib.inet import ntoa
from pathtrace.net.netfilter.nf_conntrack_core import NF_ACCEPT, NF_DROP, nf_ct_get
from pathtrace.net.netfilter.nf_nat_core import NF_NAT_MANIP_SRC, NF_NAT_RANGE_MAP_IPS, NatRange, nf_nat_setup_info

RT_SCOPE_UNIVERSE = 0


def _select_addr(out_dev, nexthop: int, net=None) -> int:
    try:
        from pathtrace.net.ipv4.devinet import inet_select_addr
    except ImportError:  # stack not there yet: the model's own helper on Net
        inet_select_addr = None
    if inet_select_addr is not None:
        return inet_select_addr(out_dev, nexthop, RT_SCOPE_UNIVERSE)
    if net is not None and hasattr(net, "inet_select_addr"):
        return net.inet_select_addr(out_dev, nexthop)
    for ifa in out_dev.addrs:
        if nexthop & ifa.mask == ifa.local & ifa.mask:
            return ifa.local
    return out_dev.addrs[0].local if out_dev.addrs else 0


def nf_nat_masquerade_ipv4(skb, rng: NatRange, out_dev, net=None) -> int:
    """Called by the MASQUERADE target for the first packet of a connection."""
    ct = nf_ct_get(skb)
    if ct is None:
        return NF_ACCEPT
    if ct.orig.src == 0:          # locally generated with 0.0.0.0: not masqueraded
        return NF_ACCEPT
    daddr = skb.iph.daddr
    nexthop = skb.dst.nexthop(daddr) if skb.dst is not None and hasattr(skb.dst, "nexthop") else daddr
    newsrc = _select_addr(out_dev, nexthop, net)
    ctx = skb.ctx
    if not newsrc:
        if ctx.record:
            ctx.step("nf_nat_masquerade_ipv4", verdict="DROP", reason=f"{out_dev.name} ate my IP address")
        return NF_DROP
    ct.masq_index = out_dev.ifindex
    newrange = NatRange(rng.flags | NF_NAT_RANGE_MAP_IPS, newsrc, newsrc, rng.min_proto, rng.max_proto)
    if ctx.record:
        ctx.step("nf_nat_masquerade_ipv4", dev=out_dev.name, nexthop=ntoa(nexthop), addr=ntoa(newsrc))
    return nf_nat_setup_info(ct, newrange, NF_NAT_MANIP_SRC)
