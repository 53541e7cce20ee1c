"""Parsing helpers shared by the match/target extensions (libxtables equivalents)."""
from __future__ import annotations

from pathtrace.lib.inet import aton, ntoa, prefix_mask
from pathtrace.net.netfilter.x_tables import Opt, XtError

# /etc/protocols names iptables accepts for -p (plus its built-in "all").
PROTO_NAMES: dict[str, int] = {
    "all": 0, "ip": 0, "icmp": 1, "igmp": 2, "ggp": 3, "ipencap": 4, "ipip": 4, "st": 5, "tcp": 6,
    "egp": 8, "igp": 9, "pup": 12, "udp": 17, "hmp": 20, "xns-idp": 22, "rdp": 27, "iso-tp4": 29,
    "dccp": 33, "xtp": 36, "ddp": 37, "idpr-cmtp": 38, "ipv6": 41, "ipv6-route": 43, "ipv6-frag": 44,
    "idrp": 45, "rsvp": 46, "gre": 47, "esp": 50, "ah": 51, "skip": 57, "icmpv6": 58, "ipv6-icmp": 58,
    "ipv6-nonxt": 59, "ipv6-opts": 60, "rspf": 73, "vmtp": 81, "eigrp": 88, "ospf": 89, "ax.25": 93,
    "ipip4": 94, "etherip": 97, "encap": 98, "pim": 103, "ipcomp": 108, "vrrp": 112, "l2tp": 115,
    "isis": 124, "sctp": 132, "fc": 133, "mobility-header": 135, "mh": 135, "udplite": 136,
    "mpls-in-ip": 137, "manet": 138, "hip": 139, "shim6": 140, "wesp": 141, "rohc": 142,
}
PROTO_BY_NUM: dict[int, str] = {}
for _n, _v in PROTO_NAMES.items():
    PROTO_BY_NUM.setdefault(_v, _n)
PROTO_BY_NUM[0] = "all"


def _digits(text: str) -> bool:
    """ASCII decimal digits only (str.isdigit also takes '²' and '٣'), and few enough for any field."""
    return text.isascii() and text.isdigit() and len(text) <= 20


def parse_proto(text: str) -> int:
    t = text.lower()
    if _digits(t):
        n = int(t)
        if n > 255:
            raise XtError(f"invalid protocol {text!r}")
        return n
    if t in PROTO_NAMES:
        return PROTO_NAMES[t]
    raise XtError(f"unknown protocol {text!r} specified")


def parse_int(text: str, lo: int, hi: int, what: str) -> int:
    from pathtrace.inputs import parse_int as strtoul
    try:
        n = strtoul(text)
    except ValueError:
        raise XtError(f"invalid {what} {text!r}") from None
    if not lo <= n <= hi:
        raise XtError(f"{what} {text!r} out of range {lo}-{hi}")
    return n


def parse_addr(text: str) -> int:
    """A dotted quad; hostnames are refused (a replay must not depend on DNS)."""
    try:
        return aton(text)
    except ValueError:
        if any(c.isalpha() for c in text):
            raise XtError(f"host/network name {text!r} not supported (needs DNS): use an address") from None
        raise XtError(f"invalid address {text!r}") from None


def parse_addr_mask(text: str) -> tuple[int, int]:
    """'10.0.0.0/8', '10.0.0.0/255.0.0.0' or an address -> (addr & mask, mask)."""
    addr_text, slash, mask_text = text.partition("/")
    if not slash:
        mask = 0xFFFFFFFF
    elif _digits(mask_text):
        plen = int(mask_text)
        if plen > 32:
            raise XtError(f"invalid mask {mask_text!r}")
        mask = prefix_mask(plen)
    else:
        mask = parse_addr(mask_text)
    addr = parse_addr(addr_text)
    return addr & mask, mask


def fmt_addr_mask(addr: int, mask: int) -> str:
    if mask == 0xFFFFFFFF:
        return f"{ntoa(addr)}/32"
    plen = bin(mask).count("1")
    if prefix_mask(plen) == mask:
        return f"{ntoa(addr)}/{plen}"
    return f"{ntoa(addr)}/{ntoa(mask)}"


SERVICES: dict[str, int] = {
    "ftp-data": 20, "ftp": 21, "ssh": 22, "telnet": 23, "smtp": 25, "domain": 53, "bootps": 67,
    "bootpc": 68, "tftp": 69, "http": 80, "www": 80, "kerberos": 88, "pop3": 110, "sunrpc": 111,
    "auth": 113, "ntp": 123, "netbios-ns": 137, "netbios-dgm": 138, "netbios-ssn": 139, "imap": 143,
    "imap2": 143, "snmp": 161, "snmp-trap": 162, "bgp": 179, "ldap": 389, "https": 443,
    "microsoft-ds": 445, "isakmp": 500, "syslog": 514, "submission": 587, "ldaps": 636,
    "rsync": 873, "imaps": 993, "pop3s": 995, "openvpn": 1194, "ms-sql-s": 1433, "pptp": 1723,
    "nfs": 2049, "mysql": 3306, "ipsec-nat-t": 4500, "sip": 5060, "postgresql": 5432,
    "x11": 6000, "http-alt": 8080, "webcache": 8080, "smtps": 465, "ssmtp": 465, "ident": 113,
}


def parse_port(text: str) -> int:
    if _digits(text):
        n = int(text)
        if n > 65535:
            raise XtError(f"invalid port/service {text!r} specified")
        return n
    if text.lower() in SERVICES:
        return SERVICES[text.lower()]
    raise XtError(f"invalid port/service {text!r} specified")


def parse_port_range(text: str) -> tuple[int, int]:
    """'80', '1:1024', ':1024', '1024:' like xtables_parse_port range handling."""
    if ":" not in text:
        p = parse_port(text)
        return p, p
    lo_t, _, hi_t = text.partition(":")
    lo = parse_port(lo_t) if lo_t else 0
    hi = parse_port(hi_t) if hi_t else 65535
    if lo > hi:   # iptables swaps an inverted range
        lo, hi = hi, lo
    return lo, hi


def fmt_range(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}:{hi}"


def parse_value_mask(text: str, what: str) -> tuple[int, int]:
    """'0x10/0xff' or '16' (mask all ones) as xtables_strtoui-based mark parsing."""
    v_t, slash, m_t = text.partition("/")
    v = parse_int(v_t, 0, 0xFFFFFFFF, what)
    m = parse_int(m_t, 0, 0xFFFFFFFF, what + " mask") if slash else 0xFFFFFFFF
    return v, m


def only(opts: list[Opt], name: str) -> Opt | None:
    found = [o for o in opts if o.name == name]
    return found[-1] if found else None


def no_invert(o: Opt) -> None:
    if o.invert:
        raise XtError(f"unexpected '!' before {o.name}")
