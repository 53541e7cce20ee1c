"""struct net: one host's network namespace, built from a HostConfig.

Everything that changes during a replay (neighbours, conntrack, rate limiters,
fragment queues, counters) lives here, so two replays never share state.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pathtrace.host.loader import default_rules, is_netfilter_sysctl
from pathtrace.host.model import HostConfig, RuleConfig
from pathtrace.lib.inet import aton, prefix_mask
from pathtrace.net.core.neighbour import (
    NUD_FAILED, NUD_INCOMPLETE, NUD_NOARP, NUD_PERMANENT, NUD_REACHABLE, NUD_STALE, NeighTable,
)
from pathtrace.net.core.netdevice import InAddr, NetDevice
from pathtrace.net.ipv4.devinet import Sysctl
from pathtrace.net.ipv4.fib import FibAlias, FibTable, fib_rebalance

_NUD_FROM_CONFIG = {"permanent": NUD_PERMANENT, "noarp": NUD_NOARP, "reachable": NUD_REACHABLE,
                    "stale": NUD_STALE, "delay": NUD_STALE, "probe": NUD_STALE, "failed": NUD_FAILED,
                    "incomplete": NUD_INCOMPLETE}


@dataclass(slots=True)
class Socket:
    proto: str
    addr: int
    port: int
    dev: str | None
    text: str
    rx_packets: int = 0
    drops: int = 0          # tcp_listendrop / sk_drops


@dataclass(eq=False)
class Net:
    host: HostConfig
    devices: dict[str, NetDevice] = field(default_factory=dict)
    sysctl: Sysctl = field(default_factory=Sysctl)
    nf_sysctl: dict[str, int] = field(default_factory=dict)   # net.netfilter.* for the conntrack table
    fib_tables: dict[int, FibTable] = field(default_factory=dict)
    fib_rules: list[RuleConfig] = field(default_factory=list)
    has_custom_rules: bool = False
    has_custom_local_routes: bool = False
    local_addrs: set[int] = field(default_factory=set)
    neigh: NeighTable = field(default_factory=NeighTable)
    sockets: list[Socket] = field(default_factory=list)
    nf: Any = None
    by_mac: dict[bytes, NetDevice] = field(default_factory=dict)
    icmp_peers: dict[int, list[float]] = field(default_factory=dict)     # inet_peer rate tokens
    icmp_global: list[float] = field(default_factory=lambda: [0.0, -1.0])  # credit, last time
    rt_error_peers: dict[int, list[float]] = field(default_factory=dict)
    ip_frags: dict = field(default_factory=dict)
    tcp_conns: dict = field(default_factory=dict)       # request and established socks by 4-tuple
    ping_socks: dict[int, str] = field(default_factory=dict)   # ICMP echo identifier -> ping socket
    ip_id: int = 0

    @property
    def loopback(self) -> NetDevice:
        return self.devices["lo"]

    # ---- devinet helpers -----------------------------------------------------------
    def shared_state(self) -> tuple:
        """State every flow of a replay shares (neighbours and their timers, ICMP rate limits,
        IP IDs, fragment queues, NAT's port search RNG): `replay --jobs` compares it before and
        after a worker's run and replays in one process when a worker changed it."""
        neigh = tuple(sorted((k, n.state, n.lladdr, n.timer) for k, n in self.neigh.entries.items()))
        ct = getattr(self.nf, "conntrack", None) if self.nf is not None else None
        return (neigh, sorted(self.icmp_peers.items()), tuple(self.icmp_global), sorted(self.rt_error_peers.items()),
                len(self.ip_frags), self.ip_id, ct.rng.getstate() if ct is not None else None)

    def inet_select_addr(self, dev: NetDevice | None, dst: int, scope: str = "global") -> int:
        """inet_select_addr: the device's address on dst's subnet, else its primary, else any global one."""
        if dev is not None:
            for ifa in dev.addrs:
                if dst and (dst & ifa.mask) == (ifa.address & ifa.mask):
                    return ifa.local
            for ifa in dev.addrs:
                if not (dev.loopback and scope == "global"):
                    return ifa.local
        for other in self.devices.values():
            if not other.loopback and other.addrs:
                return other.addrs[0].local
        return 0

    def inet_addr_onlink(self, dev: NetDevice, a: int, b: int) -> bool:
        """inet_addr_onlink: `a` (and `b` unless it is 0) in one of the device's subnets."""
        return any((a & ifa.mask) == (ifa.address & ifa.mask) and (not b or (b & ifa.mask) == (ifa.address & ifa.mask))
                   for ifa in dev.addrs)


def _scope(route_type: str, gateway: int | None, given: str | None) -> str:
    if given:
        return given
    if route_type in ("local",):
        return "host"
    if route_type == "broadcast" or (route_type == "unicast" and gateway is None):
        return "link"
    return "global"


def build_net(host: HostConfig) -> Net:
    """Create the namespace: devices, sysctls, kernel-derived and configured routes, rules, neighbours."""
    net = Net(host=host)
    lo = NetDevice(name="lo", ifindex=1, mac=b"\0" * 6, mtu=65536, loopback=True, driver="loopback",
                   addrs=[InAddr(aton("127.0.0.1"), 8)])
    net.devices["lo"] = lo
    for index, iface in enumerate((i for i in host.interfaces if i.name != "lo"), start=2):
        dev = NetDevice(name=iface.name, ifindex=index, mac=iface.mac, mtu=iface.mtu, up=iface.up,
                        driver=iface.driver, txqueuelen=iface.txqueuelen,
                        addrs=[InAddr(a, p, iface.peers.get(a, 0)) for a, p in iface.addresses])
        net.devices[dev.name] = dev
        net.by_mac.setdefault(dev.mac, dev)
    for iface in host.interfaces:
        if iface.name == "lo":
            lo.addrs += [InAddr(a, p, iface.peers.get(a, 0)) for a, p in iface.addresses if (a, p) != (aton("127.0.0.1"), 8)]
    net.sysctl.init_devices(list(net.devices))
    for key, value in host.sysctl.items():
        if is_netfilter_sysctl(key):
            net.nf_sysctl[key.rsplit(".", 1)[-1]] = int(value, 0)
        elif key.split(".")[-1] in net.sysctl.vectors:
            net.sysctl.write_vector(key, tuple(int(v, 0) for v in value.split()))
        else:
            net.sysctl.write(key, int(value, 0))
    for table in (255, 254, 253):
        net.fib_tables[table] = FibTable(table)
    _add_kernel_routes(net)
    for rc in host.routes:
        table = net.fib_tables.setdefault(rc.table, FibTable(rc.table))
        dev, text = rc.dev, rc.text
        if dev is None and rc.gateway is not None:
            dev = _gateway_dev(net, rc.gateway, rc.table)
            text = _with_dev(text, dev)
        hops = fib_rebalance([(gw, hdev or (_gateway_dev(net, gw, rc.table) if gw is not None else None), w)
                              for gw, hdev, w in rc.nexthops])
        table.insert(FibAlias(type=rc.type, dst=rc.dst, plen=rc.plen, table=rc.table, gateway=rc.gateway,
                              dev=dev, metric=rc.metric, prefsrc=rc.prefsrc,
                              scope=_scope(rc.type, rc.gateway or (hops[0].gateway if hops else None), rc.scope),
                              proto=rc.proto, text=text, mtu=rc.mtu, mtu_lock=rc.mtu_lock, advmss=rc.advmss,
                              tos=rc.tos, nexthops=hops))
        if rc.table == 255:
            net.has_custom_local_routes = True
    rules = default_rules()
    for rc in host.rules:
        if rc.priority < 0:
            rc.priority = _default_pref([r.priority for r in rules])
        rules.append(rc)
    net.fib_rules = sorted(rules, key=lambda r: r.priority)
    net.has_custom_rules = bool(host.rules)
    for nc in host.neighbours:
        n = net.neigh.create(nc.addr, nc.dev)
        n.lladdr = nc.lladdr
        n.state = _NUD_FROM_CONFIG[nc.state]
    for sc in host.sockets:
        net.sockets.append(Socket(sc.proto, sc.addr, sc.port, sc.dev, sc.text))
    return net


def _gateway_dev(net: Net, gateway: int, table_id: int) -> str | None:
    """fib_check_nh_v4_gw without a device: look the gateway up in the route's table, then through the
    rules, accepting only routes of scope link or host (a connected or `dev` route, or a local address);
    the nexthop takes that route's device for good, so every later lookup sees `via GW dev DEV`."""
    def on_link(fa: FibAlias) -> bool:
        return fa.scope in ("link", "host") and fa.type in ("unicast", "local") and fa.dev is not None
    table = net.fib_tables.get(table_id)
    fa = table.lookup(gateway, on_link) if table is not None else None
    if fa is None:
        for rule in net.fib_rules or default_rules():
            other = net.fib_tables.get(rule.table)
            if rule.action == "lookup" and other is not None:
                fa = other.lookup(gateway, on_link)
                if fa is not None:
                    break
    return fa.dev if fa is not None else None


def _with_dev(text: str, dev: str | None) -> str:
    """The route as `ip route show` lists it: `dev DEV` after `via GW`."""
    tokens = text.split()
    if dev is None or "via" not in tokens or tokens.index("via") + 1 >= len(tokens):
        return text
    at = tokens.index("via") + 2
    return " ".join([*tokens[:at], "dev", dev, *tokens[at:]])


def _default_pref(existing: list[int]) -> int:
    ordered = sorted(existing)
    return ordered[1] - 1 if len(ordered) >= 2 and ordered[1] > 0 else 0


def _primary_of(dev: NetDevice, ifa: InAddr) -> InAddr | None:
    """inet_insert_ifa: an address is secondary when an earlier one on the device has the same
    prefix length and subnet; returns that primary, or None for a primary."""
    for other in dev.addrs:
        if other is ifa:
            return None
        if other.prefixlen == ifa.prefixlen and (other.address ^ ifa.address) & ifa.mask == 0:
            return other
    return None


def _order_secondaries_last(dev: NetDevice) -> None:
    """inet_insert_ifa appends secondaries after every primary (`ip addr` lists them last), and
    inet_select_addr only picks primaries."""
    prim = [ifa for ifa in dev.addrs if _primary_of(dev, ifa) is None]
    dev.addrs = prim + [ifa for ifa in dev.addrs if ifa not in prim]


def _add_kernel_routes(net: Net) -> None:
    """fib_add_ifaddr: local, broadcast and prefix routes for every address of an up device; a
    secondary address adds only its local route, with its primary as src."""
    local = net.fib_tables[255]
    main = net.fib_tables[254]
    for dev in net.devices.values():
        _order_secondaries_last(dev)
        for ifa in dev.addrs:
            net.local_addrs.add(ifa.local)
            if not dev.up:
                continue
            prim = _primary_of(dev, ifa)
            local.insert(FibAlias(type="local", dst=ifa.local, plen=32, table=255, dev=dev.name,
                                  prefsrc=(prim or ifa).local, scope="host", proto="kernel"))
            if prim is not None:
                continue    # its subnet's prefix and broadcast routes are the primary's
            if dev.loopback and ifa.prefixlen < 32:
                local.insert(FibAlias(type="local", dst=ifa.local & ifa.mask, plen=ifa.prefixlen, table=255,
                                      dev=dev.name, prefsrc=ifa.local, scope="host", proto="kernel"))
            if ifa.prefixlen < 31:
                local.insert(FibAlias(type="broadcast", dst=ifa.broadcast, plen=32, table=255, dev=dev.name,
                                      prefsrc=ifa.local, scope="link", proto="kernel"))
            if not dev.loopback and (ifa.prefixlen < 32 or ifa.address != ifa.local):   # a peer's /32 too
                main.insert(FibAlias(type="unicast", dst=ifa.address & prefix_mask(ifa.prefixlen),
                                     plen=ifa.prefixlen, table=254, dev=dev.name, prefsrc=ifa.local,
                                     scope="link", proto="kernel"))
