"""The megaflow cache: one learned path for every connection the model cannot tell apart.

The replay cache (flowcache.py) reuses a path for later packets of the same flow; the packets
that open a connection or change its state (the SYN, the first reply, the ACK that establishes
it, each side's first data) still ran the whole model, so a SYN scan or a flood of short
connections ran at the model's speed.  Open vSwitch meets the same problem with its megaflow
cache: key a path only on what its decisions read.

What the model's decisions read of a packet's addresses and ports is bounded by the host:
routing, policy rules, local and broadcast addresses, martian checks and the rules' -s/-d compare
an address with the prefixes the host file and ruleset name; the rules' port matches compare a
port with their ranges.  So two addresses contained in exactly the same of those prefixes (the
same longest one: prefixes nest) take the same decisions everywhere, and so do two ports between
the same range boundaries (AddressClasses).  A megaflow key is everything the replay cache keys
on, with each address and port replaced by its class; the TCP sequence numbers, window and
options, the IP ID and the ICMP echo id and sequence are left out: only the connection's own
state depends on them, and that state is made per packet.  For a packet of a known connection
the key adds what its path reads of the conntrack entry: the direction, status bits, marks, TCP
state, MASQUERADE's device and the classes of both tuples (NAT rewrites the packet from them, and
routing follows the rewritten header).  A next hop that is the packet's own (rewritten)
destination is looked up per packet; a gateway is the learned one.

Per packet, the path's state changes are made by the model's own functions, in the order the
learning run made them: for a new connection the conntrack entry and its tracker
(nf_conntrack_*_packet), the NAT bindings (nf_nat_alloc_null_binding, nf_nat_setup_info with the
range the rule gave: port search and RNG draws as the model makes them) and the confirmation
(__nf_conntrack_confirm); for a known one its tracker, whose result must be the learned one (else
its run is undone and the model runs).  Counters are added in bulk as for the replay cache.
Everything that could fail is checked before shared state changes; a packet that fails a check
runs the whole model.

The megaflow cache is used only where its soundness argument holds.  For the host (else
`MegaflowCache.off` says why): iptables, not nftables; no ipset or xfrm; single-path routes.
For a path (else `refused` counts why): every chain it went through has only rules whose
matches read the packet as above (no recent, limit, iprange, set, u32-like matches) and every
rule whose target ran is ACCEPT, DROP, a jump, LOG, SNAT, MASQUERADE or DNAT to one address and
port; the packet was received and forwarded or dropped, no ICMP error, fragment, IP option,
related packet or local TCP socket was involved.  Counts-only replays (--summary, --counters)
use it; records with paths do not.

With the C accelerator, the commonest new connections never leave C: a pure SYN, a UDP
datagram or an echo request in a pcap or pcapng whose entry is in `lane_entries` (keyed as
_megalane.c keys it, `lane_key`) is served inside the C reader's loop by _megalane.c, which makes the entry,
its tracker state, NAT bindings and confirmation as _serve_new does, on the model's objects.
A new connection whose NAT search finds no free tuple (its confirmation would clash) is handed
to the model, which draws the numbers the search drew (`abort`).
"""
from __future__ import annotations

import struct
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

from pathtrace.capture.frame import Frame
from pathtrace.lib.inet import prefix_mask
from pathtrace.net.core.skbuff import Iphdr, SkBuff
from pathtrace.net.core.neighbour import NUD_CONNECTED
from pathtrace.net.netfilter.nf_conntrack_core import (
    IP_CT_ESTABLISHED, IP_CT_ESTABLISHED_REPLY, IP_CT_NEW, IPS_CONFIRMED, IPS_DST_NAT, IPS_DST_NAT_DONE,
    IPS_DYING, IPS_SEEN_REPLY, IPS_SRC_NAT, IPS_SRC_NAT_DONE, NF_ACCEPT,
    NF_INET_PRE_ROUTING, GC_INTERVAL, NfConn,
)
from pathtrace.net.netfilter.nf_conntrack_proto_icmp import nf_conntrack_icmp_packet, nf_conntrack_icmpv4_error
from pathtrace.net.netfilter.nf_conntrack_proto_tcp import SYN_SENT, SYN_SET, TIME_WAIT, TcpSeen, TcpState, \
    nf_conntrack_tcp_packet
from pathtrace.net.netfilter.nf_conntrack_proto_udp import UdpState, nf_conntrack_udp_packet
from pathtrace.net.netfilter.nf_conntrack_core import (  # name-mangled inside a class otherwise
    __nf_conntrack_confirm as nf_conntrack_confirm,
)
from pathtrace.net.netfilter.nf_conntrack_tuple import Tuple, _l4_tuple, nf_ct_invert_tuple
from pathtrace.net.netfilter.nf_nat_proto import hook2manip
from pathtrace.net.netfilter.nf_nat_core import NF_NAT_MANIP_DST, NF_NAT_RANGE_MAP_IPS, \
    NF_NAT_RANGE_PERSISTENT, NF_NAT_RANGE_PROTO_OFFSET, NF_NAT_RANGE_PROTO_RANDOM, \
    NF_NAT_RANGE_PROTO_RANDOM_FULLY, NF_NAT_RANGE_PROTO_SPECIFIED, nf_nat_alloc_null_binding, nf_nat_setup_info
from pathtrace.trace import Emitted, PacketContext

# Prefixes the stack tests addresses against by itself (ipv4_is_zeronet/loopback/multicast/lbcast,
# local multicast, the unspecified address, class E, link-local): always class boundaries.
_SPECIAL = ((0, 8), (0, 32), (0x7F000000, 8), (0xE0000000, 4), (0xE0000000, 24), (0xF0000000, 4),
            (0xFFFFFFFF, 32), (0xA9FE0000, 16))
# iptables matches that read an address only against their prefixes, a port only against their
# ranges, or header fields the key holds as they are (-i/-o follow from the ingress and the route).
_SAFE_MATCHES = frozenset({"-s", "-d", "-i", "-o", "-p", "-f", "tcp", "udp", "multiport", "icmp", "state",
                           "conntrack", "comment", "mark", "connmark", "length", "ttl", "tos", "dscp",
                           "pkttype", "addrtype",
                           "limit"})       # reads no field: its bucket is run per packet (MegaEntry.limits)
_SAFE_TARGETS = frozenset({"MASQUERADE", "SNAT", "DNAT", "LOG"})
_MEMO_MAX = 1 << 16
# the NAT range flags _megalane.c implements (not NETMAP)
_LANE_RANGE_FLAGS = (NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED | NF_NAT_RANGE_PROTO_RANDOM
                     | NF_NAT_RANGE_PERSISTENT | NF_NAT_RANGE_PROTO_RANDOM_FULLY | NF_NAT_RANGE_PROTO_OFFSET)
_RECIPE_STATUS = IPS_CONFIRMED | IPS_SRC_NAT | IPS_DST_NAT | IPS_SRC_NAT_DONE | IPS_DST_NAT_DONE
_ports = struct.Struct("!HH").unpack_from
_addrs = struct.Struct("!II").unpack_from


class AddressClasses:
    """The classes of addresses (the longest of the host's prefixes that contains one) and of ports
    (the interval between two of the rules' range boundaries) no decision of the model can split."""

    __slots__ = ("levels", "sbounds", "dbounds", "memo")

    def __init__(self, prefixes: set[tuple[int, int]], sport_bounds: set[int], dport_bounds: set[int]):
        by_len: dict[int, set[int]] = {}
        for net, plen in prefixes:
            by_len.setdefault(plen, set()).add(net & prefix_mask(plen))
        self.levels = [(plen, prefix_mask(plen), frozenset(nets)) for plen, nets in
                       sorted(by_len.items(), reverse=True)]
        self.sbounds = sorted(sport_bounds)
        self.dbounds = sorted(dport_bounds)
        self.memo: dict[int, int] = {}

    def addr(self, a: int) -> int:
        """The class of address `a`: its longest containing prefix as (plen << 32 | network), -1 for none."""
        c = self.memo.get(a)
        if c is None:
            c = -1
            for plen, mask, nets in self.levels:
                if a & mask in nets:
                    c = (plen << 32) | (a & mask)
                    break
            if len(self.memo) >= _MEMO_MAX:
                self.memo.clear()
            self.memo[a] = c
        return c

    def ports(self, sport: int, dport: int) -> tuple[int, int]:
        return bisect_right(self.sbounds, sport), bisect_right(self.dbounds, dport)


@dataclass(slots=True)
class HostView:
    """What the megaflow cache knows of a host: its classes, and for each iptables chain the first
    of its rules' matches that reads the packet otherwise (a path through that chain is not learned)."""

    classes: AddressClasses
    unsafe_chain: dict[int, str]        # id(Chain) -> reason
    chain_of: dict[int, Any]            # id(Rule) -> its Chain


def host_view(net: Any) -> HostView | str:
    """The host's view, or why the megaflow cache cannot be used with it at all."""
    nf = net.nf
    if nf is None or getattr(nf, "conntrack", None) is None:
        return "no conntrack"
    if getattr(nf, "nft", None) is not None and getattr(nf.nft, "tables", None):
        return "nftables ruleset"
    host = net.host
    if getattr(host, "xfrm", None) or getattr(host, "ipsets", None) or getattr(host, "ipset_text", None):
        return "xfrm or ipset configuration"
    prefixes: set[tuple[int, int]] = set(_SPECIAL)
    for table in net.fib_tables.values():
        for plen, nets in table.by_plen.items():
            for dst, aliases in nets.items():
                prefixes.add((dst, plen))
                for fa in aliases:
                    if fa.nexthops:
                        return "multipath route"
                    for a in (fa.gateway, fa.prefsrc):
                        if a:
                            prefixes.add((a, 32))
    for rule in net.fib_rules:
        for p in (rule.src, rule.dst):
            if p is not None:
                prefixes.add(p)
    for dev in net.devices.values():
        for ifa in dev.addrs:
            prefixes.update({(ifa.local, 32), (ifa.address, ifa.prefixlen), (ifa.address, 32)})
            b = getattr(ifa, "broadcast", 0)
            if b:
                prefixes.add((b, 32))
    prefixes.update((a, 32) for a in net.local_addrs)
    # (neighbour entries are not boundaries: a path whose next hop is the packet's own address,
    # the only place the stack looks one up by a packet's address, is not learned)
    bounds: dict[str, set[int]] = {"sport": set(), "dport": set()}
    unsafe: dict[int, str] = {}
    chain_of: dict[int, Any] = {}
    for table in nf.tables.values():
        for chain in table.chains.values():
            for rule in chain.rules:
                chain_of[id(rule)] = chain
                why = _rule_classes(rule, prefixes, bounds)
                if why and id(chain) not in unsafe:
                    unsafe[id(chain)] = why
    return HostView(AddressClasses(prefixes, bounds["sport"], bounds["dport"]), unsafe, chain_of)


def _rule_classes(rule: Any, prefixes: set, bounds: dict[str, set[int]]) -> str | None:
    """Add the rule's prefixes and port boundaries; a reason when one of its matches reads the packet
    otherwise (its later matches are not looked at: the chain is refused as a whole)."""
    for m in rule.checks:
        name, info = m.name, m.info
        if name not in _SAFE_MATCHES:
            return f"match {name}"
        if name in ("-s", "-d"):
            mask = info["mask"]
            plen = bin(mask).count("1")
            if mask != prefix_mask(plen):
                return "non-contiguous address mask"
            prefixes.add((info["addr"], plen))
        elif name in ("tcp", "udp"):
            if "--tcp-option" in rule.text:
                return "match tcp --tcp-option"
            for which in ("sport", "dport"):
                lo, hi, _inv = info[which]
                if (lo, hi) != (0, 65535):
                    bounds[which].update((lo, hi + 1))
        elif name == "multiport":
            which = {"--dports": ("dport",), "--sports": ("sport",)}.get(info["which"], ("sport", "dport"))
            for w in which:
                for lo, hi in info["ranges"]:
                    bounds[w].update((lo, hi + 1))
        elif name == "conntrack" and any(o in rule.text for o in ("--ctorig", "--ctrepl", "--ctexpire")):
            return "match conntrack on tuples or expiry"
    return None


def path_refusal(view: HostView, counted: Any) -> str | None:
    """Why a learned path's rules make it unfit for a megaflow: a chain it went through has a rule that
    reads the packet otherwise, or a rule whose target ran is not one the recipe makes."""
    for obj in counted:
        chain = view.chain_of.get(id(obj))
        if chain is None:               # a chain's own counter: its policy, or the end of a user chain
            chain = obj
        else:
            t = obj.target
            if t.kind == "ext" and t.name not in _SAFE_TARGETS:
                return f"target {t.name}"
        why = view.unsafe_chain.get(id(chain))
        if why is not None:
            return why
    return None


@dataclass(slots=True, eq=False)
class MegaEntry:
    """A learned path: its guards, the state changes to make and its bulk effects (the fields
    FlowCache._flush_entry applies, as for a FlowEntry)."""

    found: bool                         # a packet of a known connection (else the first of a new one)
    ctinfo: int                         # what nf_conntrack_in made of it
    tracker_state: Any                  # the TCP state after the tracker (None: UDP, ICMP)
    status: int                         # the entry's status bits after the packet (known connections)
    recipe: tuple                       # new: ("null", hook, ret) | ("setup", range, manip, masq_index)
    confirm: bool
    neigh_seen: bool
    onlink: bool                        # the next hop is the packet's destination after NAT
    neigh: Any                          # the gateway's entry (onlink: looked up per packet)
    neigh_key: tuple | None
    neigh_sig: tuple
    neigh_touch: bool
    tot_len: int
    counted: tuple
    dev_deltas: tuple
    replayer_deltas: tuple[int, int]
    verdict: str
    reason: str | None
    emitted: list
    ct: Any = None                      # known connections: set, so that flushing adds "found" statistics
    table: Any = None
    prototype: Any = None               # a steady state's FlowEntry: served flows get one like it (promote)
    limits: tuple = ()                  # the `limit` matches the path evaluated and their results, in order
    fast: Any = None
    hits: int = 0
    tallied: int = 0


_NEW = (None,)                          # the key suffix of new connections' entries
LEARN_FOUND = frozenset({"conntrack state changed", "conntrack tracker state", "tcp not established"})
# the replay cache's refusals a megaflow may still be learned on (limit matches: run per packet)
LEARNS = LEARN_FOUND | {"new conntrack entry", "match limit"}


class MegaflowCache:
    """Per-replay megaflow entries; `off` is None when the host allows them, else the reason."""

    def __init__(self, net: Any, flush_entry: Any):
        self.net = net
        self.flush_entry = flush_entry          # FlowCache._flush_entry: applies an entry's pending hits
        view = host_view(net)
        self.off: str | None = view if isinstance(view, str) else None
        self.view: HostView | None = None if self.off else view
        self.classes: AddressClasses | None = None if self.off else view.classes
        self.table = net.nf.conntrack if self.off is None else None
        self.entries: dict[tuple, MegaEntry] = {}
        # nf_conntrack_handle_packet's choice, made once (the learned key holds the protocol)
        self.trackers = {6: nf_conntrack_tcp_packet, 17: nf_conntrack_udp_packet, 1: nf_conntrack_icmp_packet}
        self.ctx = PacketContext(0.0, record=False, emit_frames=False, net=net)   # steps off: stays empty
        self.hits = 0
        self.relearned = 0
        self.served: tuple = (None, None)       # the last known connection served and its next hop
        self.refused: dict[str, int] = {}
        self.reached: set[tuple] = set()                # keys of packets that reached conntrack (learn)
        self.lane_entries: dict[bytes, tuple] = {}      # new connections' entries _megalane.c serves (_lane_plan)
        self._lane: Any = None
        self.lane_served = 0                            # packets the C lane served, in replays released
        self.aborted = 0                                # new connections whose NAT found no free tuple

    def key(self, frame: Frame, dev: Any) -> tuple | None:
        """The megaflow key of a received Ethernet/IPv4 TCP, UDP or ICMP echo frame, None otherwise
        (a known connection's entries add the connection's signature, _found_sig)."""
        if frame.ethertype != 0x0800 or frame.vlan or frame.error is not None:
            return None
        p = frame.payload
        if len(p) < 28 or p[0] != 0x45:
            return None
        proto = p[9]
        c = self.classes
        if proto == 6 or proto == 17:
            ports = c.ports(*_ports(p, 20))
            l4 = p[32:34] if proto == 6 else p[24:26]     # TCP data offset and flags; the UDP length
        elif proto == 1 and (p[20] == 8 or p[20] == 0):
            ports = ()
            l4 = p[20:22]                                  # echo request or reply, its code
        else:
            return None
        saddr, daddr = _addrs(p, 12)
        return (dev.name, frame.ifname, frame.dst_mac, frame.pkt_type, len(p), p[:4], p[6:10], l4,
                c.addr(saddr), c.addr(daddr), ports)

    def _found_sig(self, ct: NfConn, direction: int) -> tuple:
        """What a known connection's path may depend on: the packet's direction, the entry's status,
        marks and TCP state before the packet, MASQUERADE's device, and the classes of both tuples
        (NAT rewrites the packet from them; routing and the next hop follow the rewritten header)."""
        c = self.classes
        o, r = ct.orig, ct.reply
        ports = (c.ports(o.sport, o.dport), c.ports(r.sport, r.dport)) if o.proto != 1 else ()
        return (direction, ct.status, ct.mark, ct.labels, getattr(ct.proto, "state", None), ct.masq_index,
                c.addr(o.src), c.addr(o.dst), c.addr(r.src), c.addr(r.dst), ports)

    # ---- learning -------------------------------------------------------------------------
    def learn(self, frame: Frame, ctx: Any, skb: Any, rec: Any, effects: tuple, prototype: Any = None) -> str | None:
        """Remember the path of a new connection's first packet, or of a known connection's packet that
        changed its state; returns why not, None when learned."""
        why = self._refusal(frame, ctx, skb, rec)
        if why is not None:
            self.refused[why] = self.refused.get(why, 0) + 1
            return why
        learn = ctx.learn
        ct = learn.ct
        n = learn.neigh
        counted, devs, rdeltas = effects
        key = self.key(frame, self.net.devices[rec.ingress])
        if key is None:
            return "no key"
        # a packet with these fields reached nf_conntrack_in (ip_rcv_core's checks read only them; the
        # header checksum is checked apart): serve() may run the table's gc for one, as the model would
        self.reached.add(key)
        found = learn.ct_found
        if found:
            status0, mark0, labels0, state0 = learn.ct_sig
            key += (learn.ct_dir, status0, mark0, labels0, state0) + self._found_sig(ct, learn.ct_dir)[5:]
        else:
            key += _NEW
        if len(self.entries) >= _MEMO_MAX:      # bounded memory: apply every entry's hits, start again
            for e in self.entries.values():
                self.flush_entry(e)
            self.entries.clear()
            self.lane_entries.clear()
            self.reached.clear()
        old = self.entries.get(key)
        if old is not None:                     # learned again (a timer was due, a guard failed): its
            self.flush_entry(old)               # hits so far stay counted
            self.relearned += 1
        e = self.entries[key] = MegaEntry(
            found=found, ctinfo=skb.ctinfo,
            tracker_state=getattr(ct.proto, "state", None), status=ct.status,
            recipe=tuple(learn.recipe), confirm=bool(ct.status & IPS_CONFIRMED) and not found,
            neigh_seen=learn.neigh_seen, onlink=n is not None and n.addr == _out_daddr(ct, learn.ct_dir),
            neigh=n, neigh_key=(n.addr, n.dev) if n is not None else None, neigh_sig=learn.neigh_sig,
            neigh_touch=n is not None and learn.neigh_sig[1] and learn.neigh_sig[0] in NUD_CONNECTED,
            tot_len=struct.unpack_from("!H", frame.payload, 2)[0], counted=counted, dev_deltas=devs,
            replayer_deltas=rdeltas, verdict=rec.verdict, reason=rec.reason,
            emitted=[Emitted(o.dev, b"", "", o.kind) for o in rec.emitted],
            ct=ct if found else None, table=self.table, prototype=prototype, limits=tuple(learn.limits))
        lane_key = None if found else self.lane_key(rec.ingress, frame)     # the lane serves new connections
        if lane_key is not None:
            if _lane_fit(e, frame):
                self.lane_entries[lane_key] = _lane_plan(e)
            else:
                self.lane_entries.pop(lane_key, None)
        return None

    # ---- the C lane (_megalane.c) ---------------------------------------------------------
    def lane_key(self, dev_name: str, frame: Frame) -> bytes | None:
        """The key _megalane.c computes from an Ethernet record of a pcap or pcapng: what `key` holds for
        such a frame (no packet type, no VLAN; a pcapng interface's name or none), as bytes; None for
        other frames."""
        p = frame.payload
        if (frame.pkt_type is not None or frame.vlan or frame.error is not None
                or frame.ethertype != 0x0800 or frame.dst_mac is None or len(p) < 28 or p[9] not in (1, 6, 17)
                or (p[9] == 6 and len(p) < 40)):
            return None
        c = self.classes
        sclass, dclass = (c.addr(a) for a in _addrs(p, 12))
        pclass = c.ports(*_ports(p, 20)) if p[9] != 1 else (0, 0)
        l4 = p[32:34] if p[9] == 6 else p[24:26] if p[9] == 17 else p[20:22]   # TCP offset and flags, UDP
        return b"".join((dev_name.encode(), b"\0", (frame.ifname or "").encode(), b"\0",   # length, ICMP type
                         bytes(frame.dst_mac), len(p).to_bytes(4, "big"), bytes(p[:4]), bytes(p[6:10]), bytes(l4),
                         sclass.to_bytes(8, "big", signed=True), dclass.to_bytes(8, "big", signed=True),
                         pclass[0].to_bytes(2, "big"), pclass[1].to_bytes(2, "big")))

    def lane(self, accel: Any, replayer: Any) -> Any:
        """The C lane's view of this cache (accel.MegaLane), made once per replay; None when the
        accelerator has none or the cache is off."""
        if self.off is not None or accel is None or not hasattr(accel, "MegaLane"):
            return None
        if self._lane is None:
            net = replayer.net
            ingress = replayer.options.ingress
            self._lane = accel.MegaLane(
                mega=self, entries=self.lane_entries, memo=self.classes.memo, levels=self.classes.levels,
                sbounds=self.classes.sbounds, dbounds=self.classes.dbounds, table=self.table,
                neigh_entries=net.neigh.entries,
                by_mac={bytes(mac): dev.name for mac, dev in net.by_mac.items() if mac is not None},
                devnames={name.encode(): name for name in net.devices},
                default_dev=replayer.default_dev.name, forced_dev=net.devices[ingress].name if ingress else None,
                abort=self.abort, ct_proto=_ct_prototype(self.table), ct_slots=NfConn.__slots__,
                st_proto=TcpState(), st_slots=TcpState.__slots__, seen_proto=TcpSeen(), seen_slots=TcpSeen.__slots__,
                udp_proto=UdpState(), udp_slots=UdpState.__slots__,
                tuple_type=Tuple, syn_sent=SYN_SENT, syn_set=SYN_SET, gc_interval=GC_INTERVAL)
            self.table.gc_track = accel.track
        return self._lane

    def release(self) -> None:
        """The replay is over: the entries the C lane made (not tracked by the cyclic collector while
        in the table, see _megalane.c), the hash's tuples and the by-source lists that hold them are
        tracked again."""
        table = self.table
        if self._lane is not None and table.gc_track is not None:
            table.gc_track(table.conns.values())
            table.gc_track(table.hash.values())
            table.gc_track(table.bysource.values())
            table.gc_track = None
        if self._lane is not None:
            self.lane_served += self._lane.served
            self._lane = None

    def abort(self, draws: tuple[int, ...]) -> None:
        """A new connection's NAT search found no free tuple, so its confirmation would clash: the
        model decides (the kernel drops it, or merges a UDP entry), and must draw the port search's
        random numbers the megaflow's run drew (its other work is undone by dropping the entry)."""
        self.aborted += 1
        if draws:
            self.table.rng = _DrawReplay(self.table, self.table.rng, draws)

    def _refusal(self, frame: Frame, ctx: Any, skb: Any, rec: Any) -> str | None:
        if self.off is not None:
            return self.off
        if self.net.tcp_conns:
            return "local TCP sockets"
        learn = ctx.learn
        ct = learn.ct
        if ct is None:
            return "no conntrack entry"
        why = path_refusal(self.view, ctx.counted or ())
        if why is not None:
            return why
        if skb.ct is not ct:
            return "conntrack entry dropped on the way"
        p = frame.payload
        if learn.ct_found:
            if learn.recipe:
                return "NAT binding of a known connection"
            if ct.status & IPS_DYING or not ct.status & IPS_CONFIRMED:
                return "connection ended"
            if skb.ctinfo not in (IP_CT_NEW, IP_CT_ESTABLISHED, IP_CT_ESTABLISHED_REPLY):
                return "related packet"
        else:
            if ct.status & ~_RECIPE_STATUS:
                return "conntrack status"        # a bit the tracker or a target set: not made by the recipe
            if p[9] == 1 and p[20] != 8:
                return "not an echo request"
            for op in learn.recipe:
                if op[0] == "null":
                    if op[2] != NF_ACCEPT:
                        return "null binding refused"
                elif op[2] == NF_NAT_MANIP_DST:
                    rng = op[1]
                    if rng.min_addr != rng.max_addr or (rng.flags & NF_NAT_RANGE_PROTO_SPECIFIED
                                                        and rng.min_proto != rng.max_proto):
                        return "DNAT to a range"
            if rec.verdict == "FORWARD" and not ct.status & IPS_CONFIRMED:
                return "forwarded without confirmation"
        from pathtrace.flowcache import neighbour_refusal
        return neighbour_refusal(learn)

    # ---- serving --------------------------------------------------------------------------
    def serve(self, frame: Frame, dev: Any, now: float) -> MegaEntry | None:
        """Run this frame's connection state as its megaflow's path does and count the hit; None (nothing
        shared changed) when the frame has no megaflow or a guard fails: then it runs the model."""
        key = self.key(frame, dev)
        if key is None or self.net.tcp_conns or key not in self.reached:
            return None         # (before the gc below: the model runs it only for packets that reach conntrack)
        p = frame.payload
        if int.from_bytes(p[:20], "big") % 0xFFFF:
            return None                                  # ip_rcv_core: bad header checksum
        table = self.table
        if type(table.rng) is _DrawReplay:
            return None                                  # the model runs an aborted packet (abort)
        table.now = now
        table.gc(now)                                    # as nf_conntrack_in does first
        saddr, daddr = _addrs(p, 12)
        proto = p[9]
        tot_len = struct.unpack_from("!H", p, 2)[0]
        payload = bytearray(p[20:tot_len])
        t = _l4_tuple(saddr, daddr, proto, payload, 0)
        if t is None:
            return None
        ctx = self.ctx
        ctx.now = now
        skb = SkBuff(ctx=ctx, dev=dev, iif=dev, tstamp=now, payload=payload)
        skb.iph = Iphdr(4, 5, p[1], tot_len, 0, 0, p[8], proto, 0, saddr, daddr)
        if proto == 1:                                   # nf_conntrack_in checks ICMP before the lookup
            if nf_conntrack_icmpv4_error(table, skb, NF_INET_PRE_ROUTING) != NF_ACCEPT or skb.ct is not None:
                return None
        hit = table.find(t, now)
        if hit is None:
            e = self.entries.get(key + _NEW)
            return None if e is None else self._serve_new(e, t, skb, now)
        ct, direction = hit
        e = self.entries.get(key + self._found_sig(ct, direction))
        return None if e is None else self._serve_found(e, ct, direction, skb, now, p)

    def _neighbour(self, e: MegaEntry, nexthop: int) -> Any:
        """The next hop's entry when it is as learned (None: no next hop on the path), False otherwise.
        A learned on-link next hop is the packet's own (rewritten) destination, looked up here; its
        link-layer address only goes into the frame's bytes, which counts-only replays do not build."""
        if not e.neigh_seen:
            return None
        state, hh, lladdr, timer = e.neigh_sig
        if e.onlink:
            n = self.net.neigh.entries.get((nexthop, e.neigh_key[1]))
            if n is None or n.state != state or n.hh_cached != hh or n.timer != timer:
                return False
            return n
        n = e.neigh
        if (n.state != state or n.hh_cached != hh or n.lladdr != lladdr or n.timer != timer
                or self.net.neigh.entries.get(e.neigh_key) is not n):
            return False
        return n

    def _serve_new(self, e: MegaEntry, t: Any, skb: SkBuff, now: float) -> MegaEntry | None:
        table = self.table
        out = next((op[1].min_addr for op in e.recipe if op[0] == "setup" and op[2] == NF_NAT_MANIP_DST), t.dst)
        n = self._neighbour(e, out)
        if n is False:
            return None
        reply = nf_ct_invert_tuple(t)
        if reply is None:
            return None
        limit = table.sysctl["nf_conntrack_max"]
        if limit and len(table.conns) >= limit:
            return None                                  # __nf_conntrack_alloc at the limit: the model decides
        proto = t.proto
        ct = NfConn(orig=t, reply=reply, table=table)
        if (self.trackers[proto](table, ct, skb, IP_CT_NEW, NF_INET_PRE_ROUTING) != NF_ACCEPT
                or getattr(ct.proto, "state", None) != e.tracker_state or ct.status):
            return None
        if e.limits and not _limits_pass(e.limits, skb):
            return None
        # from here on the path is the learned one: shared state changes as the model makes them
        skb.ct, skb.ctinfo = ct, IP_CT_NEW
        rng = table.rng
        log = table.rng = _DrawLog(rng)
        try:
            for op in e.recipe:
                if op[0] == "null":
                    nf_nat_alloc_null_binding(ct, op[1])
                else:
                    ct.masq_index = op[3]
                    nf_nat_setup_info(ct, op[1], op[2])
        finally:
            table.rng = rng
        if e.confirm and (table.find(ct.orig, now) or table.find(ct.reply, now)):
            self.abort(tuple(log.draws))                 # no free tuple: the model decides
            return None
        if e.confirm and nf_conntrack_confirm(table, skb) != NF_ACCEPT:
            raise RuntimeError("megaflow: a confirmation the learned path passed failed")   # pragma: no cover
        return self._hit(e, n, now)

    def _serve_found(self, e: MegaEntry, ct: NfConn, direction: int, skb: SkBuff, now: float,
                     p: bytes) -> MegaEntry | None:
        n = self._neighbour(e, _out_daddr(ct, direction))
        if n is False:
            return None
        st = ct.proto
        if p[9] == 6 and p[33] & 0x02 and getattr(st, "state", 0) >= TIME_WAIT:
            return None         # a SYN may reopen a closed connection (kill + repeat): not undoable
        saved = (ct.status, ct.timeout, _snapshot(st))
        ret = self.trackers[ct.orig.proto](self.table, ct, skb, e.ctinfo, NF_INET_PRE_ROUTING)
        if ret == NF_ACCEPT and e.ctinfo == IP_CT_ESTABLISHED_REPLY:
            ct.status |= IPS_SEEN_REPLY                  # nf_conntrack_in, after the tracker
        if ret != NF_ACCEPT or ct.status != e.status or getattr(st, "state", None) != e.tracker_state \
                or ct.proto is not st or (e.limits and not _limits_pass(e.limits, skb)):
            # the tracker took another turn than the learned packet's: undo it, the model runs instead
            ct.status, ct.timeout = saved[0], saved[1]
            ct.proto = st
            _restore(st, saved[2])
            return None
        self.served = (ct, n)
        return self._hit(e, n, now)

    def _hit(self, e: MegaEntry, n: Any, now: float) -> MegaEntry:
        if e.neigh_touch:
            n.updated = now
        e.hits += 1
        self.hits += 1
        return e


class _DrawLog:
    """The table's RNG while the megaflow makes a new connection's NAT bindings: the draws it made."""

    __slots__ = ("rng", "draws")

    def __init__(self, rng: Any):
        self.rng = rng
        self.draws: list[int] = []

    def getrandbits(self, k: int) -> int:
        v = self.rng.getrandbits(k)
        self.draws.append(v)
        return v


class _DrawReplay:
    """The table's RNG after an aborted new connection (MegaflowCache.abort): the model's run of that
    packet gets the draws the megaflow made, then the RNG itself is back in place."""

    __slots__ = ("table", "rng", "draws")

    def __init__(self, table: Any, rng: Any, draws: tuple[int, ...]):
        self.table, self.rng, self.draws = table, rng, list(reversed(draws))

    def getrandbits(self, k: int) -> int:
        v = self.draws.pop()
        if not self.draws:
            self.table.rng = self.rng
        return v

    def __getattr__(self, name: str) -> Any:      # the rest of random.Random (e.g. getstate) is the RNG's
        return getattr(self.rng, name)


def _limits_pass(limits: tuple, skb: Any) -> bool:
    """Run the path's `limit` matches for this packet, in the learned order: True when each gives the
    learned result (their buckets then moved as the model's run moves them), else False with every
    bucket as it was (the model runs the packet instead)."""
    saved = []
    for m, result in limits:
        st = m.info
        saved.append((st, st.prev, st.credit))
        if m.check(skb, None) != result:
            for st, prev, credit in reversed(saved):
                st.prev, st.credit = prev, credit
            return False
    return True


def _lane_fit(e: MegaEntry, frame: Frame) -> bool:
    """Whether _megalane.c makes this entry's state changes: a new connection's first packet, a pure
    SYN (TCP flags SYN, and ECE, CWR or PSH at most) that the tracker took to SYN_SENT, a UDP datagram
    or an echo request, whose NAT bindings are to single addresses (a range of addresses hashes the
    source: left to the model) and whose path needs no promotion."""
    p = frame.payload
    if e.found or e.prototype is not None or e.limits:
        return False
    if p[9] == 6 and (e.tracker_state != SYN_SENT or (p[33] & ~0xC8) != 0x02) or p[9] == 1 and p[20] != 8:
        return False
    for op in e.recipe:
        if op[0] == "null":
            if op[2] != NF_ACCEPT:
                return False
        else:
            rng = op[1]
            if rng.flags & ~_LANE_RANGE_FLAGS or (rng.flags & NF_NAT_RANGE_MAP_IPS and rng.min_addr != rng.max_addr):
                return False
    return len(e.recipe) <= 4


def _lane_plan(e: MegaEntry) -> tuple:
    """What _megalane.c reads of an entry, laid out for C: (entry, NAT ops, confirm, neigh_seen, onlink,
    neigh, neigh_key, neigh_sig, neigh_touch); an op is (is_null, manip, flags, min_addr, max_addr,
    min_proto, max_proto, base_proto, masq_index) - a null binding's range is made per packet."""
    ops = []
    for op in e.recipe:
        if op[0] == "null":
            ops.append((1, hook2manip(op[1]), 0, 0, 0, 0, 0, 0, 0))
        else:
            rng = op[1]
            ops.append((0, op[2], rng.flags, rng.min_addr, rng.max_addr, rng.min_proto, rng.max_proto,
                        rng.base_proto, op[3]))
    return (e, tuple(ops), e.confirm, e.neigh_seen, e.onlink, e.neigh, e.neigh_key, e.neigh_sig, e.neigh_touch)


def _ct_prototype(table: Any) -> NfConn:
    """A new entry as NfConn's constructor makes one in `table`: _megalane.c copies its fields."""
    t = Tuple(0, 0, 6, 0, 0)
    return NfConn(orig=t, reply=t, table=table)


def _out_daddr(ct: NfConn, direction: int) -> int:
    """The destination of a packet of `ct` in `direction` once NAT has rewritten it: the source of the
    other direction's tuple."""
    return ct.reply.src if direction == 0 else ct.orig.src


def _snapshot(st: Any) -> tuple | None:
    """The tracker state's fields (and its per-direction TcpSeen's), to undo a tracker run."""
    if st is None:
        return None
    seen = getattr(st, "seen", None)
    return (tuple(getattr(st, f) for f in st.__slots__),
            tuple(tuple(getattr(s, f) for f in s.__slots__) for s in seen) if seen else None)


def _restore(st: Any, snap: tuple | None) -> None:
    if st is None or snap is None:
        return
    for f, v in zip(st.__slots__, snap[0]):
        setattr(st, f, v)
    if snap[1] is not None:
        for s, vals in zip(st.seen, snap[1]):
            for f, v in zip(s.__slots__, vals):
                setattr(s, f, v)
