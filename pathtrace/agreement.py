"""Capture agreement: the frames a capture shows the host sending, against the frames the model sent.

A capture taken on a real host holds both what the host received and what it sent.
The model predicts part of what it sent (kernel replies: SYN-ACK, ACK, RST, ICMP,
ARP; forwarded copies of received frames).  Every frame the capture shows leaving is
looked up among the model's pending predictions on the same interface; a match makes
the frame "predicted as #N's reply/forward" and lists how the two differ.  A
prediction nobody matched within PREDICTION_TTL seconds (or by the end) counts as
"not in the capture" when the capture covers its interface (shows the host sending
on it at all).  This turns every bidirectional capture into a check of the model.

This is the replay engine's bookkeeping, not a model of the kernel: it never changes
the model's state, and the model never reads it.
"""
from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any

PREDICTION_TTL = 3.0        # seconds a prediction waits for its frame (delayed ACKs, ARP retries fit)
FAST_SWEEP = 1 << 16        # the C lane's predictions are swept for expired ones past this many

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
IP_MF, IP_OFFSET, IP_DF = 0x2000, 0x1FFF, 0x4000


@dataclass(slots=True)
class Identity:
    """What names a frame for matching (`key`) and the fields compared once matched (`fields`)."""

    key: tuple
    fields: dict[str, Any]
    origin: str          # kernel | application | forwarded | unknown: who would have built it


_TCP_OPTION_NAMES = {2: "mss", 3: "wscale", 4: "sackOK", 5: "sack", 8: "TS", 1: "nop", 0: "eol"}


def _tcp_options(opts: bytes) -> tuple[list[str], dict[str, int]]:
    kinds: list[str] = []
    values: dict[str, int] = {}
    i = 0
    names = _TCP_OPTION_NAMES
    while i < len(opts):
        kind = opts[i]
        if kind == 0:
            break
        if kind == 1:
            kinds.append("nop")
            i += 1
            continue
        if i + 1 >= len(opts) or opts[i + 1] < 2:
            kinds.append(f"bad{kind}")
            break
        length = opts[i + 1]
        body = opts[i + 2:i + length]
        kinds.append(names.get(kind, f"opt{kind}"))
        if kind == 2 and len(body) == 2:
            values["mss"] = struct.unpack("!H", body)[0]
        elif kind == 3 and len(body) == 1:
            values["wscale"] = body[0]
        elif kind == 8 and len(body) == 8:
            values["tsecr"] = struct.unpack("!I", body[4:])[0]
        i += length
    return kinds, values


def identify(ethertype: int, l3: bytes, local_addrs: set[int], default_ttl: int = 64) -> Identity | None:
    """The identity of a frame the host sent (L3 bytes after the link header); None if unparsable.

    A frame from a local address with another TTL than the host's ip_default_ttl is taken for a
    forwarded one whose source NAT rewrote (MASQUERADE): the host's own sockets use the default."""
    if ethertype == ETH_P_ARP:
        if len(l3) < 28:
            return None
        op = struct.unpack_from("!H", l3, 6)[0]
        spa, tpa = struct.unpack_from("!I", l3, 14)[0], struct.unpack_from("!I", l3, 24)[0]
        return Identity(("arp", op, spa, tpa), {"arp_op": op, "tha": l3[18:24].hex() if op == 2 else ""}, "kernel")
    if ethertype != ETH_P_IP or len(l3) < 20 or l3[0] >> 4 != 4:
        return None
    ihl = (l3[0] & 15) * 4
    tot_len, ip_id, frag_off, ttl, proto = struct.unpack_from("!HHHBB", l3, 2)
    saddr, daddr = struct.unpack_from("!II", l3, 12)
    l4 = l3[ihl:tot_len] if ihl <= tot_len <= len(l3) else l3[ihl:]
    fields: dict[str, Any] = {"tot_len": tot_len, "ttl": ttl, "df": bool(frag_off & IP_DF), "tos": l3[1]}
    local = saddr in local_addrs and ttl == default_ttl
    origin = "application" if local else "forwarded"
    if frag_off & (IP_MF | IP_OFFSET):
        fields["ip_id"] = ip_id
        return Identity(("ip", saddr, daddr, proto, "frag", ip_id, frag_off & IP_OFFSET), fields, origin)
    if proto == 6 and len(l4) >= 20:
        sport, dport, seq, ack = struct.unpack_from("!HHII", l4)
        doff = (l4[12] >> 4) * 4
        flags = l4[13]
        kinds, values = _tcp_options(l4[20:doff])
        fields.update(seq=seq, ack=ack, window=struct.unpack_from("!H", l4, 14)[0], options=",".join(kinds),
                      data=max(0, len(l4) - doff), **values)
        if local:
            # a segment without data, or a SYN-ACK/RST, is the kernel's; data, SYN, FIN are an application's doing
            if flags & TCP_RST or (flags & TCP_SYN and flags & TCP_ACK) or (
                    not flags & (TCP_SYN | TCP_FIN) and len(l4) <= doff):
                origin = "kernel"
        key = ("ip", saddr, daddr, proto, sport, dport, flags & 0x3F)
        if not local:
            key += (seq,)
        return Identity(key, fields, origin)
    if proto == 17 and len(l4) >= 8:
        sport, dport, ulen = struct.unpack_from("!HHH", l4)
        fields["udp_len"] = ulen
        return Identity(("ip", saddr, daddr, proto, sport, dport, ip_id if not local else None), fields, origin)
    if proto == 1 and len(l4) >= 8:
        itype, code = l4[0], l4[1]
        if itype in (0, 8, 13, 14):
            ident, seq = struct.unpack_from("!HH", l4, 4)
            key = ("ip", saddr, daddr, proto, itype, code, ident, seq)
            if local and itype == 0:
                origin = "kernel"                 # echo replies are icmp_echo's
        else:
            inner = l4[8:]
            quoted: tuple = ()
            if len(inner) >= 20:
                ihl2 = (inner[0] & 15) * 4
                quoted = (inner[9], inner[12:20].hex(), inner[ihl2:ihl2 + 4].hex())
            key = ("ip", saddr, daddr, proto, itype, code) + quoted
            if local:
                origin = "kernel"                 # errors are __icmp_send's
        fields["icmp"] = f"{itype}/{code}"
        return Identity(key, fields, origin)
    return Identity(("ip", saddr, daddr, proto, ip_id), fields, origin)


# Fields that a model cannot know and a real host chooses at random or by clock.
_UNKNOWABLE = {"seq", "ip_id", "window"}


def differences(predicted: Identity, seen: Identity, forwarded: bool) -> list[str]:
    """How a matched prediction differs from the captured frame, as 'field: model X, capture Y'."""
    out = []
    for name, value in seen.fields.items():
        if name in _UNKNOWABLE and not forwarded:
            continue
        mine = predicted.fields.get(name)
        if mine != value:
            out.append(f"{name}: model {mine}, capture {value}")
    return out


@dataclass(slots=True, eq=False)
class Prediction:
    index: int                    # the input record whose processing emitted it
    time: float
    dev: str
    kind: str                     # generated | forwarded | released
    frame: bytes
    identity: Identity | None = None    # computed only when an exact match failed while it waited
    matched: bool = False


def l3_of(ethertype: int, l3: bytes) -> bytes:
    """The network-layer bytes without Ethernet padding (IPv4 tot_len, ARP's 28 bytes)."""
    if ethertype == ETH_P_IP and len(l3) >= 4:
        return bytes(l3[:struct.unpack_from("!H", l3, 2)[0]])
    if ethertype == ETH_P_ARP:
        return bytes(l3[:28])
    return bytes(l3)


@dataclass
class Agreement:
    """Pending predictions and the running figures for --summary and JSON.

    A captured frame is first looked up by its exact bytes on its interface (forwarded copies
    and most replies match so, at the cost of one dict lookup); only when that fails are the
    waiting predictions identified (`identify`) and matched by identity, with differences.
    Matched predictions are flagged and dropped lazily from the queues, so memory is bounded
    by what the model sent in the last PREDICTION_TTL seconds that the capture did not show."""

    local_addrs: set[int]
    default_ttl: int = 64
    exact: dict[tuple, deque] = field(default_factory=dict)     # (dev, ethertype, l3 bytes) -> predictions
    pending: dict[tuple, deque] = field(default_factory=dict)   # (dev, identity key) -> predictions
    unidentified: list = field(default_factory=list)            # predictions not yet in `pending`
    expiry: deque = field(default_factory=deque)          # predictions in time order, for expiring
    sent_devices: set[str] = field(default_factory=set)   # interfaces the capture shows the host sending on
    sent: int = 0                                         # frames the capture shows the host sending
    by_origin: dict[str, int] = field(default_factory=dict)
    predicted: int = 0
    differ: int = 0
    unpredicted_kernel: int = 0
    examples: list[str] = field(default_factory=list)     # the first differences, for the summary
    predictions: dict[str, int] = field(default_factory=dict)   # per device: predictions made
    unseen: dict[str, int] = field(default_factory=dict)        # per device: never matched
    unseen_examples: list[tuple] = field(default_factory=list)   # (device, text, time, index), by time
    recent: deque = field(default_factory=deque)          # (index, time, emitted) before the first sent frame
    inferred: int = 0                 # forwarded frames whose arrival the capture does not show
    inferred_forwarded: int = 0       # of those, the model forwarded as captured
    # Predictions the C lane (_fastpath) registered for the frames of the flows it served:
    # (dev, ethertype, l3 bytes) -> [count, kind, time of the last, index of the last]; the lane
    # consumes them for the sent frames it serves and counts those in fast_sent (kind -> frames).
    fast: dict[tuple, list] = field(default_factory=dict)
    fast_sent: dict[str, int] = field(default_factory=dict)
    fast_sweep_at: int = FAST_SWEEP
    fast_sweep_time: float = float("-inf")               # capture time of the next sweep by time
    last_expire: float = float("-inf")                    # the time of the last `expire`
    expiry_fast: deque = field(default_factory=deque)     # promoted C predictions, in time order

    # ---- predictions -----------------------------------------------------------------
    def stash(self, index: int, time: float, emitted: list) -> None:
        """Keep what the model sent before the capture showed any frame of the host's: cheap, and
        turned into predictions (`predict`) if a sent frame follows within PREDICTION_TTL."""
        recent = self.recent
        recent.append((index, time, emitted))
        while recent[0][1] < time - PREDICTION_TTL:
            recent.popleft()

    def take_stash(self) -> None:
        while self.recent:
            self.predict(*self.recent.popleft())

    def predict(self, index: int, time: float, emitted: list) -> None:
        """Note the frames the model sent while processing input record `index`."""
        predictions = self.predictions
        for e in emitted:
            frame = e.frame
            if len(frame) < 14:
                continue
            ethertype = (frame[12] << 8) | frame[13]
            p = Prediction(index, time, e.dev, e.kind, frame)
            self.exact.setdefault((e.dev, ethertype, l3_of(ethertype, frame[14:])), deque()).append(p)
            self.unidentified.append(p)
            self.expiry.append(p)
            predictions[e.dev] = predictions.get(e.dev, 0) + 1

    def _identify_waiting(self) -> None:
        for p in self.unidentified:
            if p.matched:
                continue
            ethertype = (p.frame[12] << 8) | p.frame[13]
            p.identity = identify(ethertype, p.frame[14:], self.local_addrs, self.default_ttl)
            if p.identity is not None:
                self.pending.setdefault((p.dev, p.identity.key), deque()).append(p)
        self.unidentified.clear()

    def expire(self, now: float) -> None:
        """Predictions older than PREDICTION_TTL that nothing matched are not in the capture."""
        self.last_expire = now
        expiry = self.expiry
        limit = now - PREDICTION_TTL
        for expiry in (expiry, self.expiry_fast):
            while expiry and (expiry[0].matched or expiry[0].time < limit):
                p = expiry.popleft()
                if not p.matched:
                    self._unseen(p)
        if self.fast and (len(self.fast) > self.fast_sweep_at or now >= self.fast_sweep_time):
            # by size, and once per PREDICTION_TTL of capture time: the lane's dict stays bounded
            # by what the model sent in the last two TTLs, at one pass over it per TTL
            self._sweep_fast(limit)
            self.fast_sweep_at = max(FAST_SWEEP, 2 * len(self.fast))
            self.fast_sweep_time = now + PREDICTION_TTL

    def _promote_fast(self) -> None:
        """Turn the C lane's predictions into Python's (exact, identity and expiry queues), for a
        match by identity; each is promoted once, so this costs one pass over them in all."""
        fast = self.fast
        if not fast:
            return
        items = sorted(fast.items(), key=lambda kv: kv[1][2])
        fast.clear()                              # in place: the lane holds this dict
        for key, (count, kind, time, index) in items:
            dev, ethertype, l3 = key
            frame = bytes(12) + ethertype.to_bytes(2, "big") + l3
            queue = self.exact.setdefault(key, deque())
            for _ in range(count):
                p = Prediction(index, time, dev, kind, frame)
                queue.append(p)
                self.unidentified.append(p)
                self.expiry_fast.append(p)

    def _sweep_fast(self, limit: float) -> None:
        """The C lane's predictions last registered before `limit` are not in the capture."""
        fast = self.fast
        for key in [k for k, rec in fast.items() if rec[2] < limit]:
            self._fast_unseen(key, fast.pop(key))

    def _fast_unseen(self, key: tuple, rec: list) -> None:
        dev, ethertype, l3 = key
        count, kind, time, index = rec
        for _ in range(count):
            self._unseen_counted(dev, kind, time, index, ethertype, l3, None)

    def _unseen(self, p: Prediction) -> None:
        p.matched = True                       # out of every queue (dropped lazily)
        self._unseen_counted(p.dev, p.kind, p.time, p.index, (p.frame[12] << 8) | p.frame[13], p.frame[14:],
                             p.identity)

    def _unseen_counted(self, dev: str, kind: str, time: float, index: int, ethertype: int, l3: bytes,
                        ident: "Identity | None") -> None:
        """Count a prediction not in the capture; the examples are the earliest five per device
        (whatever order they were found in: the C lane's are found later, in sweeps)."""
        self.unseen[dev] = self.unseen.get(dev, 0) + 1
        mine = [x for x in self.unseen_examples if x[0] == dev]
        if len(mine) >= 5 and (time, index) >= max((x[2], x[3]) for x in mine):
            return
        ident = ident or identify(ethertype, l3, self.local_addrs, self.default_ttl)
        text = f"#{index} {dev} {kind} {_describe_key(ident.key) if ident else bytes(l3).hex()}"
        self.unseen_examples.append((dev, text, time, index))
        if len(mine) >= 5:
            worst = max(mine, key=lambda x: (x[2], x[3]))
            self.unseen_examples.remove(worst)
        self.unseen_examples.sort(key=lambda x: (x[2], x[3]))

    def forget_arp_request(self, dev: str, target: int) -> None:
        """Pending ARP requests for `target` were the model's guesses about neighbour state from before
        the capture began (the capture shows the host already had the entry): not disagreements."""
        for p in self.expiry:
            if (not p.matched and p.dev == dev and p.frame[12:14] == b"\x08\x06" and len(p.frame) >= 42
                    and p.frame[20:22] == b"\x00\x01" and struct.unpack_from("!I", p.frame, 38)[0] == target):
                p.matched = True
                self.predictions[dev] -= 1

    def finish(self) -> None:
        self.expire(float("inf"))
        self._sweep_fast(float("inf"))
        self._absorb()

    def _absorb(self) -> None:
        """Add the sent frames the C lane served (all predicted exactly) to the figures."""
        for kind, n in self.fast_sent.items():
            origin = "forwarded" if kind == "forwarded" else "kernel"
            self.sent += n
            self.predicted += n
            self.by_origin[origin] = self.by_origin.get(origin, 0) + n
        self.fast_sent.clear()

    def lane_args(self, macs: dict[bytes, str], devnames: dict[bytes, str]) -> tuple:
        """What the C lane (_fastpath.serve_pcap's `agree`) takes: the host's MACs and interface
        names (bytes -> name), the predictions it registers and consumes, the per-device count of
        predictions made, the served sent frames by kind, the interfaces sent on, the TTL."""
        return (macs, devnames, self.fast, self.predictions, self.fast_sent, self.sent_devices, PREDICTION_TTL)

    def fast_sent_total(self) -> int:
        return sum(self.fast_sent.values())

    # ---- frames the capture shows the host sending ----------------------------------------
    def match_exact(self, dev: str, ethertype: int, l3: bytes) -> Prediction | None:
        """The oldest waiting prediction with exactly these bytes on this interface."""
        key = (dev, ethertype, l3_of(ethertype, l3))
        queue = self.exact.get(key)
        while queue:
            p = queue.popleft()
            if not p.matched:
                if not queue:
                    del self.exact[key]
                p.matched = True
                return p
        if queue is not None:
            del self.exact[key]
        return self._match_fast(key)

    def _match_fast(self, key: tuple) -> Prediction | None:
        """A prediction the C lane registered with exactly these bytes (expired ones are unseen)."""
        rec = self.fast.get(key)
        if rec is None:
            return None
        count, kind, time, index = rec
        if time < self.last_expire - PREDICTION_TTL:
            self._fast_unseen(key, self.fast.pop(key))
            return None
        if count <= 1:
            del self.fast[key]
        else:
            rec[0] = count - 1
        return Prediction(index, time, key[0], kind, b"", None, True)

    def match(self, dev: str, ident: Identity) -> Prediction | None:
        """The oldest waiting prediction of this frame on this interface by identity (same ack first
        for TCP), once exact bytes found none."""
        self._promote_fast()
        self._identify_waiting()
        key = (dev, ident.key)
        queue = self.pending.get(key)
        if queue is None:
            return None
        live = [p for p in queue if not p.matched]
        if not live:
            del self.pending[key]
            return None
        best = live[0]
        ack = ident.fields.get("ack")
        if ack is not None and best.identity.fields.get("ack") != ack:
            best = next((p for p in live if p.identity.fields.get("ack") == ack), best)
        best.matched = True
        queue.remove(best)
        if not queue:
            del self.pending[key]
        return best

    def note_sent(self, index: int, dev: str, origin: str, prediction: Prediction | None,
                  diffs: list[str], inferred: bool = False) -> None:
        if inferred:
            self.inferred += 1
            self.inferred_forwarded += prediction is not None
        self.sent += 1
        self.sent_devices.add(dev)
        self.by_origin[origin] = self.by_origin.get(origin, 0) + 1
        if prediction is not None:
            self.predicted += 1
            if diffs:
                self.differ += 1
                if len(self.examples) < 5:
                    self.examples.append(f"#{index} ({'; '.join(diffs)})")
        elif origin in ("kernel", "forwarded"):
            self.unpredicted_kernel += 1
            if len(self.examples) < 5:
                self.examples.append(f"#{index} not predicted ({origin})")

    # ---- figures -------------------------------------------------------------------------
    def figures(self) -> dict[str, Any]:
        self._absorb()
        covered = sorted(self.sent_devices)
        made = sum(n for d, n in self.predictions.items() if d in self.sent_devices)
        lost = sum(n for d, n in self.unseen.items() if d in self.sent_devices)
        expected = self.by_origin.get("kernel", 0) + self.by_origin.get("forwarded", 0)
        return {"sent": self.sent, "by_origin": dict(sorted(self.by_origin.items())),
                "predicted": self.predicted, "differ": self.differ,
                "kernel_or_forwarded": expected, "unpredicted_kernel_or_forwarded": self.unpredicted_kernel,
                "covered_interfaces": covered, "model_predictions_on_covered": made,
                "model_predictions_not_in_capture": lost,
                "inferred_arrivals": self.inferred, "inferred_arrivals_forwarded": self.inferred_forwarded,
                "examples": list(self.examples), "not_in_capture_examples": [x[1] for x in self.unseen_examples if x[0] in self.sent_devices][:5]}

    def summary_text(self) -> str:
        f = self.figures()
        if not f["sent"]:
            return ("the capture shows no frame sent by the host (one-way capture): "
                    "the model's own frames were not checked against it")
        lines = [f"the capture shows {f['sent']:,} frames sent by the host "
                 f"({', '.join(f'{n:,} {o}' for o, n in f['by_origin'].items())}); "
                 f"the model predicted {f['predicted']:,}; {f['differ']:,} of them differ"]
        if f["kernel_or_forwarded"]:
            share = 100.0 * (f["kernel_or_forwarded"] - f["unpredicted_kernel_or_forwarded"]) / f["kernel_or_forwarded"]
            lines.append(f"of the {f['kernel_or_forwarded']:,} the kernel built or forwarded, "
                         f"{f['unpredicted_kernel_or_forwarded']:,} were not predicted ({share:.1f}% predicted)")
        if f["inferred_arrivals"]:
            lines.append(f"{f['inferred_arrivals']:,} forwarded frames arrived on interfaces the capture does not cover: "
                         f"replayed as received there, {f['inferred_arrivals_forwarded']:,} were forwarded as captured")
        if f["model_predictions_on_covered"]:
            seen = f["model_predictions_on_covered"] - f["model_predictions_not_in_capture"]
            lines.append(f"the model sent {f['model_predictions_on_covered']:,} frames on captured interfaces "
                         f"({', '.join(f['covered_interfaces'])}); {seen:,} are in the capture, "
                         f"{f['model_predictions_not_in_capture']:,} are not")
        for ex in f["examples"]:
            lines.append(f"  differs: {ex}")
        for ex in f["not_in_capture_examples"]:
            lines.append(f"  not in capture: {ex}")
        return "\n".join(lines)


def origin_of(ident: Identity | None, prediction: Prediction | None) -> str:
    """Who built a sent frame: the prediction knows (a masqueraded forward has a local source)."""
    if prediction is not None:
        forwarded = prediction.kind == "forwarded" or (
            prediction.kind == "released" and ident is not None and ident.origin == "forwarded")
        return "forwarded" if forwarded else "kernel"
    return ident.origin if ident is not None else "unknown"


def _describe_key(key: tuple) -> str:
    from pathtrace.lib.inet import ntoa
    if key[0] == "arp":
        return f"ARP op {key[1]} {ntoa(key[2])} -> {ntoa(key[3])}"
    return f"IP {ntoa(key[1])} > {ntoa(key[2])} proto {key[3]} {' '.join(str(k) for k in key[4:] if k is not None)}"
