"""counter (net/netfilter/nft_counter.c): packets and bytes of the packets that reach it."""
from __future__ import annotations

from typing import Any, Callable

from pathtrace.net.netfilter.nf_tables_api import NFT_CONTINUE, Counter


def nft_counter_eval(c: Counter) -> Callable[[Any], int]:
    def fn(pkt) -> int:
        skb = pkt.skb
        c.pkts += 1
        c.bytes += skb.len
        if skb.ctx.counted is not None:       # the replay cache repeats the bump for the flow's later packets
            skb.ctx.counted.append(c)
        return NFT_CONTINUE
    return fn
