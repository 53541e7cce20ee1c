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
from pathtrace.commands.headers import Headers, frame_headers
from pathtrace.errors import PathtraceError
from pathtrace.host.model import HostConfig
from pathtrace.lib.inet import parse_mac
from pathtrace.net.core.net_namespace import Net
from pathtrace.packet.decode import describe_frame
from pathtrace.replay import Replayer, ReplayOptions, create_namespace
from pathtrace.trace import PacketRecord

PEER_MAC = parse_mac("02:00:5e:00:53:01")      # documentation range MAC (RFC 7042) for the sender
CLIENT_ISN = 1000
SERVER_ISN = 50000


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
        self.replayer = _Injector(self.net, ReplayOptions(record=True, emit_frames=True))
        self.t = 1_700_000_000.0
        self.index = 0

    # ---- spelled packets ------------------------------------------------------------
    def inject(self, spec: FlowSpec) -> Outcome:
        """Replay the opening of the flow when asked, then the packet itself (recorded)."""
        dev = self.ingress_for(spec)
        spec = replace(spec, ingress=dev)
        out = Outcome(record=None)  # type: ignore[arg-type]
        seq, ack = CLIENT_ISN, 0
        if spec.state == "established":
            seq, ack = self._open(spec, out)
        out.record = self.send(ip_packet(spec, seq=seq, ack=ack), dev, spec.mark)
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

    def send(self, packet: bytes, dev: str, mark: int = 0, record: bool = True) -> PacketRecord:
        self.t += 0.001
        netdev = self.net.devices[dev]
        frame = Frame(self.index, self.t, None, 1, netdev.mac, PEER_MAC, None, (), 0x0800, packet,
                      len(packet) + 14, len(packet) + 14, None)
        self.index += 1
        self.replayer.mark = mark
        self.replayer.options.record = record
        rec = self.replayer.process(frame)
        rec.packet = describe_frame(frame)
        return rec

    def _open(self, spec: FlowSpec, out: Outcome) -> tuple[int, int]:
        """SYN / reply / ACK (or request / reply) so conntrack sees both directions."""
        c = CLIENT_ISN
        first = ip_packet(spec, seq=c, flags="S", icmp_type=8 if spec.proto == 1 else None)
        r1 = self.send(first, spec.ingress, spec.mark)
        out.setup.append(r1)
        answered = _local_answer(r1, spec)
        server_seq = SERVER_ISN
        if answered is not None:
            server_seq = answered.tcp_seq
        elif r1.verdict in ("FORWARD", "QUEUED") and r1.egress:
            sent = forwarded_headers(r1)
            back = _reply_packet(spec, sent, server_seq, c + 1)
            out.setup.append(self.send(back, r1.egress))
        elif spec.proto == 17 and r1.verdict == "LOCAL_DELIVER":
            out.warnings.append("a local UDP socket's reply is not modelled: conntrack saw only one direction")
        else:
            why = f"{r1.verdict}{f' ({r1.reason})' if r1.reason else ''}"
            out.warnings.append(f"could not set up ESTABLISHED state: the opening packet was {why}")
            return c + 1, server_seq + 1
        if spec.proto == 6:
            out.setup.append(self.send(ip_packet(spec, seq=c + 1, ack=server_seq + 1, flags="A"),
                                       spec.ingress, spec.mark))
        return c + 1, server_seq + 1

    # ---- captures ---------------------------------------------------------------------
    def replay_capture(self, path: str, wanted: set[int], ingress: str | None = None) -> dict[int, PacketRecord]:
        """Replay a capture up to the last wanted index; earlier packets build state silently."""
        from pathtrace.capture import read_frames
        if ingress is not None and ingress not in self.net.devices:
            raise PathtraceError(f"--in {ingress}: no such interface")
        self.replayer.options.ingress = ingress
        last = max(wanted)
        got: dict[int, PacketRecord] = {}
        try:
            for frame in read_frames(path):
                if frame.index > last:
                    break
                self.replayer.options.record = frame.index in wanted
                rec = self.replayer.process(frame)
                if frame.index in wanted:
                    rec.packet = describe_frame(frame)
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


def _reply_packet(spec: FlowSpec, sent: Headers | None, seq: int, ack: int) -> bytes:
    """The far side's answer to what the host forwarded (reverse of the post-NAT tuple)."""
    back = spec.reversed()
    if sent is not None:
        back = replace(back, src=sent.dst, dst=sent.src, sport=sent.dport, dport=sent.sport)
    back = replace(back, ttl=64, length=None, df=False)
    return ip_packet(back, seq=seq, ack=ack, flags="SA", icmp_type=0 if spec.proto == 1 else None)
