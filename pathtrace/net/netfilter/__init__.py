"""Netfilter for IPv4: iptables rulesets (NF-A) with conntrack and NAT (NF-B)."""
from pathtrace.net.netfilter.core import Netfilter
from pathtrace.net.netfilter.x_tables import (
    NF_ACCEPT, NF_DROP, NF_INET_FORWARD, NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING,
    NF_INET_PRE_ROUTING, NF_QUEUE, NF_STOLEN,
)

__all__ = ["Netfilter", "NF_ACCEPT", "NF_DROP", "NF_STOLEN", "NF_QUEUE", "NF_INET_PRE_ROUTING", "NF_INET_LOCAL_IN",
           "NF_INET_FORWARD", "NF_INET_LOCAL_OUT", "NF_INET_POST_ROUTING"]
