"""`replay --jobs N`: a capture split by flow over N processes, as RSS spreads flows over CPUs.

Every worker reads the whole capture and runs the packets of its share through its own
copy of the host.  A frame's share is a hash of the endpoint that NAT leaves alone - the
far end of the conversation (the endpoint that is neither a local address nor on a
connected subnet; the quoted packet's for ICMP errors) - so a masqueraded or port-forwarded
connection's two directions, and every connection that could clash with it for a NAT
port, land in the same worker.  Frames without an IPv4 flow (ARP, IPv6, malformed) go
to worker 0.

Output is identical to one process, or the run is not used: features that couple flows
(limit, hashlimit, recent, SET, NFQUEUE; --write-pcap) force one process up front, and a
worker whose shared state (neighbour entries and timers, ICMP rate limits, IP IDs,
fragment queues, NAT's port RNG) changed during its run makes the whole replay run
again in one process.  Records are merged back into capture order from per-worker
spool files; counters are summed into the parent's copy of the host.
"""
from __future__ import annotations

import heapq
import multiprocessing
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from typing import Any, Iterator, TextIO

from pathtrace.capture.frame import Frame

from pathtrace.net.netfilter.core import VOLATILE_MATCHES, VOLATILE_TARGETS   # what couples flows


@dataclass(slots=True)
class ShardPlan:
    """What the hash needs to know of the host: its addresses and connected subnets."""

    local: frozenset[int]
    connected: tuple[tuple[int, int], ...]     # (network, mask)

    @classmethod
    def for_net(cls, net: Any) -> "ShardPlan":
        nets = {(a.local & a.mask, a.mask) for d in net.devices.values() for a in d.addrs}
        return cls(frozenset(net.local_addrs), tuple(sorted(nets)))

    def near(self, addr: int) -> bool:
        return addr in self.local or any(addr & mask == network for network, mask in self.connected)


def flow_key(payload: bytes, plan: ShardPlan) -> bytes:
    """The far endpoint of an IPv4 packet's conversation (address, and port for TCP/UDP)."""
    if len(payload) < 20 or payload[0] >> 4 != 4:
        return b""
    hlen = (payload[0] & 0x0F) * 4
    proto = payload[9]
    if proto == 1 and len(payload) >= hlen + 8 + 20 and payload[hlen] in (3, 4, 5, 11, 12):
        return flow_key(payload[hlen + 8:], plan)      # an ICMP error belongs to the flow it quotes
    src, dst = struct.unpack_from("!II", payload, 12)
    ports = len(payload) >= hlen + 4 and proto in (6, 17) and not struct.unpack_from("!H", payload, 6)[0] & 0x1FFF
    sport, dport = struct.unpack_from("!HH", payload, hlen) if ports else (0, 0)
    ends = [(a, p) for a, p in ((src, sport), (dst, dport)) if not plan.near(a)]
    if not ends:                                       # both ends near: the pair, either way round
        ends = sorted([(src, sport), (dst, dport)])
    if proto == 1 or not ports:
        ends = [(a, 0) for a, _ in ends]
    return bytes([proto]) + b"".join(struct.pack("!IH", a, p) for a, p in sorted(ends))


def shard(frame: Frame, plan: ShardPlan, jobs: int, memo: dict | None = None) -> int:
    """The worker of a frame; `memo` remembers it per address/port/protocol header bytes."""
    if frame.ethertype != 0x0800 or frame.error is not None:
        return 0
    p = frame.payload
    memo_key = p[9:10] + p[12:24] if memo is not None and len(p) >= 24 and p[0] == 0x45 and p[9] in (6, 17) else None
    if memo_key is not None:
        hit = memo.get(memo_key)
        if hit is not None:
            return hit
    key = flow_key(p, plan)
    w = zlib.crc32(key) % jobs if key else 0
    if memo_key is not None:
        if len(memo) > 1 << 18:
            memo.clear()
        memo[memo_key] = w
    return w


def single_process_reasons(net: Any, write_pcap: str | None) -> list[str]:
    """Why this replay cannot be split at all (documented in pathtrace(1))."""
    reasons = []
    if write_pcap:
        reasons.append("--write-pcap")
    nf = net.nf
    if nf is not None and getattr(nf, "nft", None) is not None:
        reasons.append("an nftables ruleset (its counters and limits are not merged across workers)")
    for table in (nf.tables.values() if nf is not None else ()):
        for chain in table.chains.values():
            for rule in chain.rules:
                names = {m.name for m in rule.checks} & VOLATILE_MATCHES
                if rule.target.name in VOLATILE_TARGETS:
                    names.add(rule.target.name)
                reasons.extend(f"{table.name}/{chain.name} rule {rule.num} uses {n}" for n in sorted(names))
    return reasons


@dataclass(slots=True)
class Job:
    """What a worker needs: everything is re-read from files, nothing is shared."""

    host: str
    capture: str
    jobs: int
    ingress: str | None
    strict_mac: bool
    fmt: str
    verbose: bool
    limit: int
    cache: bool
    spool_dir: str


def _counter_cells(net: Any) -> Iterator[Any]:
    """Every object with pkts/bytes counters, in an order all copies of the host agree on."""
    nf = net.nf
    for table in (nf.tables.values() if nf is not None else ()):
        for chain in table.chains.values():
            yield chain
            yield from chain.rules


def run_worker(job: Job, wid: int, net: Any = None) -> dict:
    """One worker: replay the frames of share `wid`, spool their rendered records, return totals.
    `net`: the parent's untouched namespace, this process's own copy through fork (None: load
    job.host)."""
    from pathtrace.capture import read_frames
    from pathtrace.host.loader import load_host
    from pathtrace.render.summary import SummaryCounter
    from pathtrace.render.template import FlowTemplate, flat_for
    from pathtrace.render.record import render_record
    from pathtrace.replay import LineLane, Replayer, ReplayOptions, create_namespace

    import gc
    gc.set_threshold(100_000, 50, 100)
    if net is None:
        net = create_namespace(load_host(job.host))
    gc.freeze()
    plan = ShardPlan.for_net(net)
    start = net.shared_state()
    replayer = Replayer(net, ReplayOptions(ingress=job.ingress, strict_mac=job.strict_mac, record=job.fmt != "none",
                                           emit_frames=job.fmt != "none", cache=job.cache))
    counter = SummaryCounter()
    hh_inits = net.neigh.hh_inits
    hh_first: dict[tuple[int, str], int] = {}
    memo: dict[bytes, int] = {}

    def mine(frame: Frame) -> bool:
        return shard(frame, plan, job.jobs, memo) == wid
    if job.fmt == "none":
        replayer.stream(read_frames(job.capture), counter, job.limit, accept=mine)
    else:
        with open(os.path.join(job.spool_dir, f"{wid}"), "w") as spool:
            seen = len(hh_inits)

            def emit(record: Any, frame: Frame) -> None:
                nonlocal seen
                filled = hh_inits[seen:]           # header caches this record's path filled
                seen = len(hh_inits)
                for key in filled:
                    hh_first.setdefault(key, record.index)
                text = render_record(record, frame, job.fmt, job.verbose)
                alt = render_record(_with_hh_cached(record, filled[0], net), frame, job.fmt, job.verbose) \
                    if len(filled) == 1 else ""
                spool.write(f"{record.index} {len(text)} {len(alt)}\n{text}{alt}")

            def lines_chunk(data: bytes) -> None:
                text = data.decode("ascii")
                spool.write(f"L {len(text)} 0\n{text}")
            # JSON lines only: the merge finds each record's index at the start of its line
            lines = LineLane(FlowTemplate, flat_for, lines_chunk) if job.fmt == "jsonl" else None
            replayer.stream(read_frames(job.capture), counter, job.limit, emit=emit, lines=lines, accept=mine)
    replayer.flush()
    return {"verdicts": counter.verdicts, "emitted": counter.emitted, "packets": counter.packets,
            "devices": {d.name: (d.rx_packets, d.rx_dropped, d.tx_packets, d.tx_bytes) for d in net.devices.values()},
            "cells": [(c.pkts, c.bytes) for c in _counter_cells(net)],
            "count": replayer.count, "otherhost": replayer.otherhost_drops, "readdressed": replayer.readdressed,
            "coupled": net.shared_state() != start, "hh_first": hh_first}


def _with_hh_cached(record: Any, key: tuple[int, str], net: Any) -> Any:
    """The record as it reads when another worker's flow had already filled the neighbour's
    header cache: neigh_output takes neigh_hh_output instead of neigh_resolve_output."""
    from dataclasses import replace

    from pathtrace.lib.inet import mac_ntoa, ntoa
    from pathtrace.trace import Step
    n = net.neigh.entries[key]
    name = ntoa(key[0])
    path = [Step("neigh_hh_output", s.depth, {"neighbour": name, "state": s.detail.get("state"),
                                              "lladdr": mac_ntoa(n.lladdr)})
            if s.fn == "neigh_resolve_output" and s.detail.get("neighbour") == name else s
            for s in record.path]
    return replace(record, path=path, flow=None)      # not the cached entry's path any more


def _spooled(path: str) -> Iterator[tuple[int, str, str]]:
    with open(path) as fh:
        while True:
            head = fh.readline()
            if not head:
                return
            index, size, alt = head.split()
            if index == "L":      # JSON lines the C lane wrote from flow templates, each starting {"index":N,
                for line in fh.read(int(size)).splitlines(keepends=True):
                    yield int(line[9:line.index(",", 9)]), line, ""
                continue
            yield int(index), fh.read(int(size)), fh.read(int(alt))


def _worker_process(job: Job, wid: int, net: Any, send: Any) -> None:
    """A worker process's body: run_worker's totals, or its exception, back through the pipe."""
    try:
        send.send(("ok", run_worker(job, wid, net)))
    except BaseException as exc:     # re-raised in the parent (a CaptureError keeps its message)
        try:
            send.send(("error", exc))
        except Exception:
            send.send(("error", RuntimeError(f"--jobs worker {wid}: {type(exc).__name__}: {exc}")))
    finally:
        send.close()


def replay_parallel(job: Job, net: Any, counter: Any, replayer: Any, out: TextIO) -> bool:
    """Run the workers; on success write the merged records to `out`, add their totals to
    `counter`, `net` and `replayer` and return True.  False: shared state was touched, nothing
    was written, the caller replays in one process."""
    ctx = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="pathtrace-jobs-") as spool_dir:
        job.spool_dir = spool_dir
        workers = []
        for w in range(job.jobs):      # forked, each with its own copy of the untouched namespace
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_process, args=(job, w, net, send))
            proc.start()
            send.close()
            workers.append((proc, receive))
        replies = []
        try:
            for proc, receive in workers:
                replies.append(receive.recv())
                proc.join()
        except BaseException:           # SIGINT (or a lost worker): stop the others, do not wait for them
            for proc, _ in workers:
                if proc.is_alive():
                    proc.terminate()
                proc.join()
            raise
        errors = [value for status, value in replies if status != "ok"]
        if errors:
            raise errors[0]                 # e.g. a CaptureError: the caller reports it as for one process
        results = [value for _, value in replies]
        if any(r["coupled"] for r in results):
            return False
        first: dict = {}
        for r in results:
            for key, index in r["hh_first"].items():
                first[key] = min(index, first.get(key, index))
        firsts = set(first.values())
        if job.fmt != "none":
            streams = [_spooled(os.path.join(spool_dir, f"{w}")) for w in range(job.jobs)]
            for index, text, alt in heapq.merge(*streams, key=lambda item: item[0]):
                out.write(alt if alt and index not in firsts else text)
    cells = list(_counter_cells(net))
    devices = net.devices
    for r in results:
        counter.verdicts.update(r["verdicts"])
        counter.emitted.update(r["emitted"])
        counter.packets += r["packets"]
        for name, (rx, rxd, tx, txb) in r["devices"].items():
            d = devices[name]
            d.rx_packets += rx
            d.rx_dropped += rxd
            d.tx_packets += tx
            d.tx_bytes += txb
        for cell, (pkts, nbytes) in zip(cells, r["cells"]):
            cell.pkts += pkts
            cell.bytes += nbytes
        replayer.count += r["count"]
        replayer.otherhost_drops += r["otherhost"]
        replayer.readdressed += r["readdressed"]
    return True
