"""Which host interface a LINUX_SLL2 interface index means.

`tcpdump -i any` names each frame's interface only by the capturing host's ifindex, a
number the host file does not otherwise know.  It is resolved, strongest first, from an
explicit option ("2=eth0,3=eth1"), the host file's `ifindex:` keys, and then the capture
itself: an OUTGOING frame's cooked source address is the sending interface's own MAC, and
the addresses a link carries (a received packet's source, a sent packet's destination,
both addresses of an ARP packet) fall in that interface's connected subnets.  Whatever
stays ambiguous or unmapped is reported as a warning, never guessed silently.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from pathtrace.capture.frame import DIR_INBOUND, DIR_OUTBOUND, Frame
from pathtrace.errors import PathtraceError
from pathtrace.host.model import HostConfig

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
LOOPBACK = "lo"
SCAN_FRAMES = 20_000     # frames scan_ifindexes looks at: every interface shows up early in practice
MAJORITY = 0.9           # share of the address votes an interface needs to win an index


@dataclass(slots=True)
class IfindexSeen:
    """What the capture showed on one SLL2 interface index."""

    frames: int = 0
    own_macs: Counter = field(default_factory=Counter)   # cooked source address of OUTGOING frames
    addrs: Counter = field(default_factory=Counter)      # IPv4 addresses of the link's neighbours/ARP


def observe(frame: Frame, seen: dict[int, IfindexSeen]) -> None:
    """Add one frame's evidence to `seen` (frames without an ifindex are ignored)."""
    if frame.ifindex is None:
        return
    s = seen.get(frame.ifindex)
    if s is None:
        s = seen[frame.ifindex] = IfindexSeen()
    s.frames += 1
    p = frame.payload
    if frame.direction == DIR_OUTBOUND and frame.src_mac is not None:
        s.own_macs[frame.src_mac] += 1
    if frame.error is not None:
        return
    if frame.ethertype == ETH_P_IP and len(p) >= 20 and p[0] >> 4 == 4:
        if frame.direction == DIR_INBOUND:
            s.addrs[int.from_bytes(p[12:16], "big")] += 1
        elif frame.direction == DIR_OUTBOUND:
            s.addrs[int.from_bytes(p[16:20], "big")] += 1
    elif frame.ethertype == ETH_P_ARP and len(p) >= 28 and p[2:4] == b"\x08\x00" and p[5] == 4:
        s.addrs[int.from_bytes(p[14:18], "big")] += 1
        s.addrs[int.from_bytes(p[24:28], "big")] += 1


def scan_ifindexes(frames: Iterable[Frame], limit: int = SCAN_FRAMES) -> dict[int, IfindexSeen]:
    """The evidence of the first `limit` frames (0: all), for resolve_ifindex; closes `frames`."""
    seen: dict[int, IfindexSeen] = {}
    try:
        for n, frame in enumerate(frames):
            if limit and n >= limit:
                break
            observe(frame, seen)
    finally:
        close = getattr(frames, "close", None)     # a reader left part-read holds its file open
        if close is not None:
            close()
    return seen


def parse_ifindex_option(text: str, names: Iterable[str], what: str = "--ifindex") -> dict[int, str]:
    """"2=eth0,3=eth1" as {2: "eth0", 3: "eth1"}; names must be host interfaces (or lo).
    Raises PathtraceError with a one-line message."""
    from pathtrace.inputs import check_arg, parse_int, shorten
    check_arg(text, what)
    known = set(names) | {LOOPBACK}
    result: dict[int, str] = {}
    shown = shorten(text)
    for item in text.split(","):
        item = item.strip()
        index, sep, name = item.partition("=")
        index, name = index.strip(), name.strip()
        if not sep or not index or not name:
            raise PathtraceError(f"{what} {shown}: {shorten(item)} is not INDEX=NAME")
        try:
            n = parse_int(index, 10)
        except ValueError:
            raise PathtraceError(f"{what} {shown}: ifindex {shorten(index)} is not a number") from None
        if not 1 <= n <= 0x7FFFFFFF:
            raise PathtraceError(f"{what} {shown}: ifindex {n} out of range 1..2147483647")
        if name not in known:
            raise PathtraceError(f"{what} {shown}: no interface {shorten(name)} in the host file "
                                 f"(known: {', '.join(sorted(known))})")
        if n in result and result[n] != name:
            raise PathtraceError(f"{what} {shown}: ifindex {n} given twice")
        result[n] = name
    return result


def _subnet_owners(host: HostConfig, addr: int) -> set[str]:
    """Interfaces with a connected subnet (prefix 1..31) or an address equal to addr."""
    owners = set()
    for iface in host.interfaces:
        for a, plen in iface.addresses:
            mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0
            if a == addr or 0 < plen < 32 and a & mask == addr & mask:
                owners.add(iface.name)
    return owners


def _infer(host: HostConfig, ifindex: int, s: IfindexSeen) -> tuple[str | None, str | None]:
    """(interface, None) or (None, warning) for one index from its evidence."""
    by_mac: dict[bytes, list[str]] = {}
    for iface in host.interfaces:
        if iface.mac:
            by_mac.setdefault(iface.mac, []).append(iface.name)
    candidates: set[str] = set()
    for mac in s.own_macs:
        candidates.update(by_mac.get(mac, ()))
    if len(candidates) == 1:
        return candidates.pop(), None
    if (s.addrs and all(a >> 24 == 127 for a in s.addrs)) or set(s.own_macs) == {bytes(6)}:
        return LOOPBACK, None
    votes: Counter = Counter()
    for addr, count in s.addrs.items():
        owners = _subnet_owners(host, addr)
        if candidates:
            owners &= candidates
        if len(owners) == 1:
            votes[next(iter(owners))] += count
    if votes:
        (best, n), *rest = votes.most_common()
        if n >= MAJORITY * sum(votes.values()):
            return best, None
        share = ", ".join(f"{name} {c}" for name, c in votes.most_common())
        return None, f"ifindex {ifindex}: ambiguous, its addresses point to several interfaces ({share})"
    if len(candidates) > 1:
        return None, f"ifindex {ifindex}: its frames carry a MAC shared by {', '.join(sorted(candidates))}"
    return None, (f"ifindex {ifindex}: no host interface matches its {s.frames} frame(s) "
                  f"(give it with an ifindex key in the host file)")


def resolve_ifindex(host: HostConfig, observed: dict[int, IfindexSeen],
                    option: str | dict[int, str] | None = None) -> tuple[dict[int, str], list[str]]:
    """Map every observed SLL2 ifindex (and every index the option or host file gives) to a
    host interface name; returns (mapping, warnings).  The option wins over the host file's
    ifindex keys, which win over inference; an index left out of the mapping is unmapped."""
    names = [i.name for i in host.interfaces]
    explicit = parse_ifindex_option(option, names) if isinstance(option, str) else dict(option or {})
    mapping: dict[int, str] = {}
    warnings: list[str] = []
    for iface in host.interfaces:
        if iface.ifindex is not None and iface.ifindex not in explicit:
            mapping[iface.ifindex] = iface.name
    mapping.update(explicit)
    given = set(mapping.values())
    for ifindex in sorted(observed):
        if ifindex in mapping:
            continue
        name, warning = _infer(host, ifindex, observed[ifindex])
        if warning is not None:
            warnings.append(warning)
        elif name in given:
            warnings.append(f"ifindex {ifindex}: looks like {name}, which is already ifindex "
                            f"{min(i for i, n in mapping.items() if n == name)}; left unmapped")
        else:
            mapping[ifindex] = name
            given.add(name)
    return mapping, warnings


def ifindex_map_for(host: HostConfig, capture: str, option: str | dict[int, str] | None = None
                    ) -> tuple[dict[int, str], list[str]]:
    """resolve_ifindex for a capture file: its first frames are scanned (a pipe is not read twice)."""
    import os
    from pathtrace.capture.reader import read_frames
    observed = scan_ifindexes(read_frames(capture)) if capture != "-" and os.path.isfile(capture) else {}
    if not observed and not option:
        return {}, []
    return resolve_ifindex(host, observed, option)
