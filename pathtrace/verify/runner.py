"""Feed the same frames to the model and to the kernel lab; one Observation per frame each.

Ingress choice and destination-MAC re-addressing are the model replayer's own
(choose_ingress, --in without --strict-mac), so both sides see the same frame on
the same interface.
"""
from __future__ import annotations

from pathtrace.capture.linktypes import frame_from_ethernet

import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from pathtrace.capture.frame import Frame
from pathtrace.host.model import HostConfig
from pathtrace.packet import build
from pathtrace.packet.decode import describe_frame
from pathtrace.trace import PacketContext
from pathtrace.replay import Replayer, ReplayOptions, create_namespace
from pathtrace.verify.lab import Lab
from pathtrace.verify.netns import check_available
from pathtrace.verify.isn import SeqShift
from pathtrace.verify.observe import Observation, classify_kernel, from_model, summarize_frame
from pathtrace.verify.tracing import DropTracer, DropTracerT, netns_inode

DEFAULT_WAIT = 0.15
MAX_GAP = 2.0
WIRE_SRC_MAC = "02:77:69:72:65:00"


@dataclass(slots=True)
class Injection:
    index: int
    ingress: str
    frame: Frame          # what the model gets
    wire: bytes           # what the kernel gets (Ethernet, re-addressed like the model)
    text: str             # one-line description for tables
    # frames of the capture the HOST sent after this one (src MAC is a host interface's): what the
    # kernel is expected to send, never injected; (interface, Ethernet bytes)
    expected: list[tuple[str, bytes]] = field(default_factory=list)

    def expected_summaries(self) -> list[str]:
        return sorted(summarize_frame(dev, data) for dev, data in self.expected)


def frame_from_ether(data: bytes, index: int, ts: float, ifname: str | None = None) -> Frame:
    """A Frame as the capture reader makes it for an Ethernet record (VLAN tags peeled)."""
    return frame_from_ethernet(data, index, ts, ifname)


def plan(host: HostConfig, frames: Iterable[Frame], ingress: str | None = None,
         strict_mac: bool = False) -> list[Injection]:
    """Decide each frame's interface and wire bytes the way `pathtrace replay` would.

    A frame whose source MAC is one of the host's interfaces is the host's own output: it is
    attached to the injection before it (the first one, for frames before any) as expected output."""
    chooser = Replayer(create_namespace(host), ReplayOptions(ingress=ingress, strict_mac=strict_mac))
    own = {i.mac: i.name for i in host.interfaces if i.name != "lo"}
    out: list[Injection] = []
    early: list[tuple[str, bytes]] = []
    for frame in frames:
        if frame.src_mac is not None and frame.src_mac in own:
            data = build.ether(frame.dst_mac or b"\xff" * 6, frame.src_mac, frame.ethertype, frame.payload,
                               vlan=list(frame.vlan) or None)
            (out[-1].expected if out else early).append((own[frame.src_mac], data))
            continue
        dev, _ = chooser.choose_ingress(frame)
        dst = frame.dst_mac
        if dst is None:
            dst = dev.mac
        elif not (dst[0] & 1) and dst != dev.mac and ingress and not strict_mac:
            dst = dev.mac
        wire = build.ether(dst, frame.src_mac or WIRE_SRC_MAC, frame.ethertype, frame.payload,
                           vlan=list(frame.vlan) or None)
        out.append(Injection(frame.index, dev.name, frame, wire, describe_frame(frame)))
    if out:
        out[0].expected[:0] = early
    return out


def run_model(host: HostConfig, injections: list[Injection], ingress: str | None = None,
              strict_mac: bool = False, wait: float = DEFAULT_WAIT, max_gap: float = MAX_GAP) -> list[Observation]:
    """The model's side of each injection.  The kernel's is what it sent until the next injection
    (at most `wait` later): the model's timers due in that window (a delayed ACK 40 ms after a FIN)
    fire into the same packet's observation, not into the next packet's record."""
    replayer = Replayer(create_namespace(host), ReplayOptions(ingress=ingress, strict_mac=strict_mac))
    result = []
    for n, inj in enumerate(injections):
        try:
            record = replayer.process(inj.frame)
            gap = injections[n + 1].frame.ts - inj.frame.ts if n + 1 < len(injections) else wait
            window = min(max(gap, 0.0), max_gap, wait)
            # the window's end is inclusive (a timer due exactly then counts): capture times are floats
            ctx = PacketContext(inj.frame.ts + window + 1e-6, record=False, emit_frames=True, net=replayer.net)
            replayer._run_timers(ctx)
            record.emitted = list(record.emitted) + ctx.emitted
            result.append(from_model(record))
            if n + 1 < len(injections) and gap > window:
                # run_kernel discards what the kernel sends after the window and before the next
                # injection (lab.drain(0.0)): timers due then fire, but into no packet's observation
                replayer._run_timers(PacketContext(inj.frame.ts + min(gap, max_gap) - 1e-6, record=False,
                                                   emit_frames=True, net=replayer.net))
        except Exception as exc:  # a model bug is a disagreement to report, not a crash
            result.append(Observation(verdict="MODEL_ERROR", reason=f"{type(exc).__name__}: {exc}"))
    return result


@contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM/SIGINT unwind through finally blocks, so namespaces and tracing are removed."""
    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def local_destinations(host: HostConfig) -> set[int]:
    """Addresses a packet is delivered locally for: the host's own, its subnets' broadcasts
    (not /31, /32) and the limited broadcast; an echo to a broadcast that icmp_echo_ignore_broadcasts
    silences is consumed there, not held."""
    out = {0xFFFFFFFF}
    for iface in host.interfaces:
        for addr, plen in iface.addresses:
            out.add(addr)
            if plen < 31:
                out.add(addr | (0xFFFFFFFF >> plen))
    return out


def run_kernel(host: HostConfig, injections: list[Injection], wait: float = DEFAULT_WAIT,
               tag: str | None = None, max_gap: float = MAX_GAP, tracer: "DropTracerT | None" = None
               ) -> list[Observation]:
    """Build the lab, inject each frame, watch for `wait` seconds; always tears everything down.

    `tracer`: a drop tracer to reuse across runs (the caller closes it); by default one is
    started for this run and closed after it.

    Frames are injected at their capture-time offsets (gaps capped at `max_gap`) so the
    kernel's timers (SYN-ACK and ARP retransmits, rate limits) run on the model's clock."""
    check_available()
    tag = tag or f"ptv{os.getpid()}"
    local = {a.to_bytes(4, "big") for a in local_destinations(host)}
    results = []
    shift = SeqShift({i.mac for i in host.interfaces if i.name != "lo"})
    shift.learn_capture([f for inj in injections for f in (inj.wire, *(d for _, d in inj.expected))])
    with _signals_raise():
        own = tracer is None
        tracer = tracer if tracer is not None else DropTracer(tag)
        try:
            with Lab(host, tag=tag) as lab:
                tracer.limit_to(netns_inode(lab.host_ns))
                start = time.monotonic()
                offset = 0.0
                for n, inj in enumerate(injections):
                    if n:
                        offset += min(max(inj.frame.ts - injections[n - 1].frame.ts, 0.0), max_gap)
                    time.sleep(max(0.0, start + offset - time.monotonic()))
                    lab.drain(0.0)
                    lab.deliveries()
                    tracer.clear()
                    try:
                        lab.inject(inj.ingress, shift.rewrite(inj.wire))
                    except OSError as exc:   # e.g. a frame longer than the interface's MTU: veth drops it
                        results.append(Observation(verdict="NOT_INJECTED", reason=exc.strerror))
                        continue
                    frames = lab.drain(wait)
                    shift.learn_kernel([f for _, f in frames])
                    delivered = [f"{d.proto} {d.local} {d.event}" for d in lab.deliveries()]
                    drops = [(e.reason, e.location) for e in tracer.read()]
                    consumed = tracer.consumed if tracer.tracks_consumption else False
                    results.append(classify_kernel(inj.frame.ethertype, inj.frame.payload, local, frames,
                                                   drops, delivered, consumed))
        finally:
            if own:
                tracer.close()
    return results
