"""The replay engine: frames in, PacketRecords out, one per frame, streaming.

It picks each frame's ingress interface, runs due timers on capture time, hands
the frame to the modelled driver and collects what the model recorded.  It never
prints; renderers turn records into text, JSON lines, tables or pcap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

if TYPE_CHECKING:  # pragma: no cover
    from pathtrace.render.summary import SummaryCounter

from pathtrace.agreement import Agreement
from pathtrace.capture.frame import Frame
from pathtrace.direction import Direction
from pathtrace.sent import sent_frame
from pathtrace.errors import PathtraceError
from pathtrace.flowcache import FlowCache
from pathtrace.host.model import HostConfig
from pathtrace.net.core.dev import netif_receive
from pathtrace.net.core.net_namespace import Net, build_net
from pathtrace.net.core.netdevice import NetDevice
from pathtrace.net.core.neighbour_output import neigh_timer_handler
from pathtrace.net.ipv4.tcp_minisocks import tcp_adopt_isn_before_rcv
from pathtrace.net.core.skbuff import (
    ETH_P_8021Q, PACKET_BROADCAST, PACKET_HOST, PACKET_MULTICAST, PACKET_OTHERHOST, SkBuff,
)
from pathtrace.trace import PacketContext, PacketRecord

SLL_PKT_TYPES = {0: PACKET_HOST, 1: PACKET_BROADCAST, 2: PACKET_MULTICAST, 3: PACKET_OTHERHOST, 4: PACKET_HOST}


@dataclass(slots=True)
class LineLane:
    """A renderer's per-flow output templates for the C lane (render/template.py FlowTemplate):
    cached frames whose flow entry has a template get their output written without a record
    (`write` takes it as UTF-8 bytes)."""

    template_type: type
    flat_for: Callable[..., tuple]
    write: Callable[[bytes], Any]


@dataclass(slots=True)
class ReplayOptions:
    ingress: str | None = None         # --in: every frame enters here
    strict_mac: bool = False           # --strict-mac: keep foreign destination MACs (then OTHERHOST)
    record: bool = True                # keep path steps (off for --summary only)
    emit_frames: bool = True           # build the bytes of frames that leave
    cache: bool = True                 # reuse flows' paths (pathtrace/flowcache.py); --no-cache
    sent_frames: bool = False          # the capture shows frames the host sent (decided by a look ahead)


def create_namespace(host: HostConfig) -> Net:
    """Build the namespace and load its netfilter ruleset (errors name the ruleset line)."""
    net = build_net(host)
    if host.iptables_text is not None or host.nftables_text is not None:
        from pathtrace.net.netfilter.core import Netfilter
        net.nf = Netfilter.from_config(host, net)
    return net


class Replayer:
    def __init__(self, net: Net, options: ReplayOptions | None = None):
        self.net = net
        self.options = options or ReplayOptions()
        self.default_dev = next((d for d in net.devices.values() if not d.loopback), net.loopback)
        self.otherhost_drops = 0
        self.readdressed = 0
        self.count = 0
        self.cache = FlowCache(self) if self.options.cache else None
        self.agreement = Agreement(net.local_addrs, net.sysctl.glob["ip_default_ttl"])
        self.direction = Direction(net, self.options.ingress)
        self.sent_seen = False
        self.next_hops: dict = {}      # daddr -> (dev, next hop) of the host's route, for sent frames
        self.seen_devices: set[str] = set()   # interfaces the capture has shown a frame on
        if self.options.sent_frames:
            self._start_matching()

    def _start_matching(self) -> None:
        """From now on every frame the host emits is kept as a prediction to match against the capture:
        frames need their bytes, and the C lane (which keeps no records) is off."""
        self.sent_seen = True
        self.options.emit_frames = True
        self.agreement.take_stash()
        if self.cache is not None:
            self.cache.drop_promoted()

    def choose_ingress(self, frame: Frame) -> tuple[NetDevice, str]:
        """--in, then the pcapng interface name, then the destination MAC, then the first interface."""
        devices = self.net.devices
        if self.options.ingress:
            return devices[self.options.ingress], "--in"
        if frame.ifname and frame.ifname in devices:
            return devices[frame.ifname], "pcapng if_name"
        index = getattr(frame, "ifindex", None)
        if index is not None and index in self.direction.ifindex:
            return devices[self.direction.ifindex[index]], "interface index"
        if frame.dst_mac is not None and frame.dst_mac in self.net.by_mac:
            return self.net.by_mac[frame.dst_mac], "destination MAC"
        return self.default_dev, "default (first interface)"

    def run(self, frames: Iterable[Frame]) -> Iterator[PacketRecord]:
        for frame in frames:
            yield self.process(frame)
        self.flush()

    def tally(self, frames: Iterable[Frame], counter: "SummaryCounter", limit: int = 0,
              tick: "Callable[[int], None] | None" = None) -> None:
        """Replay for counts only (--summary, --counters without per-packet output): a packet the
        cache serves is counted on its flow entry instead of getting a record of its own."""
        self.stream(frames, counter, limit, tick)

    def stream(self, frames: Iterable[Frame], counter: "SummaryCounter", limit: int = 0,
               tick: "Callable[[int], None] | None" = None,
               emit: "Callable[[PacketRecord, Frame], None] | None" = None, lines: "LineLane | None" = None,
               accept: "Callable[[Frame], bool] | None" = None) -> None:
        """Replay a capture into `counter`, handing each record to `emit` (None: counts only).

        `accept` picks the frames this replay runs (replay --jobs: a worker's share); the others
        are skipped but count towards `limit`.  With the C accelerator built, runs of cached
        frames are served straight from the reader's buffer (_fastpath.serve_pcap for a pcap,
        serve_pcapng for a pcapng) without becoming Frames: counted on their flow entries and, given
        `lines` (a renderer's per-flow templates), written as that renderer's lines; frames of
        flows `accept` refused are skipped there too."""
        cache = self.cache
        cursor = getattr(frames, "cursor", None)
        lane = None
        if cache is not None and cache.accel is not None and cursor is not None and (emit is None or lines) \
                and (emit is None or not self.sent_seen):
            lane = cache.accel
        foreign: set[bytes] | None = set() if accept is not None else None
        extra = (lines.template_type, lines.flat_for) if lines is not None else (None, None)
        # counts only, one process: the lane also matches the frames the host sent (bidirectional captures)
        agree_ok = emit is None and accept is None
        frames = iter(frames)
        try:
            self._stream(frames, counter, limit, tick, emit, lines, accept, lane, cursor, foreign, extra, agree_ok)
        finally:        # an interrupted replay (SIGINT) still counts what it replayed
            self.flush()
            if cache is not None and cache.mega is not None:
                cache.mega.release()
            if cache is not None:
                for (verdict, reason, emitted), count in cache.tallied.items():
                    counter.add_many(verdict, reason, emitted, count)
                cache.tallied.clear()

    def _stream(self, frames, counter, limit, tick, emit, lines, accept, lane, cursor, foreign, extra,
                agree_ok) -> None:
        """stream's loop (see there)."""
        cache = self.cache
        clock = self.net.neigh.clock
        agree = None
        agreement = self.agreement
        n = 0
        while not limit or n < limit:
            if lane is not None and self.sent_seen:
                if not agree_ok:
                    lane = None
                elif agree is None:
                    agree = agreement.lane_args(*self._lane_hostdevs())
            if lane is not None:
                before = agreement.fast_sent_total() if agree is not None else 0
                mega = cache.mega.lane(lane, self) if (cache.mega is not None and emit is None and foreign is None
                                                       and agree is None and not self.net.tcp_conns) else None
                served, consumed, text = cursor.serve(lane, limit - n if limit else 1 << 62, cache.entries, clock,
                                                      *extra, foreign, agree, mega=mega)
                if consumed:
                    self.count += served
                    if agree is not None:
                        sent = agreement.fast_sent_total() - before
                        if sent:
                            counter.add_many("SENT", None, (), sent)
                            self.seen_devices |= agreement.sent_devices
                    if text:
                        lines.write(text)
                    if tick is not None and (n + consumed) >> 10 != n >> 10:
                        tick(n + consumed)
                    n += consumed
                    continue
            frame = next(frames, None)
            if frame is None:
                break
            if accept is not None and not accept(frame):
                if foreign is not None and cache is not None:
                    key = cache.key(frame, self.choose_ingress(frame)[0])
                    if isinstance(key, bytes):        # the C lane's kind of key: let it skip the flow
                        if len(foreign) > 1 << 18:
                            foreign.clear()
                        foreign.add(key)
            elif emit is not None:
                record = replay_frame(self, frame)
                counter.add(record)       # before emit: an interrupt raised there leaves both consistent
                emit(record, frame)
            elif self.sent_seen:
                counter.add(replay_frame(self, frame))
            else:
                self._tally_one(frame, counter, clock)
            if tick is not None and not n & 1023:
                tick(n)
            n += 1

    def _lane_hostdevs(self) -> tuple[dict[bytes, str], dict[bytes, str]]:
        """The host's MACs and interface names as bytes, for the C lane's direction rule (direction.py)."""
        macs = {bytes(mac): dev.name for mac, dev in self.net.by_mac.items() if mac is not None}
        return macs, {name.encode(): name for name in self.net.devices}

    def _tally_one(self, frame: Frame, counter: "SummaryCounter", clock: Any) -> None:
        """Count one frame: on its flow entry when the cache serves it, else by its record."""
        cache = self.cache
        now = frame.ts
        if cache is not None and now < clock.earliest:
            dev = self.choose_ingress(frame)[0]
            key = cache.key(frame, dev)
            e = cache.serve(key, frame, now)[0] if key is not None else None
            if e is None and cache.mega is not None and cache.mega.off is None:
                e = cache.mega.serve(frame, dev, now)      # a connection's packet on another's learned path
                if e is not None and e.prototype is not None and key is not None:
                    cache.promote(key, e, *cache.mega.served)
            if e is not None:
                self.count += 1
                e.tallied += 1
                return
        counter.add(replay_frame(self, frame))

    def flush(self) -> None:
        """Bring counters up to date (the replay cache applies them in bulk); call before reading
        rule, device or conntrack counters after `process`."""
        if self.cache is not None:
            self.cache.flush()

    def process(self, frame: Frame) -> PacketRecord:
        out_dev = self.direction.sent_by_host(frame)
        if out_dev is not None:
            if not self.sent_seen:
                self._start_matching()
            return self.process_sent(frame, out_dev)
        record = self.process_received(frame)
        if record.emitted:
            if self.sent_seen:
                self.agreement.expire(frame.ts)
                self.agreement.predict(record.index, frame.ts, record.emitted)
            else:
                self.agreement.stash(record.index, frame.ts, record.emitted)
        return record

    def process_sent(self, frame: Frame, dev: NetDevice) -> PacketRecord:
        """A frame the capture shows the host sending: matched against the model's predictions, else
        replayed through the application's send path (pathtrace/net/socket.py)."""
        self.count += 1
        ctx = PacketContext(frame.ts, record=self.options.record, emit_frames=True, net=self.net)
        self._run_timers(ctx)
        self.agreement.expire(frame.ts)
        self.seen_devices.add(dev.name)
        return sent_frame(ctx, frame, dev, self.agreement, self.next_hops, self._infer_arrival)

    def _infer_arrival(self, frame: Frame, out_dev: NetDevice) -> PacketRecord | None:
        """The arrival a forwarded frame implies, replayed as received, when the capture does not cover
        the interface it came in on (a router captured on one side): conntrack gives the addresses
        before NAT, the route back to its source the interface, and the TTL is one more.  None when the
        capture covers that interface (then the model's not forwarding it is a disagreement)."""
        from pathtrace.sent import arrival_frame, assume_resolved
        made = arrival_frame(self.net, frame, out_dev)
        if made is None or made.ifname in self.seen_devices:
            return None
        ctx = PacketContext(frame.ts, record=False, emit_frames=True, net=self.net)
        assume_resolved(ctx, self.net.devices[made.ifname], made.payload, self.next_hops)
        return self.process_received(made, inferred=True)

    def process_received(self, frame: Frame, inferred: bool = False) -> PacketRecord:
        opts = self.options
        dev, why = self.choose_ingress(frame)
        if not inferred:
            self.seen_devices.add(dev.name)
        self.count += 1
        now = frame.ts
        cache = self.cache
        key = None
        if cache is not None and now < self.net.neigh.clock.earliest:     # no timer is due
            key = cache.key(frame, dev)
            if key is not None:
                cached = cache.replay(key, frame, now, opts.record, opts.emit_frames)
                if cached is not None:
                    return cached
                cache.misses += 1
        ctx = PacketContext(now, record=opts.record, emit_frames=opts.emit_frames, net=self.net)
        if self._run_timers(ctx):
            key = None
        before = cache.begin(ctx) if key is not None else None
        if self.net.tcp_conns and frame.ethertype == 0x0800 and len(frame.payload) >= 34:
            tcp_adopt_isn_before_rcv(self.net, frame.payload)
        skb = SkBuff(ctx=ctx, dev=dev, iif=dev, tstamp=frame.ts)
        verdict = self._prepare(frame, skb, dev, why)
        if verdict is None:
            netif_receive(skb, dev, pkt_type_known=skb.cb.get("pkt_type_known", False))
        if skb.reason == "OTHERHOST":
            self.otherhost_drops += 1
        if self.net.nf is not None and hasattr(self.net.nf, "end_packet"):
            self.net.nf.end_packet(skb)
        verdict = skb.verdict or "DROP"
        if verdict == "TRANSMIT":
            verdict = "FORWARD"
        record = PacketRecord(index=frame.index, time=frame.ts, ingress=dev.name, packet="", verdict=verdict,
                              reason=(skb.reason or "NOT_SPECIFIED") if verdict == "DROP" else None,
                              egress=skb.cb.get("egress") if verdict in ("FORWARD", "QUEUED") else None,
                              path=ctx.steps, emitted=ctx.emitted, warnings=ctx.warnings, rules=ctx.verdicts)
        if before is not None:
            cache.finish(key, frame, ctx, skb, record, before)
            ctx.learn = ctx.counted = None
        return record

    def _prepare(self, frame: Frame, skb: SkBuff, dev: NetDevice, why: str) -> str | None:
        """Fill the skb from the frame; returns a verdict when the frame never reaches the stack."""
        ctx = skb.ctx
        if frame.error:
            ctx.step("eth_type_trans", dev=dev.name, error=frame.error)
            skb.verdict = "DROP" if "unsupported" not in frame.error else "NOT_MODELLED"
            skb.reason = "PKT_TOO_SMALL" if skb.verdict == "DROP" else None
            return skb.verdict
        skb.protocol = frame.ethertype
        skb.raw = frame.payload
        if frame.vlan:
            skb.vlan_tci = frame.vlan[0]
            if len(frame.vlan) > 1:
                skb.protocol = ETH_P_8021Q   # only the outer tag is taken off
        if frame.src_mac is not None:
            skb.mac_src = frame.src_mac
        if frame.dst_mac is None:
            # raw IP / cooked captures: no destination MAC; SLL's packet type says whom it was for
            skb.mac_dst = dev.mac
            skb.pkt_type = SLL_PKT_TYPES.get(frame.pkt_type, PACKET_HOST) if frame.pkt_type is not None else PACKET_HOST
            skb.cb["pkt_type_known"] = True
        else:
            skb.mac_dst = frame.dst_mac
            foreign = not (frame.dst_mac[0] & 1) and frame.dst_mac != dev.mac
            if foreign and self.options.ingress and not self.options.strict_mac:
                skb.mac_dst = dev.mac
                self.readdressed += 1
                if ctx.record:
                    ctx.warnings.append(f"destination MAC re-addressed to {dev.name} (--in without --strict-mac)")
                    skb.cb["readdressed_from"] = ":".join(f"{b:02x}" for b in frame.dst_mac)
        if ctx.record and why.startswith("default"):
            ctx.warnings.append(f"ingress {dev.name} chosen by default (no --in, pcapng name or MAC match)")
        return None

    def _run_timers(self, ctx: PacketContext) -> bool:
        """Fire every neighbour and TCP timer due by now, in time order, including re-armed ones."""
        from pathtrace.net.ipv4.tcp_timer import next_due, run_timer
        net = self.net
        fired = False
        for _ in range(10000):
            due = net.neigh.pending_timers(ctx.now)
            tcp = next_due(net, ctx.now)
            if not due and tcp is None:
                break
            fired = True
            if tcp is not None and (not due or tcp[0] < due[0].timer):
                run_timer(net, ctx, tcp)
            else:
                neigh_timer_handler(net, due[0], ctx)
        return fired


def replay_frame(replayer: Replayer, frame: Frame) -> PacketRecord:
    """replayer.process, except that a model bug is reported in the packet's record (MODEL_ERROR)
    instead of ending the run: every frame of a capture gets a record."""
    try:
        return replayer.process(frame)
    except PathtraceError:
        raise
    except Exception as exc:
        return PacketRecord(frame.index, frame.ts, None, "", "MODEL_ERROR", None, None, [], [],
                            [f"model error: {type(exc).__name__}: {exc}"])
