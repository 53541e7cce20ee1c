"""log (net/netfilter/nft_log.c): non-terminating; the path shows the line the kernel log (or the
nflog group) would get, in nf_log_ip_packet's format (shared with iptables' LOG)."""
from __future__ import annotations

from typing import Any, Callable

from pathtrace.net.netfilter.nf_tables_api import NFT_CONTINUE


class _Par:
    """What log_line reads from xt_action_param."""

    __slots__ = ("indev", "outdev", "fragoff")

    def __init__(self, pkt) -> None:
        self.indev, self.outdev, self.fragoff = pkt.indev, pkt.outdev, pkt.fragoff


def nft_log_eval(prefix: str, level: int, group: int | None) -> Callable[[Any], int]:
    def fn(pkt) -> int:
        skb = pkt.skb
        if skb.ctx.record:
            from pathtrace.net.netfilter.xt_LOG import log_line
            line = prefix + log_line(skb, _Par(pkt))
            if group is None:
                skb.ctx.step("nft_log_eval", prefix=prefix, level=level, line=line)
            else:
                skb.ctx.step("nft_log_eval", group=group, prefix=prefix, line=line)
        return NFT_CONTINUE
    return fn
