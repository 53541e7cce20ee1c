"""Drop reasons in plain words, and the smallest change that would alter a verdict.

The kernel's names (SKB_DROP_REASON_*) are precise but terse; operators reading a
packet tracer want both, and a hint where one is obvious.  Hints are only given
when the record shows the cause (a deciding rule, a missing route, a sysctl).
"""
from __future__ import annotations

from typing import Any

from pathtrace.commands.headers import Headers
from pathtrace.lib.inet import ntoa
from pathtrace.trace import PacketRecord

PLAIN: dict[str, str] = {
    "OTHERHOST": "the frame was addressed to another host's MAC address",
    "IP_CSUM": "the IPv4 header checksum is wrong",
    "IP_INHDR": "the IPv4 header is invalid (bad version/length) or the TTL ran out while forwarding",
    "PKT_TOO_SMALL": "the packet is shorter than its headers say",
    "IP_RPFILTER": "reverse-path filter: the route back to the source does not use the interface it came in on",
    "IP_LOCAL_SOURCE": "the source address is one of this host's own addresses (looks spoofed)",
    "IP_INVALID_SOURCE": "the source address can never be a sender (multicast, broadcast or 0.0.0.0/8)",
    "IP_INVALID_DEST": "the destination address is not routable (0.0.0.0/8 or a non-unicast route)",
    "IP_LOCALNET": "a 127.0.0.0/8 address arrived on a real interface (route_localnet is off)",
    "IP_INADDRERRORS": "the destination is not local and this host does not forward (ip_forward=0)",
    "IP_INNOROUTES": "no route matches the destination",
    "IP_OUTNOROUTES": "no route for a packet the host sends (or re-routes after NAT)",
    "NO_SOCKET": "nothing listens on that port (a TCP RST or ICMP port unreachable goes back)",
    "NETFILTER_DROP": "a firewall rule or chain policy dropped it",
    "NEIGH_FAILED": "the next hop did not answer ARP",
    "NEIGH_QUEUEFULL": "too many packets were waiting for ARP to resolve the next hop",
    "PKT_TOO_BIG": "the packet is larger than the outgoing MTU and may not be fragmented (DF set)",
    "TCP_CSUM": "the TCP checksum is wrong",
    "UDP_CSUM": "the UDP checksum is wrong",
    "ICMP_CSUM": "the ICMP checksum is wrong",
    "IP_NOPROTO": "no handler for this IP protocol on this host (ICMP protocol unreachable goes back)",
    "TCP_FLAGS": "the TCP flags make no sense for the connection's state",
    "UNHANDLED_PROTO": "the ethertype or ICMP type is not handled",
    "INVALID_PROTO": "the protocol forbids this packet here (e.g. ICMP echo to a broadcast address)",
    "NOT_SPECIFIED": "dropped without a specific reason (see the last step)",
    "DUP_FRAG": "a duplicate IP fragment",
    "FRAG_TOO_FAR": "a fragment lies beyond the maximum datagram size",
    "FRAG_REASM_TIMEOUT": "the other fragments never arrived",
    "DEV_READY": "the interface is down",
    "SOCKET_FILTER": "a socket filter rejected it",
    "TCP_INVALID_SEQUENCE": "the TCP sequence number is outside the window",
    "TCP_INVALID_ACK_SEQUENCE": "the SYN-ACK acknowledges something other than the connection's SYN",
    "TCP_OLD_DATA": "the TCP data was already received (a retransmission); it is ACKed again",
    "TCP_OVERWINDOW": "the TCP data lies beyond the receive window",
    "TCP_OFOMERGE": "the out-of-order TCP data was already queued",
    "TCP_ZEROWINDOW": "the receive window is closed",
    "TCP_RFC7323_PAWS": "the TCP timestamp is older than the connection's (PAWS): an old duplicate",
    "TCP_OLD_SEQUENCE": "the TCP segment lies entirely before the receive window",
    "TCP_INVALID_SYN": "a SYN on an open connection; a challenge ACK goes back",
    "TCP_ACK_UNSENT_DATA": "the TCP ACK acknowledges data the host never sent",
    "TCP_TOO_OLD_ACK": "the TCP ACK is far older than the connection's window",
    "TCP_RESET": "the connection was reset",
    "XFRM_POLICY": "an IPsec policy refused it",
}


def plain(reason: str | None) -> str:
    if not reason:
        return ""
    return PLAIN.get(reason, reason.lower().replace("_", " "))


def suggestions(record: PacketRecord, decision: dict[str, Any] | None, pkt: Headers | None) -> list[str]:
    """The smallest obvious change that would alter the verdict (empty when nothing is obvious).

    `pkt` is the input packet's headers (the record keeps only the path)."""
    reason = record.reason
    if record.verdict != "DROP" or not reason:
        return []
    last = _last_drop(record)
    src, dst = (ntoa(pkt.src), ntoa(pkt.dst)) if pkt else ("SRC", "DST")
    dev = record.ingress or "IFACE"
    if reason == "NETFILTER_DROP" and decision:
        return [_rule_hint(decision, pkt)]
    if reason in ("IP_INNOROUTES", "IP_OUTNOROUTES"):
        return [f"add a route to {dst}: ip route add {dst}/32 via GATEWAY (or a default route)"]
    if reason == "IP_INADDRERRORS" and "forwarding disabled" in str(last.get("why", "")):
        return [f"enable forwarding: sysctl -w net.ipv4.ip_forward=1 (or net.ipv4.conf.{dev}.forwarding=1)"]
    if reason == "IP_RPFILTER":
        return [f"set net.ipv4.conf.{dev}.rp_filter=2 (loose) or add a route back: ip route add {src}/32 dev {dev}"]
    if reason == "NO_SOCKET":
        if pkt is None or pkt.proto not in (6, 17):
            return []
        proto = "tcp" if pkt.proto == 6 else "udp"
        return [f"nothing listens on {proto}/{pkt.dport}: add a socket (sockets: - {proto} 0.0.0.0:{pkt.dport})"]
    if reason == "IP_LOCAL_SOURCE":
        return [f"{src} is this host's own address: fix the sender, or sysctl net.ipv4.conf.{dev}.accept_local=1"]
    if reason == "IP_LOCALNET":
        return [f"sysctl -w net.ipv4.conf.{dev}.route_localnet=1"]
    if reason == "IP_INHDR" and _has(record, "ip_forward", "check", "ttl"):
        return ["the TTL ran out here: the sender must use a larger TTL (this is what traceroute relies on)"]
    if reason == "PKT_TOO_BIG":
        return ["send smaller packets (path MTU discovery reacts to the ICMP frag-needed sent back) or clear DF"]
    if reason in ("NEIGH_FAILED", "NEIGH_QUEUEFULL"):
        hop = _first(record, "ip_finish_output2").get("nexthop", "the next hop")
        return [f"{hop} does not answer ARP: add it to neighbours (lladdr) or check that it is up"]
    if reason == "DEV_READY":
        return [f"bring the interface up: ip link set {dev} up"]
    return []


def _rule_hint(d: dict[str, Any], pkt: Headers | None) -> str:
    table, chain, num = d.get("table"), d.get("chain"), d.get("rule") or 0
    accept = _accept_rule(pkt)
    if not num:
        return (f"the packet fell through to the {chain} policy ({table}): add an ACCEPT rule, e.g. "
                f"iptables -t {table} -A {chain} {accept}")
    return (f"rule {num} in chain {chain} ({table}) dropped it: delete it (iptables -t {table} -D {chain} {num}) "
            f"or insert before it: iptables -t {table} -I {chain} {num} {accept}")


def _accept_rule(pkt: Headers | None) -> str:
    parts = []
    if pkt is not None:
        parts.append(f"-s {ntoa(pkt.src)}")
        if pkt.proto in (6, 17):
            parts.append(f"-p {'tcp' if pkt.proto == 6 else 'udp'} --dport {pkt.dport}")
        elif pkt.proto == 1:
            parts.append("-p icmp")
    return " ".join(parts + ["-j ACCEPT"])


def _first(record: PacketRecord, fn: str) -> dict[str, Any]:
    for s in record.path:
        if s.fn == fn and s.depth == 0:
            return s.detail
    return {}


def _has(record: PacketRecord, fn: str, key: str, value: Any) -> bool:
    return any(s.fn == fn and s.detail.get(key) == value for s in record.path if s.depth == 0)


def _last_drop(record: PacketRecord) -> dict[str, Any]:
    for s in reversed(record.path):
        if s.fn == "kfree_skb_reason" and s.depth == 0:
            return s.detail
    return {}

