"""reject (nft_reject.c, net/ipv4/netfilter/nft_reject_ipv4.c, nft_reject_inet.c).

`reject` alone is an ICMP port unreachable, `with tcp reset` an RST, `with icmp
[type] X` / `with icmpx [type] X` the given unreachable code (icmpx codes map to the
IPv4 ones: no-route -> net-unreachable, admin-prohibited -> code 13).  The replies
are built by nf_reject_ipv4's nf_send_unreach / nf_send_reset, shared with ipt_REJECT;
the verdict is NF_DROP.
"""
from __future__ import annotations

from typing import Any, Callable

from pathtrace.net.netfilter.ipt_REJECT import nf_send_reset, nf_send_unreach
from pathtrace.net.netfilter_hooks import NF_DROP

# nft_reject_icmpx_code -> ICMP code (nft_reject_icmp_code_v4)
ICMPX_TO_V4 = {0: 0, 1: 3, 2: 1, 3: 13}
NFT_REJECT_ICMP_UNREACH, NFT_REJECT_TCP_RST, NFT_REJECT_ICMPX_UNREACH = 0, 1, 2


def nft_reject_eval(kind: int, code: int, family: str) -> Callable[[Any], int]:
    fname = "nft_reject_inet_eval" if family == "inet" else "nft_reject_ipv4_eval"

    def fn(pkt) -> int:
        skb = pkt.skb
        if skb.ctx.record:
            skb.ctx.step(fname, type=("icmp", "tcp reset", "icmpx")[kind], code=code)
        if kind == NFT_REJECT_TCP_RST:
            nf_send_reset(skb, pkt.hook)
        else:
            nf_send_unreach(skb, ICMPX_TO_V4[code] if kind == NFT_REJECT_ICMPX_UNREACH else code, pkt.hook)
        return NF_DROP
    return fn
