"""Defragmentation before conntrack (net/ipv4/netfilter/nf_defrag_ipv4.c).

Conntrack needs whole datagrams, so PRE_ROUTING and LOCAL_OUT (priority -400) gather
fragments with ip_defrag (users IP_DEFRAG_CONNTRACK_IN / _OUT); an incomplete
datagram is NF_STOLEN, the completing fragment continues as the whole datagram.
"""
from __future__ import annotations

from pathtrace.net.netfilter.nf_conntrack_core import (
    IP_CT_UNTRACKED, NF_ACCEPT, NF_INET_PRE_ROUTING, NF_STOLEN, UNTRACKED,
)

IP_DEFRAG_CONNTRACK_IN = 2
IP_DEFRAG_CONNTRACK_OUT = 3


def ipv4_conntrack_defrag(nf, skb, hook: int) -> int:
    sk = skb.sk
    if sk is not None and getattr(sk, "nodefrag", False):
        return NF_ACCEPT
    if skb.ct is not None and skb.ct is not UNTRACKED:      # previously seen (loopback)
        return NF_ACCEPT
    if skb.ctinfo == IP_CT_UNTRACKED or skb.ct is UNTRACKED:
        return NF_ACCEPT
    if skb.iph is None or not skb.iph.is_fragment():
        return NF_ACCEPT
    user = IP_DEFRAG_CONNTRACK_IN if hook == NF_INET_PRE_ROUTING else IP_DEFRAG_CONNTRACK_OUT
    from pathtrace.net.ipv4.ip_fragment import ip_defrag
    ctx = skb.ctx
    if ctx.record:
        ctx.step("ipv4_conntrack_defrag", user="IP_DEFRAG_CONNTRACK_IN" if user == IP_DEFRAG_CONNTRACK_IN
                 else "IP_DEFRAG_CONNTRACK_OUT", id=skb.iph.id, offset=(skb.iph.frag_off & 0x1FFF) * 8)
    whole = ip_defrag(nf.net, skb, user)
    if whole is None:
        if skb.verdict is None:
            skb.verdict = "QUEUED"
        return NF_STOLEN
    if whole is not skb:          # continue with the reassembled datagram in this skb
        skb.iph = whole.iph
        skb.payload = whole.payload
        skb.cb["frag_max_size"] = whole.cb.get("frag_max_size")
    skb.cb["ignore_df"] = True    # nf_ct_ipv4_gather_frags: skb->ignore_df = 1
    return NF_ACCEPT
