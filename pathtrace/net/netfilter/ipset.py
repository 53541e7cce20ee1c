"""ipsets from the host file (`ipsets: {name: [members]}`), with types inferred.

Members are 'ADDR', 'ADDR/PLEN' (hash:ip / hash:net) or 'ADDR[/PLEN],[PROTO:]PORT'
(hash:ip,port / hash:net,port; PROTO defaults to tcp).  The sets are copied into
the Netfilter object so the SET target can change them during a replay.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pathtrace.lib.inet import prefix_mask
from pathtrace.net.netfilter.x_tables import XtError
from pathtrace.net.netfilter.xt_util import parse_addr, parse_port, parse_proto


@dataclass(slots=True)
class IpSet:
    name: str
    dims: int                                   # 1: address, 2: address,port
    nets: list[tuple[int, int]] = field(default_factory=list)     # (network, mask) for dims == 1
    entries: set[tuple] = field(default_factory=set)              # (network, mask, proto, port) for dims == 2

    def test(self, addr: int, proto: int = 0, port: int = 0) -> bool:
        if self.dims == 1:
            return any((addr & m) == n for n, m in self.nets)
        return any((addr & m) == n and p == proto and pt == port for n, m, p, pt in self.entries)

    def add(self, addr: int, proto: int = 0, port: int = 0) -> None:
        if self.dims == 1:
            if not self.test(addr):
                self.nets.append((addr, 0xFFFFFFFF))
        else:
            self.entries.add((addr, 0xFFFFFFFF, proto, port))

    def delete(self, addr: int, proto: int = 0, port: int = 0) -> None:
        if self.dims == 1:
            self.nets = [(n, m) for n, m in self.nets if (addr & m) != n]
        else:
            self.entries = {e for e in self.entries if not ((addr & e[1]) == e[0] and e[2] == proto and e[3] == port)}


def _net(text: str) -> tuple[int, int]:
    a, slash, p = text.partition("/")
    ok = p.isascii() and p.isdigit() and len(p) <= 2 and int(p) <= 32
    mask = prefix_mask(int(p)) if slash and ok else 0xFFFFFFFF
    if slash and not ok:
        raise XtError(f"ipset: bad prefix in {text!r}")
    return parse_addr(a) & mask, mask


def parse_set(name: str, members: list[str]) -> IpSet:
    dims = max((len(str(m).split(",")) for m in members), default=1)
    if dims > 2:
        raise XtError(f"ipset {name}: three-dimensional members (e.g. hash:ip,port,ip) are not supported")
    s = IpSet(name, dims)
    for m in members:
        parts = str(m).split(",")
        if len(parts) != dims:
            raise XtError(f"ipset {name}: member {m!r} does not fit the set type")
        n, mask = _net(parts[0].strip())
        if dims == 1:
            s.nets.append((n, mask))
        else:
            proto_t, colon, port_t = parts[1].strip().rpartition(":")
            proto = parse_proto(proto_t) if colon else 6
            s.entries.add((n, mask, proto, parse_port(port_t)))
    return s


def load_ipsets(raw: dict[str, list[str]]) -> dict[str, IpSet]:
    return {name: parse_set(name, list(members or [])) for name, members in (raw or {}).items()}
