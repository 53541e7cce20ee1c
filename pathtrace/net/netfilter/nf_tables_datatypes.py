"""The value types of nft's rule language (nftables src/datatype.c, proto.c, ct.c, meta.c).

The kernel sees only registers of bytes; nft turns a name such as `established` or
`echo-request` into those bytes before loading.  This module does that translation:
each datatype parses a word of the ruleset into the integer (or interface name) the
model's expressions compare, and says whether it is a bitmask (whose implicit
comparison is `(x & v) != 0`, as nft compiles it).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from pathtrace.lib.inet import aton


class NftTypeError(Exception):
    """A value that its datatype cannot parse (the parser adds line and column)."""


ICMP_TYPES = {
    "echo-reply": 0, "destination-unreachable": 3, "source-quench": 4, "redirect": 5, "echo-request": 8,
    "router-advertisement": 9, "router-solicitation": 10, "time-exceeded": 11, "parameter-problem": 12,
    "timestamp-request": 13, "timestamp-reply": 14, "info-request": 15, "info-reply": 16,
    "address-mask-request": 17, "address-mask-reply": 18,
}
ICMP_CODES = {
    "net-unreachable": 0, "host-unreachable": 1, "prot-unreachable": 2, "port-unreachable": 3,
    "frag-needed": 4, "net-prohibited": 9, "host-prohibited": 10, "admin-prohibited": 13,
}
ICMPX_CODES = {"no-route": 0, "port-unreachable": 1, "host-unreachable": 2, "admin-prohibited": 3}
ICMPV6_TYPES = {
    "destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3, "parameter-problem": 4,
    "echo-request": 128, "echo-reply": 129, "mld-listener-query": 130, "mld-listener-report": 131,
    "mld-listener-done": 132, "mld-listener-reduction": 132, "nd-router-solicit": 133, "nd-router-advert": 134,
    "nd-neighbor-solicit": 135, "nd-neighbor-advert": 136, "nd-redirect": 137, "router-renumbering": 138,
    "ind-neighbor-solicit": 141, "ind-neighbor-advert": 142, "mld2-listener-report": 143,
}
ICMPV6_CODES = {"no-route": 0, "admin-prohibited": 1, "addr-unreachable": 3, "port-unreachable": 4,
                "policy-fail": 5, "reject-route": 6}
INET_PROTOS = {"ip": 0, "icmp": 1, "igmp": 2, "ipip": 4, "tcp": 6, "egp": 8, "pup": 12, "udp": 17, "idp": 22,
               "tp": 29, "dccp": 33, "ipv6": 41, "ipv6-route": 43, "ipv6-frag": 44, "rsvp": 46, "gre": 47,
               "esp": 50, "ah": 51, "ipv6-icmp": 58, "icmpv6": 58, "ipv6-nonxt": 59, "ipv6-opts": 60, "mtp": 92,
               "encap": 98, "pim": 103, "comp": 108, "sctp": 132, "udplite": 136, "mpls-in-ip": 137,
               "raw": 255, "ospf": 89, "vrrp": 112, "l2tp": 115}
TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20, "ecn": 0x40, "cwr": 0x80}
CT_STATES = {"invalid": 1, "established": 2, "related": 4, "new": 8, "untracked": 64}
CT_STATUS = {"expected": 1, "seen-reply": 2, "assured": 4, "confirmed": 8, "snat": 16, "dnat": 32, "dying": 512}
CT_DIRS = {"original": 0, "reply": 1}
PKTTYPES = {"host": 0, "unicast": 0, "broadcast": 1, "multicast": 2, "other": 3}
NFPROTOS = {"ipv4": 2, "ipv6": 10}
FIB_ADDRTYPES = {"unspec": 0, "unicast": 1, "local": 2, "broadcast": 3, "anycast": 4, "multicast": 5,
                 "blackhole": 6, "unreachable": 7, "prohibit": 8, "throw": 9, "nat": 10, "xresolve": 11}
ETHER_TYPES = {"ip": 0x0800, "arp": 0x0806, "ip6": 0x86DD, "vlan": 0x8100}
BOOLEANS = {"exists": 1, "missing": 0}
SERVICES = {"ssh": 22, "http": 80, "https": 443, "domain": 53, "smtp": 25, "ftp": 21, "telnet": 23,
            "ntp": 123, "bootps": 67, "bootpc": 68, "imap": 143, "imaps": 993, "pop3": 110, "submission": 587,
            "snmp": 161, "syslog": 514, "ldap": 389, "mysql": 3306, "https-alt": 8443}


@dataclass(frozen=True)
class Datatype:
    """One nft datatype: its name, value width in bits, symbol table and whether it is a bitmask."""

    name: str
    bits: int
    symbols: dict[str, int] = field(default_factory=dict)
    bitmask: bool = False
    string: bool = False          # ifname: compared as a name, '*' suffix is a prefix match
    family: int = 4               # 6: an IPv6 value (parsed, never matches an IPv4 packet)

    def parse(self, word: str) -> int | str:
        """The word as this type's value (a name from the symbol table or a number)."""
        if self.string:
            return word
        low = word.lower()
        if low in self.symbols:
            return self.symbols[low]
        if self.name == "ipv4_addr":
            try:
                return aton(word)
            except Exception:
                raise NftTypeError(f"Could not resolve hostname: {word}") from None
        if self.family == 6:
            try:
                return int(ipaddress.IPv6Address(word))
            except ValueError:
                raise NftTypeError(f"Could not resolve hostname: {word}") from None
        try:
            v = int(word, 0) if word.isascii() and word[:1].isdigit() else None
        except ValueError:
            v = None
        if v is None:
            raise NftTypeError(f"Could not parse {self.desc()}")
        if v >= 1 << self.bits:
            raise NftTypeError(f"Value {word} exceeds valid range 0-{(1 << self.bits) - 1}")
        return v

    def desc(self) -> str:
        return {"inet_service": "Internet network service", "icmp_type": "ICMP type", "ipv4_addr": "IPv4 address",
                "mark": "packet mark", "inet_proto": "Internet protocol", "ct_state": "conntrack state",
                "tcp_flag": "TCP flag"}.get(self.name, self.name)

    def prefix(self, word: str, plen: int) -> tuple[int, int]:
        """addr/len as the (lo, hi) range an interval set or a masked cmp covers."""
        base = self.parse(word)
        if not isinstance(base, int) or not 0 <= plen <= self.bits:
            raise NftTypeError(f"Invalid prefix length {plen}")
        host = (1 << (self.bits - plen)) - 1
        return base & ~host, (base & ~host) | host


def _t(name: str, bits: int, symbols: dict[str, int] | None = None, **kw) -> Datatype:
    return Datatype(name, bits, symbols or {}, **kw)


INTEGER8 = _t("integer", 8)
INTEGER16 = _t("integer", 16)
INTEGER32 = _t("integer", 32)
TYPES: dict[str, Datatype] = {
    "ipv4_addr": _t("ipv4_addr", 32),
    "ipv6_addr": _t("ipv6_addr", 128, family=6),
    "inet_service": _t("inet_service", 16, SERVICES),
    "inet_proto": _t("inet_proto", 8, INET_PROTOS),
    "icmp_type": _t("icmp_type", 8, ICMP_TYPES),
    "icmp_code": _t("icmp_code", 8, ICMP_CODES),
    "icmpv6_type": _t("icmpv6_type", 8, ICMPV6_TYPES, family=6),
    "tcp_flag": _t("tcp_flag", 8, TCP_FLAGS, bitmask=True),
    "ct_state": _t("ct_state", 32, CT_STATES, bitmask=True),
    "ct_status": _t("ct_status", 32, CT_STATUS, bitmask=True),
    "ct_dir": _t("ct_dir", 8, CT_DIRS),
    "pkt_type": _t("pkt_type", 8, PKTTYPES),
    "nf_proto": _t("nf_proto", 8, NFPROTOS),
    "fib_addrtype": _t("fib_addrtype", 32, FIB_ADDRTYPES),
    "ether_type": _t("ether_type", 16, ETHER_TYPES),
    "mark": _t("mark", 32),
    "ifname": _t("ifname", 128, string=True),
    "iface_index": _t("iface_index", 32, string=True),
    "integer": INTEGER32,
    "boolean": _t("boolean", 1, BOOLEANS),
    "verdict": _t("verdict", 32),
}
