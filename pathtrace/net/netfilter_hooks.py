"""NF_HOOK (include/linux/netfilter.h): the stack's only door into netfilter.

With no ruleset loaded nothing is registered and the hook is a plain function call,
as in a kernel without iptables modules.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from pathtrace.net.core.netdevice import NetDevice
    from pathtrace.net.core.skbuff import SkBuff

NF_INET_PRE_ROUTING = 0
NF_INET_LOCAL_IN = 1
NF_INET_FORWARD = 2
NF_INET_LOCAL_OUT = 3
NF_INET_POST_ROUTING = 4
HOOK_NAMES = ("PRE_ROUTING", "LOCAL_IN", "FORWARD", "LOCAL_OUT", "POST_ROUTING")

NF_DROP = 0
NF_ACCEPT = 1
NF_STOLEN = 2
NF_QUEUE = 3


def nf_hook(hook: int, skb: "SkBuff", indev: "NetDevice | None", outdev: "NetDevice | None") -> bool:
    """True when the packet may continue to the okfn."""
    nf = skb.ctx.net.nf
    if nf is None:
        return True
    verdict = nf.hook(hook, skb, indev, outdev)
    if verdict == NF_ACCEPT:
        return True
    if skb.verdict is None:
        skb.verdict = "STOLEN" if verdict in (NF_STOLEN, NF_QUEUE) else "DROP"
        if verdict == NF_DROP:
            skb.reason = skb.reason or "NETFILTER_DROP"
    return False
