"""Payload expressions (net/netfilter/nft_payload.c) for `ip`, `tcp`, `udp`, `icmp` and `th` fields.

A field is (base, bit offset, bit length) as nft's proto.c describes it; the load reads
the network header or, for transport fields, the bytes at pkt->thoff - which is not
possible in a later fragment (fragoff) or past the packet's end: the expression breaks,
as nft_payload_eval's `goto err` does.  The protocol dependency nft adds before a
transport field (`meta l4proto tcp`) is a separate match the parser puts in front.
"""
from __future__ import annotations

from typing import Any, Callable

NETWORK, TRANSPORT = "network", "transport"

# name -> (base, bit offset, bit length, datatype)
FIELDS: dict[str, dict[str, tuple[str, int, int, str]]] = {
    "ip": {"version": (NETWORK, 0, 4, "integer"), "hdrlength": (NETWORK, 4, 4, "integer"),
           "dscp": (NETWORK, 8, 6, "integer"), "ecn": (NETWORK, 14, 2, "integer"),
           "length": (NETWORK, 16, 16, "integer"), "id": (NETWORK, 32, 16, "integer"),
           "frag-off": (NETWORK, 48, 16, "integer"), "ttl": (NETWORK, 64, 8, "integer"),
           "protocol": (NETWORK, 72, 8, "inet_proto"), "checksum": (NETWORK, 80, 16, "integer"),
           "saddr": (NETWORK, 96, 32, "ipv4_addr"), "daddr": (NETWORK, 128, 32, "ipv4_addr")},
    "tcp": {"sport": (TRANSPORT, 0, 16, "inet_service"), "dport": (TRANSPORT, 16, 16, "inet_service"),
            "sequence": (TRANSPORT, 32, 32, "integer"), "ackseq": (TRANSPORT, 64, 32, "integer"),
            "doff": (TRANSPORT, 96, 4, "integer"), "flags": (TRANSPORT, 104, 8, "tcp_flag"),
            "window": (TRANSPORT, 112, 16, "integer"), "checksum": (TRANSPORT, 128, 16, "integer"),
            "urgptr": (TRANSPORT, 144, 16, "integer")},
    "udp": {"sport": (TRANSPORT, 0, 16, "inet_service"), "dport": (TRANSPORT, 16, 16, "inet_service"),
            "length": (TRANSPORT, 32, 16, "integer"), "checksum": (TRANSPORT, 48, 16, "integer")},
    "icmp": {"type": (TRANSPORT, 0, 8, "icmp_type"), "code": (TRANSPORT, 8, 8, "icmp_code"),
             "checksum": (TRANSPORT, 16, 16, "integer"), "id": (TRANSPORT, 32, 16, "integer"),
             "sequence": (TRANSPORT, 48, 16, "integer"), "gateway": (TRANSPORT, 32, 32, "ipv4_addr"),
             "mtu": (TRANSPORT, 48, 16, "integer")},
    "th": {"sport": (TRANSPORT, 0, 16, "inet_service"), "dport": (TRANSPORT, 16, 16, "inet_service")},
}
FIELDS["udplite"] = dict(FIELDS["udp"])
# the protocol number nft's dependency checks for each transport header
L4PROTO = {"tcp": 6, "udp": 17, "icmp": 1, "udplite": 136}
# headers of other families: parsed so inet tables load, never present in an IPv4 packet
IPV6_FIELDS = {"ip6": {"saddr": "ipv6_addr", "daddr": "ipv6_addr", "nexthdr": "inet_proto",
                       "hoplimit": "integer", "flowlabel": "integer", "length": "integer", "version": "integer"},
               "icmpv6": {"type": "icmpv6_type", "code": "integer", "id": "integer", "sequence": "integer",
                          "mtu": "integer"}}

_IP_ATTR = {96: "saddr", 128: "daddr", 72: "protocol", 64: "ttl", 16: "tot_len", 32: "id", 48: "frag_off",
            80: "check"}


def nft_payload_load(proto: str, name: str) -> Callable[[Any], int | None]:
    """A loader for proto.name: the field's value, or None where nft_payload_eval fails."""
    base, off, bits, _ = FIELDS[proto][name]
    if base == NETWORK:
        attr = _IP_ATTR.get(off) if bits in (8, 16, 32) else None
        if attr is not None:
            def load_ip(pkt) -> int | None:
                return getattr(pkt.skb.iph, attr)
            return load_ip

        def load_bits(pkt) -> int | None:
            raw = pkt.skb.iph.pack()
            return _bits(raw, off, bits)
        return load_bits

    def load_th(pkt) -> int | None:
        if not pkt.flags or pkt.fragoff:
            return None
        return _bits(pkt.skb.payload, off, bits)
    return load_th


def _bits(data, off: int, bits: int) -> int | None:
    first, last = off // 8, (off + bits + 7) // 8
    if last > len(data):
        return None
    v = int.from_bytes(bytes(data[first:last]), "big")
    return (v >> ((last * 8) - off - bits)) & ((1 << bits) - 1)
