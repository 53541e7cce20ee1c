"""Parsers for the iproute2 strings the host file uses: routes, rules, neighbours, sockets.

Each parser raises ValueError with a message in iproute2's terms; the loader adds
file and line.  Syntax follows `ip route`, `ip rule` and `ip neigh` as users type them.
"""
from __future__ import annotations

from pathtrace.host.model import (
    RT_TABLE_MAIN, TABLE_NAMES, NeighbourConfig, RouteConfig, RuleConfig, SocketConfig,
)
from pathtrace.inputs import parse_int
from pathtrace.lib.inet import aton, parse_mac, parse_prefix

ROUTE_TYPES = {"unicast", "local", "broadcast", "blackhole", "unreachable", "prohibit", "throw"}
NUD_STATES = {"permanent", "noarp", "reachable", "stale", "delay", "probe", "failed", "incomplete"}


def parse_table(text: str) -> int:
    if text in TABLE_NAMES:
        return TABLE_NAMES[text]
    if _digits(text) and 0 < int(text) < 2**32:
        return int(text)
    raise ValueError(f"bad routing table {text!r} (a number or local/main/default)")


def _take(tokens: list[str], i: int, what: str) -> str:
    if i + 1 >= len(tokens):
        raise ValueError(f"'{tokens[i]}' needs {what}")
    return tokens[i + 1]


def parse_route(text: str) -> RouteConfig:
    tokens = text.split()
    if not tokens:
        raise ValueError("empty route")
    rtype = "unicast"
    if tokens[0] in ROUTE_TYPES:
        rtype = tokens.pop(0)
    if not tokens:
        raise ValueError("route has no destination")
    dst, plen = parse_prefix(tokens[0])
    route = RouteConfig(type=rtype, dst=dst, plen=plen, text=text)
    i = 1
    while i < len(tokens):
        key = tokens[i]
        if key == "via":
            val = _take(tokens, i, "an address")
            route.gateway = aton(val.removeprefix("inet "))
            i += 2
        elif key == "dev":
            route.dev = _take(tokens, i, "an interface")
            i += 2
        elif key in ("metric", "preference", "priority"):
            route.metric = _number(_take(tokens, i, "a number"), "metric")
            i += 2
        elif key == "table":
            route.table = parse_table(_take(tokens, i, "a table"))
            i += 2
        elif key == "src":
            route.prefsrc = aton(_take(tokens, i, "an address"))
            i += 2
        elif key == "scope":
            scope = _take(tokens, i, "a scope")
            if scope not in ("host", "link", "global", "universe"):
                raise ValueError(f"bad scope {scope!r}")
            route.scope = "global" if scope == "universe" else scope
            i += 2
        elif key in ("proto", "protocol"):
            route.proto = _take(tokens, i, "a protocol")
            i += 2
        elif key == "onlink":
            route.onlink = True
            i += 1
        elif key == "mtu":
            if _take(tokens, i, "a number") == "lock":
                route.mtu_lock = True
                i += 1
            route.mtu = min(_number(_take(tokens, i, "a number"), "mtu"), MAX_ROUTE_MTU)
            i += 2
        elif key == "advmss":
            route.advmss = min(_number(_take(tokens, i, "a number"), "advmss"), MAX_ROUTE_ADVMSS)
            i += 2
        elif key in ("tos", "dsfield"):
            route.tos = _tos(_take(tokens, i, "a number"))
            i += 2
        elif key in ("realm", "realms"):
            _take(tokens, i, "a value")
            i += 2
        elif key == "nexthop":
            i = _parse_nexthop(tokens, i + 1, route)
        else:
            raise ValueError(f"unknown route attribute {key!r}")
    if route.nexthops and (route.gateway is not None or route.dev is not None):
        raise ValueError("a multipath route gives 'via' and 'dev' in each 'nexthop', not before")
    if rtype == "unicast" and route.gateway is None and route.dev is None and not route.nexthops:
        raise ValueError("unicast route needs 'via' or 'dev'")
    if route.scope == "host" and route.gateway is not None:
        raise ValueError("Route with host scope can not have a gateway (kernel: EINVAL)")
    if route.onlink and route.dev is None:
        raise ValueError("Nexthop device required for onlink (kernel: EINVAL)")
    return route


def _parse_nexthop(tokens: list[str], i: int, route: RouteConfig) -> int:
    """One `nexthop via GW [dev IFACE] [weight N] [onlink]` of a multipath route; returns the index
    of the next token.  Weights are 1..256 as iproute2 takes them (rtnh_hops + 1)."""
    gw: int | None = None
    dev: str | None = None
    weight = 1
    while i < len(tokens) and tokens[i] != "nexthop":
        key = tokens[i]
        if key == "via":
            gw = aton(_take(tokens, i, "an address").removeprefix("inet "))
        elif key == "dev":
            dev = _take(tokens, i, "an interface")
        elif key == "weight":
            weight = _number(_take(tokens, i, "a number"), "weight")
            if not 1 <= weight <= 256:
                raise ValueError(f"bad weight {weight} (1..256)")
        elif key == "onlink":
            route.onlink = True
            i += 1
            continue
        else:
            break                   # a route attribute after the nexthops (metric, table, ...)
        i += 2
    if gw is None and dev is None:
        raise ValueError("'nexthop' needs 'via' or 'dev'")
    route.nexthops.append((gw, dev, weight))
    return i


# ip_metrics_convert clamps: RTAX_MTU to IP_MAX_MTU - 15 (ip route shows 'mtu 65520' for 70000),
# RTAX_ADVMSS to 65535 - 40; 0 means the metric is not set (checked on 6.18)
MAX_ROUTE_MTU = 65520
MAX_ROUTE_ADVMSS = 65495


def _digits(text: str) -> bool:
    """ASCII decimal digits (str.isdigit also takes '²' and '٣'), few enough for a u32."""
    return text.isascii() and text.isdigit() and len(text) <= 10


def _number(text: str, what: str, base: int = 10) -> int:
    """A u32 as iproute2's get_u32 reads it (base 0: 0x.. hex, 0.. octal)."""
    try:
        n = parse_int(text, base) if base == 0 or _digits(text) else -1
    except ValueError:
        n = -1
    if not 0 <= n < 2**32:
        raise ValueError(f"bad {what} {text!r}")
    return n


def _tos(text: str) -> int:
    """rtm_tos: a byte whose ECN bits must be clear ('Invalid dsfield (tos): ECN bits must be 0').
    iproute2 reads it in hex whether or not it starts with 0x (rtnl_dsfield_a2n): 'tos 16' is 0x16."""
    try:
        if not text.isascii() or len(text) > 4:
            raise ValueError
        tos = int(text, 16)
    except ValueError:
        raise ValueError(f"bad tos {text!r}") from None
    if not 0 <= tos <= 255:
        raise ValueError(f"bad tos {text!r}")
    if tos & 0x3:
        raise ValueError("Invalid dsfield (tos): ECN bits must be 0 (kernel: EINVAL)")
    return tos


def parse_rule(text: str) -> RuleConfig:
    tokens = text.split()
    rule = RuleConfig(priority=-1, text=text)
    i = 0
    while i < len(tokens):
        key = tokens[i]
        if key == "not":
            rule.invert = True
            i += 1
            continue
        if key in ("blackhole", "unreachable", "prohibit"):
            rule.action = key
            i += 1
            continue
        val = _take(tokens, i, "a value")
        if key == "from":
            rule.src = None if val == "all" else parse_prefix(val)
        elif key == "to":
            rule.dst = None if val == "all" else parse_prefix(val)
        elif key == "fwmark":
            mark, _, mask = val.partition("/")
            rule.fwmark = (_number(mark, "fwmark", 0), _number(mask, "fwmark mask", 0) if mask else 0xFFFFFFFF)
        elif key in ("iif", "dev"):
            rule.iif = val
        elif key == "oif":
            rule.oif = val
        elif key in ("lookup", "table"):
            rule.table = parse_table(val)
        elif key in ("priority", "pref", "preference", "order"):
            rule.priority = _number(val, "priority")
        elif key in ("tos", "dsfield"):
            rule.tos = _number(val, "tos", 0)
            if rule.tos > 255:
                raise ValueError(f"bad tos {val!r}")
        else:
            raise ValueError(f"unknown rule selector {key!r}")
        i += 2
    return rule


def parse_neighbour(text: str) -> NeighbourConfig:
    tokens = text.split()
    if not tokens:
        raise ValueError("empty neighbour")
    addr = aton(tokens[0])
    dev = None
    lladdr = None
    state = None
    i = 1
    while i < len(tokens):
        key = tokens[i].lower()
        if key == "dev":
            dev = _take(tokens, i, "an interface")
            i += 2
        elif key == "lladdr":
            lladdr = parse_mac(_take(tokens, i, "a MAC address"))
            i += 2
        elif key == "nud":
            state = _take(tokens, i, "a state").lower()
            i += 2
        elif key in NUD_STATES:
            state = key
            i += 1
        elif key in ("router", "proxy", "extern_learn"):
            i += 1
        else:
            raise ValueError(f"unknown neighbour attribute {tokens[i]!r}")
    if dev is None:
        raise ValueError("neighbour needs 'dev'")
    state = state or "permanent"
    if state not in NUD_STATES:
        raise ValueError(f"unknown neighbour state {state!r}")
    if lladdr is None and state not in ("failed", "incomplete"):
        raise ValueError(f"neighbour in state {state} needs 'lladdr'")
    return NeighbourConfig(addr=addr, dev=dev, lladdr=lladdr, state=state)


def parse_socket(text: str) -> SocketConfig:
    tokens = text.split()
    if len(tokens) < 2 or tokens[0] not in ("tcp", "udp"):
        raise ValueError("socket must look like 'tcp 0.0.0.0:22' or 'udp 127.0.0.53:53'")
    host, sep, port = tokens[1].rpartition(":")
    if not sep or not _digits(port) or not 0 < int(port) < 65536:
        raise ValueError(f"bad socket address {tokens[1]!r}")
    addr = 0 if host in ("*", "") else aton(host)
    sock = SocketConfig(proto=tokens[0], addr=addr, port=int(port), text=text)
    rest = tokens[2:]
    if rest:
        if len(rest) != 2 or rest[0] != "dev":
            raise ValueError(f"unexpected {' '.join(rest)!r} (only 'dev IFACE' may follow)")
        sock.dev = rest[1]
    return sock


def default_rule_priority(existing: list[int]) -> int:
    """fib_default_rule_pref: one below the second rule's priority (32765 on a fresh table)."""
    ordered = sorted(existing)
    if len(ordered) >= 2 and ordered[1] > 0:
        return ordered[1] - 1
    return 0
