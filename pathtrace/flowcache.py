"""The replay decision cache: reuse a flow's path for the packets that cannot take another.

Not a kernel feature (the kernel has no route or flow cache since 4.x): a memo of the
model, invisible in its output.  The first packet of a flow in a given state runs the
whole model with `ctx.learn` set; the model reports what the path depended on besides
the packet's headers (the conntrack entry and its state, the neighbour entry) and what
it changed (counters, timeouts, window tracking, bytes rewritten).  A later packet with
the same headers - every field a decision can read: MACs, ingress, IP header but ID and
checksum, ports, TCP flags, lengths - and with those objects unchanged gets the same
path without running the model; per-packet work that the kernel repeats for every
packet (checksum verification, TCP window tracking, timeout refresh, counters) is
re-done here with the model's own functions.  That includes flows that never get a reply:
TCP picked up mid-stream ([UNREPLIED], liberal window tracking: out-of-window segments are
accepted unchanged, the refresh is held to the unacknowledged timeout), one-way UDP and
ICMP queries (echo requests with or without replies: keyed on type, code and id, not on the
sequence number, which renderers' per-flow templates take as a per-packet value).

Anything that could make the next packet differ makes a path uncacheable: rate limits
(ICMP, limit, hashlimit), packet-counting matches (statistic, quota, recent, connbytes,
connlimit, time), fragments, IP options, local delivery, new conntrack entries or any
state change of the entry or of the neighbour.  `pathtrace replay --no-cache` turns it
off; tests replay captures both ways and compare every record.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field, replace
from typing import Any

try:   # the optional C accelerator (pathtrace/_fastpath.c): the same hot path, built by setup.py
    from pathtrace import _fastpath
except ImportError:  # pragma: no cover - no compiler at install time
    _fastpath = None

from pathtrace.capture.frame import Frame
from pathtrace.megaflow import LEARNS as _MEGA_LEARNS, MegaflowCache
from pathtrace.net.core.neighbour import NUD_CONNECTED
from pathtrace.net.core.skbuff import Iphdr, SkBuff
from pathtrace.net.netfilter.nf_conntrack_core import GC_INTERVAL
from pathtrace.net.netfilter.nf_conntrack_proto_tcp import (
    ACK_SET, FLAG_BE_LIBERAL, FLAG_SACK_PERM, _sack, _Th, _window_test, tcp_timeout, tcp_window_update,
)
from pathtrace.trace import Emitted, PacketContext, PacketRecord, Step

_IPS_SEEN_REPLY = 1 << 1
_IPS_ASSURED = 1 << 2
_IPS_FIXED_TIMEOUT = 1 << 10
_ESTABLISHED = 3          # TCP_CONNTRACK_ESTABLISHED
_TCP_FIELDS = struct.Struct("!IIBBH").unpack_from     # seq, ack_seq, doff, flags, window
_NO_DETAIL: dict = {}
_MAX_ENTRIES = 65536      # the cache is cleared when it grows past this (memory stays flat)
_TRACKER_STEPS = {"tcp": "nf_conntrack_tcp_packet", "udp": "nf_conntrack_udp_packet",
                  "icmp": "nf_conntrack_icmp_packet"}
_KINDS = {"udp": 1, "tcp": 2, "icmp": 3}      # _fastpath.c's K_UDP, K_TCP, K_ICMP


@dataclass(slots=True)
class Learning:
    """What the model reports while it runs a packet the cache may remember (ctx.learn)."""

    nocache: str | None = None
    ct: Any = None
    ct_dir: int = 0
    ct_found: bool = False
    ct_sig: tuple = ()
    tracker: str | None = None          # "tcp" (ESTABLISHED ack) | "udp" | "icmp", set by the trackers
    neigh: Any = None
    neigh_seen: bool = False
    neigh_sig: tuple = ()
    mangle: list[tuple] = field(default_factory=list)
    recipe: list[tuple] = field(default_factory=list)   # NAT bindings made, in order (pathtrace/megaflow.py)
    limits: list[tuple] = field(default_factory=list)   # `limit` matches evaluated and their results, in order

    def conntrack(self, ct: Any, direction: int, ctinfo: int, found: bool) -> None:
        if self.ct is not None:
            self.nocache = "conntrack ran twice"
        self.ct, self.ct_dir, self.ct_found = ct, direction, found
        self.ct_sig = _ct_sig(ct)

    def neighbour(self, n: Any) -> None:
        if self.neigh_seen:
            self.nocache = "two neighbours"
        self.neigh_seen = True
        self.neigh = n
        self.neigh_sig = _neigh_sig(n) if n is not None else ()


def _ct_sig(ct: Any) -> tuple:
    st = ct.proto
    return ct.status, ct.mark, ct.labels, getattr(st, "state", None)


def _neigh_sig(n: Any) -> tuple:
    return n.state, n.hh_cached, n.lladdr, n.timer


@dataclass(slots=True, eq=False)
class FlowEntry:
    """One remembered path: its guards, its effects and the record it produces."""

    ct: Any
    ct_dir: int
    ct_sig: tuple
    tracker: str | None
    table: Any                          # ConntrackTable
    check_l4: bool
    hlen: int
    tot_len: int
    proto: int
    neigh: Any
    neigh_key: tuple | None
    neigh_sig: tuple
    neigh_touch: bool                   # the path set neigh.updated = now
    counted: tuple                      # Rule / Chain objects whose counters the path bumped
    dev_deltas: tuple                   # (device, rx, rx_dropped, tx, tx_bytes)
    replayer_deltas: tuple[int, int]    # otherhost_drops, readdressed
    verdict: str
    reason: str | None
    egress: str | None
    ingress: str
    rules: list
    warnings: list
    emitted: list
    steps: list | None
    tracker_step: int                   # index of the tracker's step in `steps` (-1: none)
    l2_out: bytes
    mangle: tuple
    emit_kind: str = "forwarded"
    emit_dev: str = ""
    hits: int = 0                       # cached replays whose counters are not yet applied (flush)
    tallied: int = 0                    # of those, replays counted here instead of by a record (tally)
    fast: Any = None                    # the compiled guards + per-packet work (_compile)
    render: Any = None                  # renderers' cache for this entry's records (render/jsonl.py's template)
    bytes_known: bool = True            # False: made from another flow's entry (promote); counts only


class FlowCache:
    """Per-replay memo of paths, keyed by everything a decision can read from a frame."""

    def __init__(self, replayer: Any):
        self.replayer = replayer
        self.net = replayer.net
        self.entries: dict[tuple, FlowEntry] = {}
        self.hits = 0
        self.misses = 0
        self.refused: dict[str, int] = {}
        self.tallied: dict[tuple, int] = {}     # (verdict, reason, emitted kinds) -> packets, for summaries
        nf = self.net.nf
        self.table = getattr(nf, "conntrack", None) if nf is not None else None
        # PATHTRACE_PURE_PYTHON=1 runs the Python closures instead of the C accelerator (same output)
        self.accel = None if os.environ.get("PATHTRACE_PURE_PYTHON") == "1" else _fastpath
        # new connections' paths across flows (counts-only replays); PATHTRACE_MEGAFLOW=0 turns it off
        self.mega = MegaflowCache(self.net, self._flush_entry) if self.table is not None and \
            os.environ.get("PATHTRACE_MEGAFLOW") != "0" else None

    # ---- lookup ---------------------------------------------------------------------------
    def key(self, frame: Frame, dev: Any) -> bytes | tuple | None:
        """The cache key of an Ethernet/IPv4 frame, None when the cache does not apply.

        For an Ethernet frame (both MACs, no packet type) the key is bytes - the pcapng
        interface name, if any, then the fixed-length rest - built the same way by the C lanes
        (_fastpath.serve_pcap, serve_pcapng) from the raw record: the ingress is then a
        function of the interface name and the destination MAC (Replayer.choose_ingress)."""
        if frame.ethertype != 0x0800 or frame.vlan or frame.error is not None:
            return None
        p = frame.payload
        if len(p) < 20 or p[0] != 0x45:
            return None
        proto = p[9]
        if proto == 6:
            l4 = p[20:24] + p[32:34]
        elif proto == 17:
            l4 = p[20:26]
        elif proto == 1 and len(p) >= 28:
            l4 = p[20:22] + p[24:26] + b"\0\0"    # type, code, id: not the checksum, sequence or data
        else:
            return None
        head = p[:4] + p[6:10] + p[12:20] + l4
        if frame.pkt_type is None and frame.dst_mac is not None and frame.src_mac is not None:
            name = frame.ifname.encode() if frame.ifname else b""
            return name + frame.dst_mac + frame.src_mac + head + len(p).to_bytes(4, "big")
        return (dev.name, frame.ifname, frame.dst_mac, frame.src_mac, frame.pkt_type, len(p), head)

    def serve(self, key: tuple, frame: Frame, now: float) -> tuple[FlowEntry | None, dict | None]:
        """The entry whose path this frame takes - guards passed, per-packet work done, the hit
        counted for the bulk effects - and its tracker step's detail; (None, None) otherwise."""
        e = self.entries.get(key)
        if e is None:
            return None, None
        detail = e.fast(frame.payload, now)
        if detail is None:
            return None, None
        e.hits += 1
        if e.neigh_touch:
            e.neigh.updated = now
        return e, detail

    def replay(self, key: tuple, frame: Frame, now: float, record: bool, emit: bool) -> PacketRecord | None:
        """The cached path of this frame as its record, or None when it must run the model."""
        if (record or emit) and key in self.entries and not self.entries[key].bytes_known:
            return None                 # a promoted entry has no path or bytes: the model runs, learns it
        e, detail = self.serve(key, frame, now)
        if e is None:
            return None
        if record or emit:
            return self._record(e, frame, detail, record, emit)
        return PacketRecord(frame.index, frame.ts, e.ingress, "", e.verdict, e.reason, e.egress, [], e.emitted,
                            list(e.warnings) if e.warnings else [], e.rules)

    def _rewrite(self, payload: bytes, hlen: int, tot_len: int, mangle: tuple) -> bytes:
        """rewrite(), by the C accelerator when it is built (checked against the model's own
        bytes when each entry is learned, in finish)."""
        accel = self.accel
        return accel.rewrite(payload, hlen, tot_len, mangle) if accel is not None else rewrite(payload, hlen, tot_len, mangle)

    def flush(self) -> None:
        """Apply the effects that accumulate linearly (counters) of every hit so far."""
        for e in self.entries.values():
            self._flush_entry(e)
        if self.mega is not None:
            for m in self.mega.entries.values():
                self._flush_entry(m)

    def _flush_entry(self, e: FlowEntry) -> None:
        if self.accel is not None and isinstance(e.fast, self.accel.FastEntry):
            served = e.fast.take_tallied()      # hits served by _fastpath.serve_pcap
            e.hits += served
            e.tallied += served
        hits = e.hits
        if not hits:
            return
        e.hits = 0
        if e.tallied:
            what = (e.verdict, e.reason, tuple((x.dev, x.kind) for x in e.emitted))
            self.tallied[what] = self.tallied.get(what, 0) + e.tallied
            e.tallied = 0
        self.hits += hits
        length = e.tot_len
        for c in e.counted:
            c.pkts += hits
            c.bytes += hits * length
        for dev, rx, rxd, tx, txb in e.dev_deltas:
            dev.rx_packets += rx * hits
            dev.rx_dropped += rxd * hits
            dev.tx_packets += tx * hits
            dev.tx_bytes += txb * hits
        if e.ct is not None:
            e.table.stats["found"] += hits
        r = self.replayer
        r.otherhost_drops += e.replayer_deltas[0] * hits
        r.readdressed += e.replayer_deltas[1] * hits

    def _record(self, e: FlowEntry, frame: Frame, tracker_detail: dict | None, record: bool,
                emit: bool) -> PacketRecord:
        steps: list = []
        if record and e.steps is not None:
            steps = list(e.steps)
            if e.tracker_step >= 0:
                old = steps[e.tracker_step]
                steps[e.tracker_step] = Step(old.fn, old.depth, tracker_detail)
        emitted = e.emitted
        if emit and e.emitted:
            emitted = [Emitted(e.emit_dev, e.l2_out + self._rewrite(frame.payload, e.hlen, e.tot_len, e.mangle), "",
                               e.emit_kind)]
        return PacketRecord(frame.index, frame.ts, e.ingress, "", e.verdict, e.reason, e.egress, steps, emitted,
                            list(e.warnings), e.rules, e)

    # ---- learning -------------------------------------------------------------------------
    def begin(self, ctx: PacketContext) -> dict:
        """Arm ctx for learning; returns the counters the effects are measured against."""
        ctx.learn = Learning()
        ctx.counted = []
        r = self.replayer
        return {"devs": [(d, d.rx_packets, d.rx_dropped, d.tx_packets, d.tx_bytes) for d in self.net.devices.values()],
                "r": (r.otherhost_drops, r.readdressed)}

    def finish(self, key: tuple, frame: Frame, ctx: PacketContext, skb: SkBuff, rec: PacketRecord,
               before: dict) -> None:
        """Remember the path when nothing it did depends on more than the key and the guarded state;
        the first packet of a new connection may give a megaflow instead (pathtrace/megaflow.py)."""
        why = self._refusal(ctx, skb, rec, frame)
        if why in _MEGA_LEARNS and self.mega is not None and self.mega.off is None:
            if self.mega.learn(frame, ctx, skb, rec, self._effects(ctx, before)) is None:
                why += " (megaflow learned)"
        if why is not None:
            self.refused[why] = self.refused.get(why, 0) + 1
            return
        learn = ctx.learn
        p = frame.payload
        hlen = (p[0] & 0x0F) * 4
        tot_len = struct.unpack_from("!H", p, 2)[0]
        emitted = rec.emitted
        l2_out, emit_dev, emit_kind = b"", "", "forwarded"
        mangle = tuple(learn.mangle)
        if emitted:
            out = emitted[0]
            emit_dev, emit_kind = out.dev, out.kind
            if ctx.emit_frames:
                l2_out = out.frame[:14]
                if out.frame[14:] != self._rewrite(p, hlen, tot_len, mangle):
                    self.refused["bytes not reproduced"] = self.refused.get("bytes not reproduced", 0) + 1
                    return
        n = learn.neigh
        tracker_step = -1
        if rec.path:
            fn = _TRACKER_STEPS.get(learn.tracker or "")
            tracker_step = next((i for i, s in enumerate(rec.path) if s.fn == fn), -1)
        counted, devs, rdeltas = self._effects(ctx, before)
        table = self.table
        self._make_room(key)
        entry = self.entries[key] = FlowEntry(
            ct=learn.ct, ct_dir=learn.ct_dir, ct_sig=learn.ct_sig, tracker=learn.tracker, table=table,
            check_l4=bool(table is not None and table.sysctl["nf_conntrack_checksum"]),
            hlen=hlen, tot_len=tot_len, proto=p[9],
            neigh=n, neigh_key=(n.addr, n.dev) if n is not None else None, neigh_sig=learn.neigh_sig,
            neigh_touch=n is not None and learn.neigh_sig[1] and learn.neigh_sig[0] in NUD_CONNECTED,
            counted=counted, dev_deltas=devs, replayer_deltas=rdeltas,
            verdict=rec.verdict, reason=rec.reason, egress=rec.egress, ingress=rec.ingress, rules=rec.rules,
            warnings=list(rec.warnings), emitted=[Emitted(out.dev, b"", "", out.kind) for out in emitted],
            steps=list(rec.path) if rec.path else None, tracker_step=tracker_step,
            l2_out=l2_out, mangle=mangle, emit_kind=emit_kind, emit_dev=emit_dev)
        entry.fast = _compile(entry, self.net.neigh.entries, self.accel)
        if learn.ct_found and self.mega is not None and self.mega.off is None:
            # other flows' first packets in this steady state: the megaflow's, then an entry of their own
            self.mega.learn(frame, ctx, skb, rec, (entry.counted, entry.dev_deltas, entry.replayer_deltas),
                            prototype=entry)

    def promote(self, key: tuple, m: Any, ct: Any, n: Any) -> None:
        """After a megaflow served a packet of a known connection in a steady state (m.prototype: the
        entry another flow learned in it), this flow's own entry, made from the prototype with this
        flow's conntrack entry and next hop: its next packets take the replay cache's (and the C lane's)
        path.  It serves counts only (no path steps, no bytes: bytes_known False)."""
        proto = m.prototype
        self._make_room(key)
        if n is None or not m.onlink:
            n = proto.neigh
        entry = self.entries[key] = replace(
            proto, ct=ct, ct_sig=_ct_sig(ct), neigh=n, neigh_key=(n.addr, n.dev) if n is not None else None,
            neigh_sig=_neigh_sig(n) if n is not None else (), steps=None, tracker_step=-1, l2_out=b"", mangle=(),
            hits=0, tallied=0, fast=None, render=None, bytes_known=False)
        entry.fast = _compile(entry, self.net.neigh.entries, self.accel)

    def _make_room(self, key: tuple) -> None:
        """Before an entry is stored under `key`: the one it replaces has its pending counts applied;
        past _MAX_ENTRIES every entry's are, and the cache starts again (memory stays flat)."""
        if len(self.entries) >= _MAX_ENTRIES:
            self.flush()
            self.entries.clear()
        old = self.entries.get(key)
        if old is not None:
            self._flush_entry(old)

    def drop_promoted(self) -> None:
        """Forget the promoted entries (the replay now needs every frame's bytes), their counts applied."""
        for key in [k for k, e in self.entries.items() if not e.bytes_known]:
            self._flush_entry(self.entries.pop(key))

    def _effects(self, ctx: PacketContext, before: dict) -> tuple[tuple, tuple, tuple[int, int]]:
        """What the learning run added that later packets of the path add again: the x_tables counters
        it bumped, each device's counter deltas, the replayer's own counters."""
        devs = tuple((d, d.rx_packets - rx, d.rx_dropped - rxd, d.tx_packets - tx, d.tx_bytes - txb)
                     for d, rx, rxd, tx, txb in before["devs"]
                     if (d.rx_packets - rx, d.rx_dropped - rxd, d.tx_packets - tx, d.tx_bytes - txb) != (0, 0, 0, 0))
        r = self.replayer
        return tuple(ctx.counted or ()), devs, (r.otherhost_drops - before["r"][0], r.readdressed - before["r"][1])

    def _refusal(self, ctx: PacketContext, skb: SkBuff, rec: PacketRecord, frame: Frame) -> str | None:
        learn = ctx.learn
        if learn.nocache:
            return learn.nocache
        if rec.verdict not in ("FORWARD", "DROP"):
            return f"verdict {rec.verdict}"
        if len(rec.emitted) > 1 or any(e.kind != "forwarded" for e in rec.emitted):
            return "frames built by the host"
        if any(s.depth for s in rec.path):
            return "nested packets"
        p = frame.payload
        if struct.unpack_from("!H", p, 2)[0] > len(p) or (p[0] & 0x0F) != 5:
            return "malformed or options"
        if rec.verdict == "DROP" and skb.iph is None:
            return "dropped before the IP header was accepted"
        ct = learn.ct
        if self.table is not None and ct is None and skb.ct is None and skb.iph is not None:
            # conntrack loaded but the packet has no entry (untracked, or the table was not reached)
            if skb.ctinfo != 7:
                return "no conntrack entry"
        if ct is not None:
            if not learn.ct_found:
                return "new conntrack entry"
            if _ct_sig(ct) != learn.ct_sig:
                return "conntrack state changed"
            if learn.tracker is None:
                return "conntrack tracker state"
            if learn.tracker == "tcp" and learn.ct_sig[3] != _ESTABLISHED:
                return "tcp not established"
        if learn.limits:        # (after the reasons the megaflow cache learns on: it runs them per packet)
            return "match limit"
        return neighbour_refusal(learn)


def neighbour_refusal(learn: Learning) -> str | None:
    """Why a learned path's next hop makes it unfit to reuse: the path created the neighbour entry, or
    changed its state (a reused path must find it as the learning run left it)."""
    n = learn.neigh
    if learn.neigh_seen:
        if n is None:
            return "neighbour created"
        if _neigh_sig(n) != learn.neigh_sig:
            return "neighbour state changed"
    return None


def _compile(e: FlowEntry, neigh_entries: dict, accel: Any = None) -> Any:
    """The entry's guards and per-packet work as one callable (the hot path): the C
    accelerator's FastEntry when it is built, with the Python closure as its fallback for
    values C does not represent; the Python closure alone otherwise."""
    fast = _compile_python(e, neigh_entries)
    if accel is None:
        return fast
    ct = e.ct
    st = ct.proto if ct is not None else None
    kind = 0 if ct is None else _KINDS[e.tracker]
    status = e.ct_sig[0] if ct is not None else 0
    tcp = kind == 2
    return accel.FastEntry(
        kind=kind, hlen=e.hlen, tot_len=e.tot_len, proto=e.proto, check_l4=e.check_l4 and ct is not None,
        ct=ct, st=st, table=e.table, ct_sig=e.ct_sig, gc_interval=GC_INTERVAL,
        fixed=bool(status & _IPS_FIXED_TIMEOUT), neigh=e.neigh, neigh_sig=e.neigh_sig,
        neigh_entries=neigh_entries, neigh_key=e.neigh_key, assured=bool(status & _IPS_ASSURED),
        seen_reply=bool(status & _IPS_SEEN_REPLY), direction=e.ct_dir, detail=e.steps is not None,
        sender=st.seen[e.ct_dir] if tcp else None, receiver=st.seen[1 - e.ct_dir] if tcp else None,
        sysctl=e.table.sysctl if ct is not None else None, no_detail=_NO_DETAIL, slow=fast, touch=e.neigh_touch)


def _compile_python(e: FlowEntry, neigh_entries: dict) -> Any:
    """A closure with the entry's guards and per-packet work bound to locals.

    Returns the tracker step's detail for this packet, or None when the packet must
    run through the model (a guard failed; nothing has been changed then)."""
    hlen, tot_len, proto = e.hlen, e.tot_len, e.proto
    ct = e.ct
    n, nkey = e.neigh, e.neigh_key
    nstate, nhh, nlladdr, ntimer = e.neigh_sig if n is not None else (None, None, None, None)
    check_l4 = e.check_l4 and ct is not None
    seglen = tot_len - hlen
    pseudo_const = proto + seglen
    odd = seglen & 1

    def guards(p: bytes) -> bool:
        """ip_fast_csum and nf_ip_checksum as one's-complement sums taken modulo 0xFFFF (the sums
        are never all zero: the version nibble, the pseudo header - ICMP has none, so an ICMP sum
        must be non-zero too), then the neighbour."""
        if int.from_bytes(p[:hlen], "big") % 0xFFFF:
            return False
        if check_l4 and proto == 1:
            body = int.from_bytes(p[hlen:tot_len], "big")
            if odd:
                body <<= 8
            if not body or body % 0xFFFF:
                return False
        elif check_l4 and not (proto == 17 and p[hlen + 6] == 0 and p[hlen + 7] == 0):
            body = int.from_bytes(p[hlen:tot_len], "big")
            if odd:
                body <<= 8
            if (body + int.from_bytes(p[12:20], "big") + pseudo_const) % 0xFFFF:
                return False
        if n is not None and (n.state != nstate or n.hh_cached != nhh or n.lladdr != nlladdr
                              or n.timer != ntimer or neigh_entries.get(nkey) is not n):
            return False
        return True

    if ct is None:
        def fast(p: bytes, now: float) -> dict | None:
            return _NO_DETAIL if guards(p) else None
        return fast

    table = e.table
    status, mark, labels, pstate = e.ct_sig
    st = ct.proto
    sysctl = table.sysctl

    def ct_guards(p: bytes, now: float) -> bool:
        if ct.timeout <= now or ct.status != status or ct.mark != mark or ct.labels != labels:
            return False
        if getattr(st, "state", None) != pstate or not guards(p):
            return False
        table.now = now
        if now - table.last_gc >= GC_INTERVAL:
            table.gc(now)
            if ct.timeout <= now:
                return False
        return True

    if e.tracker == "icmp":
        def fast(p: bytes, now: float) -> dict | None:
            """nf_conntrack_icmp_packet for a query of a known connection: the refresh."""
            if not ct_guards(p, now):
                return None
            timeout = sysctl["nf_conntrack_icmp_timeout"]
            if not status & _IPS_FIXED_TIMEOUT:
                ct.timeout = now + timeout
            return {"timeout": timeout}
        return fast

    if e.tracker == "udp":
        assured = bool(status & _IPS_ASSURED)
        fixed = status & _IPS_FIXED_TIMEOUT
        seen_reply = status & _IPS_SEEN_REPLY

        def fast(p: bytes, now: float) -> dict | None:
            """nf_conntrack_udp_packet when it changes nothing but the timeout."""
            if not ct_guards(p, now):
                return None
            extra = sysctl["nf_conntrack_udp_timeout"]
            if seen_reply and st is not None and now > st.stream_ts:
                if not assured:
                    return None                  # becomes a stream now: a status change
                extra = sysctl["nf_conntrack_udp_timeout_stream"]
            if not fixed:
                ct.timeout = now + extra
            return {"timeout": extra, "assured": assured}
        return fast

    d = e.ct_dir
    sender, receiver = st.seen[d], st.seen[1 - d]
    fixed = status & _IPS_FIXED_TIMEOUT
    unreplied = not status & _IPS_SEEN_REPLY
    l4 = hlen + 4
    detail = e.steps is not None

    def fast(p: bytes, now: float) -> dict | None:
        """nf_conntrack_tcp_packet for an ACK of an ESTABLISHED connection: in window, or out of it
        from a liberal sender (a flow picked up mid-stream), which tcp_in_window accepts unchanged."""
        if sender.td_maxwin == 0 or not ct_guards(p, now):
            return None
        seq, ack, doff, flags, win = _TCP_FIELDS(p, l4)
        doff = (doff >> 4) * 4
        end = (seq + seglen - doff) & 0xFFFFFFFF
        sack = ack
        if doff > 20 and receiver.flags & FLAG_SACK_PERM:
            sack = _sack(_Th(p[hlen:tot_len]), ack)
        if tcp_window_update(st, sender, receiver, d, ACK_SET, flags, seq, ack, sack, end, win):
            # out of window, nothing changed: accepted as it is when the sender is liberal, unless
            # _window_verdict finds it overshot (which moves td_end): the model says what happens
            if not (sender.flags & FLAG_BE_LIBERAL or sysctl["nf_conntrack_tcp_be_liberal"]):
                return None
            if receiver.td_maxwin and _window_test(sender, receiver, seq, end, sack) == 1:
                return None
        st.last_index = ACK_SET
        st.last_dir = d
        timeout = tcp_timeout(table, st, ACK_SET, _ESTABLISHED)
        if not fixed:
            refresh = timeout
            if unreplied and refresh > sysctl["nf_conntrack_tcp_timeout_unacknowledged"]:
                refresh = sysctl["nf_conntrack_tcp_timeout_unacknowledged"]     # [UNREPLIED]
            ct.timeout = now + refresh
        return {"state": "ESTABLISHED", "new_state": "ESTABLISHED", "timeout": timeout} if detail else _NO_DETAIL
    return fast


def rewrite(payload: bytes, hlen: int, tot_len: int, mangle: tuple) -> bytes:
    """Apply the path's header rewrites (NAT, TTL, TOS) to another packet of the flow,
    with the model's own incremental checksum updates."""
    (vihl, tos, tl, ident, frag, ttl, proto, check, saddr, daddr) = struct.unpack_from("!BBHHHBBHII", payload)
    skb = SkBuff(ctx=_QUIET)
    skb.iph = Iphdr(vihl >> 4, vihl & 0x0F, tos, tl, ident, frag, ttl, proto, check, saddr, daddr,
                    bytes(payload[20:hlen]))
    skb.payload = bytearray(payload[hlen:tot_len])
    for op in mangle:
        getattr(skb, op[0])(*op[1:])
    return skb.network_bytes()


_QUIET = PacketContext(0.0, record=False, emit_frames=False)
