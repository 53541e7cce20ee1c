"""Load and validate a host YAML file into a HostConfig.

Works on PyYAML's node graph rather than plain objects so that every error can name
the line it comes from: `host.yaml:12: route via 10.9.0.1: gateway is not reachable`.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import yaml

from pathtrace.errors import HostFileError
from pathtrace.host import iproute
from pathtrace.inputs import compose_yaml, decode, parse_int, read_text
from pathtrace.host.model import (
    RT_TABLE_MAIN, HostConfig, InterfaceConfig, RuleConfig,
)
from pathtrace.lib.inet import aton, ntoa, parse_mac, prefix_mask
from pathtrace.net.ipv4.devinet import Sysctl

TOP_KEYS = {"name", "interfaces", "sysctl", "routes", "rules", "neighbours", "neighbors",
            "sockets", "iptables", "iptables-file", "iptables-backend", "ipsets",
            "nftables", "nftables-file"}
IFACE_KEYS = {"name", "mac", "addresses", "mtu", "state", "driver", "txqueuelen", "ifindex"}
DRIVERS = {"e1000e", "e1000", "ixgbe", "virtio_net", "veth", "igb", "mlx5_core", "bnxt_en", "tg3", "r8169"}


class _Loader:
    def __init__(self, path: str):
        self.path = path

    def fail(self, node: yaml.Node | None, message: str) -> HostFileError:
        line = node.start_mark.line + 1 if node is not None else None
        return HostFileError(message, self.path, line)

    # ---- node helpers --------------------------------------------------------------
    def mapping(self, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        out = []
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise self.fail(key, f"bad key in {what}")
            out.append((key.value, key, value))
        return out

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} must be a list")
        return node.value

    def scalar(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{what} must be a single value")
        return node.value

    def integer(self, node: yaml.Node, what: str) -> int:
        text = self.scalar(node, what)
        try:
            return parse_int(text)
        except ValueError:
            raise self.fail(node, f"{what} must be a number, not {text!r}") from None

    def parse_each(self, node: yaml.Node, what: str, parser: Callable[[str], Any]) -> list[Any]:
        items = []
        for item in self.sequence(node, what):
            text = self.scalar(item, f"each entry of {what}")
            try:
                parsed = parser(text)
            except ValueError as exc:
                raise self.fail(item, f"{what[:-1] if what.endswith('s') else what} {text!r}: {exc}") from None
            parsed.line = item.start_mark.line + 1
            items.append(parsed)
        return items

    # ---- sections -------------------------------------------------------------------
    def load(self) -> HostConfig:
        text = read_text(self.path, HostFileError, "host file")
        root = compose_yaml(text, self.path, HostFileError)
        if root is None:
            raise HostFileError("host file is empty", self.path, 1)
        host = HostConfig(path=self.path, name=os.path.splitext(os.path.basename(self.path))[0],
                          interfaces=[], sysctl={}, routes=[], rules=[], neighbours=[], sockets=[])
        sections = {}
        for key, knode, value in self.mapping(root, "host file"):
            if key not in TOP_KEYS:
                raise self.fail(knode, f"unknown key {key!r} (expected one of {', '.join(sorted(TOP_KEYS))})")
            sections[key] = (knode, value)
        if "name" in sections:
            host.name = self.scalar(sections["name"][1], "name")
        if "interfaces" in sections:
            host.interfaces = self.interfaces(sections["interfaces"][1])
        names = {i.name for i in host.interfaces}
        if "sysctl" in sections:
            host.sysctl = self.sysctls(sections["sysctl"][1], sorted(names))
        if "routes" in sections:
            host.routes = self.parse_each(sections["routes"][1], "routes", iproute.parse_route)
        if "rules" in sections:
            host.rules = self.parse_each(sections["rules"][1], "rules", iproute.parse_rule)
        for key in ("neighbours", "neighbors"):
            if key in sections:
                host.neighbours = self.parse_each(sections[key][1], "neighbours", iproute.parse_neighbour)
        if "sockets" in sections:
            host.sockets = self.parse_each(sections["sockets"][1], "sockets", iproute.parse_socket)
        source = self.ruleset_source(sections, "iptables")
        if source is not None:
            host.iptables_text, host.iptables_path, host.iptables_first_line = source
        if "iptables-backend" in sections:
            backend = self.scalar(sections["iptables-backend"][1], "iptables-backend")
            if backend not in ("nft", "legacy"):
                raise self.fail(sections["iptables-backend"][1],
                                f"iptables-backend must be nft (iptables-nft) or legacy (iptables-legacy), not {backend!r}")
            host.iptables_backend = backend
        self.nftables(host, sections)
        if "ipsets" in sections:
            node = sections["ipsets"][1]
            host.ipsets_line = node.start_mark.line + 1
            for key, knode, value in self.mapping(node, "ipsets"):
                host.ipsets[key] = [self.scalar(v, f"ipset {key} member") for v in self.sequence(value, f"ipset {key}")]
        self.validate(host, names)
        return host

    def interfaces(self, node: yaml.Node) -> list[InterfaceConfig]:
        result = []
        seen: set[str] = set()
        ifindexes: dict[int, str] = {}
        for item in self.sequence(node, "interfaces"):
            fields = {k: (kn, v) for k, kn, v in self.mapping(item, "an interface")}
            for key, (knode, _) in fields.items():
                if key not in IFACE_KEYS:
                    raise self.fail(knode, f"unknown interface key {key!r} (expected one of {', '.join(sorted(IFACE_KEYS))})")
            if "name" not in fields:
                raise self.fail(item, "interface needs a 'name'")
            name = self.scalar(fields["name"][1], "interface name")
            if name in seen or name == "lo" and False:
                raise self.fail(fields["name"][1], f"interface {name!r} defined twice")
            if not 0 < len(name) < 16 or "/" in name or " " in name:
                raise self.fail(fields["name"][1], f"bad interface name {name!r}")
            seen.add(name)
            iface = InterfaceConfig(name=name, mac=b"", addresses=[], line=item.start_mark.line + 1)
            if "mac" in fields:
                try:
                    iface.mac = parse_mac(self.scalar(fields["mac"][1], "mac"))
                except ValueError as exc:
                    raise self.fail(fields["mac"][1], str(exc)) from None
            elif name != "lo":
                # deterministic locally administered address derived from the name
                iface.mac = bytes([0x02, 0x00]) + (sum(name.encode()) * 2654435761 & 0xFFFFFFFF).to_bytes(4, "big")
            if "addresses" in fields:
                for anode in self.sequence(fields["addresses"][1], "addresses"):
                    text = self.scalar(anode, "address")
                    local, sep, peer = (t.strip() for t in text.partition(" peer "))
                    if sep and "/" in local:
                        raise self.fail(anode, f"bad address {text!r}: with 'peer' the prefix length goes on the "
                                               f"peer (10.0.0.1 peer 10.0.0.2/32)")
                    addr, _, plen = (peer if sep else local).partition("/")
                    try:
                        value = aton(local if sep else addr)
                        length = parse_int(plen, 10) if plen else 32
                        if not 0 <= length <= 32:
                            raise ValueError
                        if sep:
                            iface.peers[value] = aton(addr)
                    except ValueError:
                        raise self.fail(anode, f"bad address {text!r} (expected CIDR like 192.0.2.1/24, "
                                               f"or 10.0.0.1 peer 10.0.0.2/32)") from None
                    iface.addresses.append((value, length))
            if "mtu" in fields:
                iface.mtu = self.integer(fields["mtu"][1], "mtu")
                if not 68 <= iface.mtu <= 65535:
                    raise self.fail(fields["mtu"][1], f"mtu {iface.mtu} out of range 68..65535")
            if "state" in fields:
                state = self.scalar(fields["state"][1], "state").lower()
                if state not in ("up", "down"):
                    raise self.fail(fields["state"][1], f"state must be up or down, not {state!r}")
                iface.up = state == "up"
            if "driver" in fields:
                iface.driver = self.scalar(fields["driver"][1], "driver")
                if iface.driver not in DRIVERS:
                    raise self.fail(fields["driver"][1], f"unknown driver {iface.driver!r} (known: {', '.join(sorted(DRIVERS))})")
            if "txqueuelen" in fields:
                iface.txqueuelen = self.integer(fields["txqueuelen"][1], "txqueuelen")
                if not -2**31 <= iface.txqueuelen < 2**31:      # ip link's get_integer (6.18: -1 shows 'qlen -1')
                    raise self.fail(fields["txqueuelen"][1], f"txqueuelen {iface.txqueuelen}: Invalid \"txqueuelen\" "
                                                             f"value (ip link takes -2147483648..2147483647)")
            if "ifindex" in fields:     # the capturing host's index: maps tcpdump -i any (SLL2) frames
                iface.ifindex = self.integer(fields["ifindex"][1], "ifindex")
                if not 1 <= iface.ifindex <= 0x7FFFFFFF:
                    raise self.fail(fields["ifindex"][1], f"ifindex {iface.ifindex} out of range 1..2147483647")
                if iface.ifindex in ifindexes:
                    raise self.fail(fields["ifindex"][1],
                                    f"ifindex {iface.ifindex} already given to {ifindexes[iface.ifindex]}")
                ifindexes[iface.ifindex] = name
            result.append(iface)
        return result

    def sysctls(self, node: yaml.Node, devices: list[str]) -> dict[str, str]:
        probe = Sysctl()
        probe.init_devices([*devices, "lo"])
        out: dict[str, str] = {}
        for key, knode, value in self.mapping(node, "sysctl"):
            text = self.scalar(value, key)
            if key.split(".")[-1] in probe.vectors:
                try:
                    vector = tuple(parse_int(v) for v in text.split())
                    probe.write_vector(key, vector)
                except (ValueError, KeyError) as exc:
                    raise self.fail(value, f"sysctl {key}: {exc if isinstance(exc, ValueError) and 'takes' in str(exc) else 'three numbers expected, not ' + repr(text)}") from None
                out[key] = " ".join(map(str, vector))     # as read: the namespace parses it again
                continue
            try:
                number = parse_int(text)
            except ValueError:
                raise self.fail(value, f"sysctl {key} must be a number, not {text!r}") from None
            if is_netfilter_sysctl(key):
                self.netfilter_sysctl(key, knode, value, number)
                out[key] = str(number)
                continue
            try:
                probe.write(key, number)
            except ValueError as exc:
                raise self.fail(value, f"sysctl {exc}") from None
            except LookupError as exc:
                if isinstance(exc, KeyError):
                    raise self.fail(knode, f"unknown sysctl {key!r}") from None
                raise self.fail(knode, f"sysctl {key}: unknown interface {exc.args[0]!r}") from None
            out[key] = str(number)
        return out

    def netfilter_sysctl(self, key: str, knode: yaml.Node, value: yaml.Node, number: int) -> None:
        """net.netfilter.nf_conntrack_*: checked against the conntrack table's own sysctls."""
        from pathtrace.net.netfilter.nf_conntrack_core import ConntrackTable
        try:
            ConntrackTable().set_sysctl(key, number)
        except KeyError:
            raise self.fail(knode, f"unknown sysctl {key!r} (net.netfilter.* knows "
                                   f"{', '.join(sorted(ConntrackTable().sysctl))})") from None
        except ValueError as exc:
            raise self.fail(value, f"sysctl {exc}") from None

    def validate(self, host: HostConfig, names: set[str]) -> None:
        known = names | {"lo"}
        connected = [(i.peers.get(a, a) & prefix_mask(p), p, i.name) for i in host.interfaces for a, p in i.addresses]
        # addresses with a local route (fib_add_ifaddr: up devices only; lo's 127.0.0.0/8 is all local)
        local = {a for i in host.interfaces if i.up for a, _ in i.addresses}
        for route in host.routes:
            for gateway, dev in [(route.gateway, route.dev)] + [(g, d) for g, d, _ in route.nexthops]:
                self.nexthop(host, route, gateway, dev, known, connected)
            src = route.prefsrc
            if src is not None and src not in local and src >> 24 != 127 and not (
                    route.type == "local" and route.plen == 32 and route.dst == src):
                raise HostFileError(f"route {route.text!r}: src {ntoa(src)} is not a local address "
                                    f"('Invalid prefsrc address', fib_valid_prefsrc)", self.path, route.line)
        self.duplicate_routes(host)
        for rule in host.rules:
            for dev in (rule.iif, rule.oif):
                if dev is not None and dev not in known:
                    raise HostFileError(f"rule {rule.text!r}: unknown interface {dev!r}", self.path, rule.line)
        for neigh in host.neighbours:
            if neigh.dev not in known:
                raise HostFileError(f"neighbour: unknown interface {neigh.dev!r}", self.path, neigh.line)
        for sock in host.sockets:
            if sock.dev is not None and sock.dev not in known:
                raise HostFileError(f"socket {sock.text!r}: unknown interface {sock.dev!r}", self.path, sock.line)


    def nexthop(self, host: HostConfig, route, gateway: int | None, dev: str | None, known: set[str],
                connected: list) -> None:
        """fib_check_nh for the route's nexthop (each one of a multipath route): a known device and a
        gateway reachable on a connected route (unless onlink)."""
        if dev is not None and dev not in known:
            raise HostFileError(f"route {route.text!r}: unknown interface {dev!r}", self.path, route.line)
        if gateway is not None and route.scope == "link" and not route.onlink:
            raise HostFileError(f"route {route.text!r}: a gateway route of scope link finds no nexthop "
                                f"('Nexthop has invalid gateway')", self.path, route.line)
        if gateway is not None and not route.onlink:
            reach = [n for net, p, n in connected if gateway & prefix_mask(p) == net and (dev is None or dev == n)]
            via_route = any(r is not route and r.gateway is None and r.dev and r.type == "unicast" and
                            gateway & prefix_mask(r.plen) == r.dst and r.table == route.table and
                            (dev is None or dev == r.dev) for r in host.routes)
            if not reach and not via_route:
                raise HostFileError(f"route {route.text!r}: gateway is not reachable (no connected route to it; "
                                    f"'Nexthop has invalid gateway')", self.path, route.line)

    def nftables(self, host: HostConfig, sections: dict) -> None:
        """`nftables: |` (nft list ruleset, or its -j JSON) or `nftables-file:`; parsed with the namespace."""
        source = self.ruleset_source(sections, "nftables")
        if source is not None:
            host.nftables_text, host.nftables_path, host.nftables_first_line = source

    def ruleset_source(self, sections: dict, key: str) -> tuple[str, str, int] | None:
        """A ruleset given inline (`KEY: |`) or as a file (`KEY-file:`, relative to the host file):
        its text, the file it is in and the line its first line is on there."""
        if key in sections and f"{key}-file" in sections:
            raise self.fail(sections[f"{key}-file"][0], f"use either '{key}' or '{key}-file', not both")
        if key in sections:
            node = sections[key][1]
            # a block scalar's text starts on the line after the '|' indicator
            return self.scalar(node, key), self.path, node.start_mark.line + (2 if node.style in ("|", ">") else 1)
        if f"{key}-file" not in sections:
            return None
        node = sections[f"{key}-file"][1]
        rel = self.scalar(node, f"{key}-file")
        full = rel if os.path.isabs(rel) else os.path.join(os.path.dirname(self.path), rel)
        try:
            with open(full, "rb") as fh:
                data = fh.read()
        except (OSError, ValueError) as exc:      # ValueError: a NUL in the name
            raise self.fail(node, f"cannot read {key}-file {rel!r}: {getattr(exc, 'strerror', None) or exc}") from None
        return decode(data, full, HostFileError), full, 1

    def duplicate_routes(self, host: HostConfig) -> None:
        """`ip route add` of a route whose table, prefix, tos and metric a route already has fails with
        'File exists' (fib_table_insert, NLM_F_EXCL: EEXIST), the kernel's own routes for the addresses
        included (checked on 6.18: the connected 10.0.0.0/24 or 'local 10.0.0.1 table local' again)."""
        from dataclasses import replace
        from pathtrace.net.core.net_namespace import build_net
        kernel = build_net(replace(host, routes=[], rules=[], neighbours=[], sockets=[], sysctl={}))
        seen: dict[tuple, str] = {}
        for table in kernel.fib_tables.values():
            for fa in table.routes():
                seen[(fa.table, fa.dst, fa.plen, fa.tos, fa.metric)] = f"the kernel's route '{fa.describe()}'"
        for route in host.routes:
            key = (route.table, route.dst, route.plen, route.tos, route.metric)
            if key in seen:
                raise HostFileError(f"route {route.text!r}: File exists (same table, prefix, tos and metric as "
                                    f"{seen[key]}; ip route add refuses it)", self.path, route.line)
            seen[key] = f"line {route.line}"


def is_netfilter_sysctl(key: str) -> bool:
    """net.netfilter.* or net.nf_conntrack_max (init_net's alias of net.netfilter.nf_conntrack_max)."""
    return key.startswith("net.netfilter.") or key == "net.nf_conntrack_max"


def load_host(path: str) -> HostConfig:
    """Read `path`; raises HostFileError (file:line: message) on anything invalid."""
    return _Loader(path).load()


def default_rules() -> list[RuleConfig]:
    """The three rules every namespace starts with (fib_default_rules_init)."""
    return [RuleConfig(priority=0, table=255, text="from all lookup local"),
            RuleConfig(priority=32766, table=RT_TABLE_MAIN, text="from all lookup main"),
            RuleConfig(priority=32767, table=253, text="from all lookup default")]
