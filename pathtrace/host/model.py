"""The host description as loaded from YAML: plain data with source line numbers.

These are configuration records; the running namespace (pathtrace.net.core.net_namespace)
is built from them, so validation errors can always point back at a line.
"""
from __future__ import annotations

from dataclasses import dataclass, field

RTN_UNICAST = "unicast"
RTN_LOCAL = "local"
RTN_BROADCAST = "broadcast"
RTN_BLACKHOLE = "blackhole"
RTN_UNREACHABLE = "unreachable"
RTN_PROHIBIT = "prohibit"
RTN_THROW = "throw"

RT_TABLE_LOCAL = 255
RT_TABLE_MAIN = 254
RT_TABLE_DEFAULT = 253
TABLE_NAMES = {"local": RT_TABLE_LOCAL, "main": RT_TABLE_MAIN, "default": RT_TABLE_DEFAULT}


@dataclass(slots=True)
class InterfaceConfig:
    name: str
    mac: bytes
    addresses: list[tuple[int, int]]          # (address, prefix length)
    peers: dict[int, int] = field(default_factory=dict)   # local address -> its `peer` (prefix length above)
    mtu: int = 1500
    up: bool = True
    driver: str = "veth"
    txqueuelen: int = 1000
    line: int = 0
    ifindex: int | None = None                # index on the captured host (SLL2 frames name it)


@dataclass(slots=True)
class RouteConfig:
    type: str
    dst: int
    plen: int
    gateway: int | None = None
    dev: str | None = None
    metric: int = 0
    table: int = RT_TABLE_MAIN
    prefsrc: int | None = None
    scope: str | None = None        # host | link | global (derived when absent)
    proto: str = "static"
    onlink: bool = False
    mtu: int = 0                    # RTAX_MTU (0: none, the device's)
    mtu_lock: bool = False          # `mtu lock N`: path MTU discovery may not lower it
    advmss: int = 0                 # RTAX_ADVMSS (0: none)
    tos: int = 0                    # fa_dscp as a TOS byte (0: any)
    nexthops: list[tuple[int | None, str | None, int]] = field(default_factory=list)  # multipath: (via, dev, weight)
    line: int = 0
    text: str = ""


@dataclass(slots=True)
class RuleConfig:
    priority: int
    action: str = "lookup"          # lookup | blackhole | unreachable | prohibit
    table: int = RT_TABLE_MAIN
    src: tuple[int, int] | None = None
    dst: tuple[int, int] | None = None
    fwmark: tuple[int, int] | None = None   # (value, mask)
    iif: str | None = None
    oif: str | None = None
    invert: bool = False
    tos: int | None = None
    line: int = 0
    text: str = ""


@dataclass(slots=True)
class NeighbourConfig:
    addr: int
    dev: str
    lladdr: bytes | None
    state: str                      # permanent | reachable | stale | failed | incomplete | noarp | delay | probe
    line: int = 0


@dataclass(slots=True)
class SocketConfig:
    proto: str                      # tcp | udp
    addr: int                       # 0 = wildcard
    port: int
    dev: str | None = None          # SO_BINDTODEVICE
    line: int = 0
    text: str = ""


@dataclass(slots=True)
class HostConfig:
    path: str
    name: str
    interfaces: list[InterfaceConfig]
    sysctl: dict[str, str]
    routes: list[RouteConfig]
    rules: list[RuleConfig]
    neighbours: list[NeighbourConfig]
    sockets: list[SocketConfig]
    iptables_text: str | None = None        # iptables-save or iptables -S text
    iptables_path: str = ""                 # file the text came from (host file or iptables-file)
    iptables_first_line: int = 1            # line of the text's first line within that file
    ipsets: dict[str, list[str]] = field(default_factory=dict)
    ipsets_line: int = 0
    iptables_backend: str = "nft"           # nft (iptables-nft, current distributions) | legacy
    nftables_text: str | None = None        # `nft list ruleset` text or `nft -j list ruleset` JSON
    nftables_path: str = ""                 # file the text came from (host file or nftables-file)
    nftables_first_line: int = 1            # line of the text's first line within that file
