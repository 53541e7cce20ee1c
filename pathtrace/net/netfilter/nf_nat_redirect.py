"""REDIRECT (net/netfilter/nf_nat_redirect.c): DNAT to the host itself.

Locally generated packets go to 127.0.0.1; others to the first address on the
ingress device's list (ifa_list head = its primary address); no address: drop.
"""
from __future__ import annotations

from pathtrace.lib.inet import ntoa
from pathtrace.net.netfilter.nf_conntrack_core import NF_ACCEPT, NF_DROP, NF_INET_LOCAL_OUT, nf_ct_get
from pathtrace.net.netfilter.nf_nat_core import NF_NAT_MANIP_DST, NF_NAT_RANGE_MAP_IPS, NatRange, nf_nat_setup_info

INADDR_LOOPBACK = 0x7F000001


def nf_nat_redirect_ipv4(skb, rng: NatRange, hook: int) -> int:
    ct = nf_ct_get(skb)
    if ct is None:
        return NF_ACCEPT
    ctx = skb.ctx
    if hook == NF_INET_LOCAL_OUT:
        newdst = INADDR_LOOPBACK
    else:
        dev = skb.dev
        newdst = dev.addrs[0].local if dev is not None and dev.addrs else 0
        if not newdst:
            if ctx.record:
                ctx.step("nf_nat_redirect_ipv4", verdict="DROP", reason="ingress device has no IPv4 address")
            return NF_DROP
    if ctx.record:
        ctx.step("nf_nat_redirect_ipv4", addr=ntoa(newdst))
    newrange = NatRange(rng.flags | NF_NAT_RANGE_MAP_IPS, newdst, newdst, rng.min_proto, rng.max_proto)
    return nf_nat_setup_info(ct, newrange, NF_NAT_MANIP_DST)
