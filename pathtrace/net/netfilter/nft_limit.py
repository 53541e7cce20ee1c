"""limit (net/netfilter/nft_limit.c): a token bucket in nanoseconds.

nft_limit_init: tokens_max = nsecs / rate * burst for packet limits (nsecs * (rate + burst)
/ rate for byte limits), the bucket starts full; nft_limit_eval adds the time since the last
packet, caps at tokens_max and takes the cost (nsecs / rate per packet, nsecs * len /
rate for bytes).  `over` inverts.  The bucket depends on earlier packets and on time,
so its Expr is marked volatile: core.py tells the replay cache not to reuse a path through it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pathtrace.net.netfilter.nf_tables_api import NFT_BREAK, NFT_CONTINUE

NSEC_PER_SEC = 1_000_000_000
UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}
BYTE_UNITS = {"bytes": 1, "kbytes": 1024, "mbytes": 1024 * 1024}
NFT_LIMIT_PKT_BURST_DEFAULT = 5


@dataclass(slots=True)
class LimitState:
    tokens: int
    last: int | None = None


def nft_limit_eval(rate: int, unit: int, burst: int, pkts: bool, invert: bool) -> Callable[[Any], int]:
    nsecs = unit * NSEC_PER_SEC
    if pkts and burst == 0:
        burst = NFT_LIMIT_PKT_BURST_DEFAULT
    # the bucket: burst packets' worth, or for bytes unit * (rate + burst) / rate (nft_limit_init)
    tokens_max = (nsecs // rate) * burst if pkts else (nsecs * (rate + burst)) // rate
    st = LimitState(tokens_max)
    pkt_cost = nsecs // rate

    def fn(pkt) -> int:
        skb = pkt.skb
        now = int(round(skb.ctx.now * NSEC_PER_SEC))
        if st.last is None:
            st.last = now
        cost = pkt_cost if pkts else (nsecs * skb.len) // rate
        tokens = st.tokens + now - st.last
        if tokens > tokens_max:
            tokens = tokens_max
        st.last = now
        delta = tokens - cost
        if delta >= 0:
            st.tokens = delta
            over = False
        else:
            st.tokens = tokens
            over = True
        return NFT_BREAK if over != invert else NFT_CONTINUE
    return fn
