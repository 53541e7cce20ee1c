"""Inject spelled packets (and capture prefixes) into one host namespace.

`explain` and `check` both need "this packet, in this conntrack state, on this
interface": the opening packets of a flow are replayed first so conntrack holds
the entry a real ESTABLISHED packet would find, answering from the other side
with whatever address the host really sent (so NAT bindings are honoured).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from pathtrace.capture.frame import Frame
from pathtrace.commands.flowspec import FlowSpec, FlowSpecError, ip_packet
from pathtrace.commands.headers import Headers, frame_headers, ip_headers
from pathtrace.errors import PathtraceError
from pathtrace.host.model import HostConfig
from pathtrace.lib.inet import parse_mac
from pathtrace.net.core.net_namespace import Net
from pathtrace.packet.decode import describe_frame
from pathtrace.replay import Replayer, ReplayOptions, create_namespace
from pathtrace.trace import PacketRecord

PEER_MAC = parse_mac("02:00:5e:00:53:01")      # documentation range MAC (RFC 7042) for the sender
CLIENT_ISN = 1000


class _Injector(Replayer):
    """A Replayer that also sets skb->mark (a capture has no marks; --mark needs one)."""

    mark = 0

    def _prepare(self, frame, skb, dev, why):  # type: ignore[override]
        skb.mark = self.mark
        return super()._prepare(frame, skb, dev, why)


@dataclass
class Outcome:
    """The explained packet's record plus what was replayed before it."""

    record: PacketRecord
    setup: list[PacketRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class Session:
    """A namespace built from a host, and a clock, for injecting packets one by one."""

    def __init__(self, host: HostConfig, net: Net | None = None):
        self.host = host
        self.net = net if net is not None else create_namespace(host)
        # no replay cache: injected packets carry a mark the cache key does not hold
        self.replayer = _Injector(self.net, ReplayOptions(record=True, emit_frames=True, cache=False))
        self.t = 1_700_000_000.0
        self.index = 0
        self.tcp_next: dict[tuple[int, int, int, int], int] = {}   # next seq per direction
        self.held: dict[int, Headers] = {}     # frame index -> packet waiting in an arp_queue (post-NAT)

    # ---- spelled packets ------------------------------------------------------------
    def inject(self, spec: FlowSpec) -> Outcome:
        """Replay the opening of the flow when asked, then the packet itself (recorded)."""
        spec = replace(spec, ingress=self.ingress_for(spec))
        out = Outcome(record=None)  # type: ignore[arg-type]
        if spec.state == "established":
            self._open(spec, out)
        out.record = self.send_spec(spec)
        return out

    def ingress_for(self, spec: FlowSpec) -> str:
        """--in, else the interface the route back to the source uses, else the first one."""
        devices = self.net.devices
        if spec.ingress is not None:
            if spec.ingress not in devices:
                raise FlowSpecError(f"--in {spec.ingress}: no such interface (have {', '.join(devices)})")
            return spec.ingress
        from pathtrace.net.ipv4.route import ip_route_output
        rt = ip_route_output(self.net, spec.src)
        if rt.dev is not None and not rt.dev.loopback:
            return rt.dev.name
        return self.replayer.default_dev.name

    def send_spec(self, spec: FlowSpec, flags: str | None = None, icmp_type: int | None = None) -> PacketRecord:
        """Send one packet of the flow; TCP sequence numbers continue where the flow left off."""
        flags = flags or spec.tcp_flags
        seq, ack = CLIENT_ISN, 0
        if spec.proto == 6:
            key = (spec.src, spec.sport, spec.dst, spec.dport)
            seq = self.tcp_next.get(key, CLIENT_ISN)
            ack = self.tcp_next.get((spec.dst, spec.dport, spec.src, spec.sport), 0) if "A" in flags.upper() \
                or "." in flags else 0
        packet = ip_packet(spec, seq=seq, ack=ack, flags=flags, icmp_type=icmp_type)
        return self.send(packet, spec.ingress or self.ingress_for(spec), spec.mark)

    def send(self, packet: bytes, dev: str, mark: int = 0, record: bool = True) -> PacketRecord:
        self.t += 0.001
        netdev = self.net.devices[dev]
        frame = Frame(self.index, self.t, None, 1, netdev.mac, PEER_MAC, None, (), 0x0800, packet,
                      len(packet) + 14, len(packet) + 14, None)
        self.index += 1
        self.replayer.mark = mark
        self.replayer.options.record = record
        self.replayer.options.ingress = dev
        rec = self.replayer.process(frame)
        rec.packet = describe_frame(frame)
        self._hold(rec, frame)
        self._learn(ip_headers(packet))
        for e in rec.emitted:
            self._learn(frame_headers(e.frame))
        return rec

    def _hold(self, rec: PacketRecord, frame: Frame) -> None:
        """A QUEUED packet has not left yet: read it (NAT already applied) from the neighbour queue."""
        if rec.verdict != "QUEUED":
            return
        for n in self.net.neigh.entries.values():
            for skb in getattr(n, "arp_queue", ()):
                if skb.tstamp == frame.ts:
                    h = ip_headers(skb.network_bytes())
                    if h is not None:
                        self.held[rec.index] = h
                        return

    def _learn(self, h: Headers | None) -> None:
        """Remember where each TCP direction's sequence space continues (for ACK numbers)."""
        if h is not None and h.proto == 6:
            self.tcp_next[(h.src, h.sport, h.dst, h.dport)] = h.seq_end

    def _open(self, spec: FlowSpec, out: Outcome) -> None:
        """SYN / reply / ACK (or request / reply) so conntrack sees both directions."""
        r1 = self.send_spec(spec, flags="S", icmp_type=8 if spec.proto == 1 else None)
        out.setup.append(r1)
        if _local_answer(r1, spec):
            pass
        elif r1.verdict in ("FORWARD", "QUEUED") and r1.egress:
            back = _reply_spec(spec, forwarded_headers(r1), r1.egress)
            out.setup.append(self.send_spec(back, flags="SA", icmp_type=0 if spec.proto == 1 else None))
        elif spec.proto == 17 and r1.verdict == "LOCAL_DELIVER":
            out.warnings.append("a local UDP socket's reply is not modelled: conntrack saw only one direction")
            return
        else:
            why = f"{r1.verdict}{f' ({r1.reason})' if r1.reason else ''}"
            out.warnings.append(f"could not set up ESTABLISHED state: the opening packet was {why}")
            return
        if spec.proto == 6:
            out.setup.append(self.send_spec(spec, flags="A"))

    # ---- captures ---------------------------------------------------------------------
    def replay_capture(self, path: str, wanted: set[int], ingress: str | None = None) -> dict[int, PacketRecord]:
        """Replay a capture up to the last wanted index; earlier packets build state silently."""
        from pathtrace.capture import read_frames
        if ingress is not None and ingress not in self.net.devices:
            raise PathtraceError(f"--in {ingress}: no such interface")
        self.replayer.options.ingress = ingress
        from pathtrace.capture.ifmap import ifindex_map_for
        got: dict[int, PacketRecord] = {}
        self.replayer.direction.ifindex = ifindex_map_for(self.net.host, path)[0]
        try:
            for frame in read_frames(path, ordered="auto"):
                if len(got) == len(wanted):
                    break
                self.replayer.options.record = frame.index in wanted
                rec = self.replayer.process(frame)
                if frame.index in wanted:
                    rec.packet = describe_frame(frame)
                    self._hold(rec, frame)
                    got[frame.index] = rec
        finally:
            self.replayer.options.ingress = None
            self.replayer.options.record = True
        missing = sorted(wanted - set(got))
        if missing:
            raise PathtraceError(f"{path}: no packet with index {missing[0]} (indices start at 0)")
        return got


def emitted_at_depth(record: PacketRecord, depth: int = 0) -> list:
    """The emitted frames sent by steps at `depth` (0: the input packet itself, >0: host responses)."""
    xmits = [s for s in record.path if s.fn == "__dev_queue_xmit" and s.detail.get("dev") != "lo"]
    if len(xmits) != len(record.emitted):
        # released queue entries or steps off: fall back on the kind of frame
        return [e for e in record.emitted if (e.kind in ("forwarded", "released")) == (depth == 0)]
    return [e for s, e in zip(xmits, record.emitted) if (s.depth == 0) == (depth == 0)]


def forwarded_headers(record: PacketRecord) -> Headers | None:
    """Headers of the input packet as it left the host (after NAT), None when it did not leave."""
    for e in emitted_at_depth(record, 0):
        h = frame_headers(e.frame)
        if h is not None:
            return h
    return None


def _local_answer(record: PacketRecord, spec: FlowSpec) -> Headers | None:
    """The host's own answer to the opening packet (SYN-ACK, echo reply), if it sent one."""
    for e in record.emitted:
        h = frame_headers(e.frame)
        if h is None or h.dst != spec.src:
            continue
        if spec.proto == 6 and h.proto == 6 and h.tcp_flags & 0x12 == 0x12 and h.dport == spec.sport:
            return h
        if spec.proto == 1 and h.proto == 1 and h.icmp_type == 0:
            return h
    return None


def _reply_spec(spec: FlowSpec, sent: Headers | None, dev: str) -> FlowSpec:
    """The far side's answer to what the host forwarded (reverse of the post-NAT tuple)."""
    back = replace(spec.reversed(), ttl=64, length=None, df=False, ingress=dev, flags=None, mark=0)
    if sent is not None:
        back = replace(back, src=sent.dst, dst=sent.src, sport=sent.dport, dport=sent.sport)
    return back
