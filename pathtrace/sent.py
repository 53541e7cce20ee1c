"""The record of a frame the capture shows the host sending.

Predicted frames (the model sent the same frame while handling an earlier input) get
verdict SENT and "predicted: the model sent it while handling #N" (or forwarded #N), with any differences.  Frames the
model did not predict are replayed where they came from: the host's own packets through
an application's send path (net/socket.py), ARP through the neighbour code; forwarded
frames the model did not forward cannot be replayed and are reported as not predicted.
The model never decides from this module; it only routes frames into the model.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable

from pathtrace.agreement import ETH_P_ARP, ETH_P_IP, Agreement, differences, identify, l3_of, origin_of
from pathtrace.capture.frame import Frame
from pathtrace.lib.inet import ntoa
from pathtrace.net.core.neighbour import NUD_VALID
from pathtrace.net.core.neighbour_output import _arp_constructor, neigh_update
from pathtrace.net.ipv4.route import ip_route_output
from pathtrace.trace import SENT, Emitted, PacketContext, PacketRecord

if TYPE_CHECKING:  # pragma: no cover
    from pathtrace.net.core.netdevice import NetDevice

ORIGIN_WORDS = {"generated": "sent", "forwarded": "forward", "released": "released after ARP"}


def sent_frame(ctx: PacketContext, frame: Frame, dev: "NetDevice", agreement: Agreement,
               next_hops: dict, arrival: "Callable[[Frame, NetDevice], PacketRecord | None] | None" = None
               ) -> PacketRecord:
    """The record of a host-sent frame; frames the model sent on the way become predictions."""
    net = ctx.net
    if frame.ethertype == ETH_P_IP and not frame.error:
        _learn_neighbour(ctx, frame, dev, agreement, next_hops)
    agreement.predict(frame.index, frame.ts, ctx.emitted)      # timers and released queues, until now
    fired = len(ctx.emitted)
    info: dict = {"direction": "out"}
    verdict, reason, egress = SENT, None, dev.name
    diffs: list[str] = []
    prediction = None if frame.error else agreement.match_exact(dev.name, frame.ethertype, frame.payload)
    ident = None
    if prediction is None and not frame.error:
        ident = identify(frame.ethertype, frame.payload, net.local_addrs, agreement.default_ttl)
        prediction = agreement.match(dev.name, ident) if ident is not None else None
        if prediction is not None:
            diffs = differences(prediction.identity, ident, prediction.kind == "forwarded")
    elif prediction is not None:
        ident = prediction.identity         # exact bytes: the same frame, no differences
    origin = info["origin"] = origin_of(ident, prediction)
    if prediction is not None:
        info.update(predicted_by=prediction.index, as_=ORIGIN_WORDS.get(prediction.kind, prediction.kind))
        if origin != "forwarded":
            _observe_tcp(net, frame)
    elif frame.error or ident is None:
        verdict = "NOT_MODELLED"
        info["predicted_by"] = None
    elif frame.ethertype == ETH_P_ARP:
        from pathtrace.net.ipv4.arp import arp_send_from_capture
        info["predicted_by"] = None
        arp_send_from_capture(ctx, dev, bytes(frame.payload))
    elif ident.origin == "forwarded":
        info["predicted_by"] = None
        inferred = arrival(frame, dev) if arrival is not None else None
        if inferred is None:
            ctx.warnings.append("the capture shows the host forwarding this frame; the model did not forward it")
        else:
            return _inferred_record(inferred, frame, dev, agreement, ident, info)
    else:
        from pathtrace.net.socket import skb_from_sent, sock_sendmsg
        info["predicted_by"] = None
        skb = skb_from_sent(ctx, bytes(frame.payload), dev)
        if skb is None:
            verdict = "NOT_MODELLED"
        else:
            sock_sendmsg(skb)
            verdict, reason = _sent_verdict(skb)
            egress = skb.cb.get("egress")
            if verdict == "DROP":
                diffs.append(f"the capture shows it leaving {dev.name}; the model drops it ({reason})")
            elif egress is not None and egress != dev.name:
                diffs.append(f"egress: model {egress}, capture {dev.name}")
    own = _own_emission(ctx.emitted[fired:], dev.name, ident, net.local_addrs) if prediction is None else None
    agreement.predict(frame.index, frame.ts, [e for e in ctx.emitted[fired:] if e is not own])
    if diffs:
        info["differences"] = diffs
    info["as"] = info.pop("as_", None)
    agreement.note_sent(frame.index, dev.name, origin, prediction, diffs)
    return PacketRecord(index=frame.index, time=frame.ts, ingress=dev.name, packet="", verdict=verdict,
                        reason=reason, egress=egress if verdict in (SENT, "QUEUED") else None, path=ctx.steps,
                        emitted=ctx.emitted, warnings=ctx.warnings, rules=ctx.verdicts, agreement=info)


def _inferred_record(inferred: PacketRecord, frame: Frame, dev: "NetDevice", agreement: Agreement, ident,
                     info: dict) -> PacketRecord:
    """A forwarded frame whose arrival the capture does not show (it covers only the way out): the
    model ran the arrival it implies (`inferred`); the captured frame is then matched against what
    the model forwarded."""
    agreement.predict(frame.index, frame.ts, inferred.emitted)
    prediction = agreement.match_exact(dev.name, frame.ethertype, frame.payload) or agreement.match(dev.name, ident)
    diffs = differences(prediction.identity, ident, True) if prediction is not None and prediction.identity else []
    info.update(inferred_arrival=inferred.ingress, predicted_by=frame.index if prediction is not None else None,
                **({"as": "forward"} if prediction is not None else {}))
    if prediction is None:
        diffs.append(f"the capture shows it leaving {dev.name}; the model's verdict for its arrival on "
                     f"{inferred.ingress} is {inferred.verdict}" + (f" ({inferred.reason})" if inferred.reason else ""))
    if diffs:
        info["differences"] = diffs
    info.setdefault("as", None)
    agreement.note_sent(frame.index, dev.name, "forwarded", prediction, diffs, inferred=True)
    inferred.warnings.insert(0, f"the capture does not show this frame arriving: replayed as received on "
                                f"{inferred.ingress} (addresses before NAT from conntrack)")
    verdict = SENT if prediction is not None else inferred.verdict
    return PacketRecord(index=frame.index, time=frame.ts, ingress=dev.name, packet="", verdict=verdict,
                        reason=inferred.reason if verdict == "DROP" else None,
                        egress=dev.name if verdict == SENT else inferred.egress, path=inferred.path,
                        emitted=inferred.emitted, warnings=inferred.warnings, rules=inferred.rules, agreement=info)


def _learn_neighbour(ctx: PacketContext, frame: Frame, dev: "NetDevice", agreement: Agreement,
                     next_hops: dict) -> None:
    """A unicast IP frame the host sent proves it had its next hop resolved to the frame's destination
    MAC.  When the model has no valid entry (the host resolved it before the capture began) the entry
    is updated as an ARP reply would (releasing what waited in its queue)."""
    mac = frame.dst_mac
    if mac is None or mac[0] & 1 or len(frame.payload) < 20 or dev.loopback:
        return
    hop = _resolve_from_capture(ctx, dev, int.from_bytes(frame.payload[16:20], "big"), mac, next_hops,
                                before=lambda hop: agreement.forget_arp_request(dev.name, hop))
    if hop is not None:
        ctx.warnings.append(f"neighbour {ntoa(hop)} on {dev.name} taken from this frame's destination MAC: "
                            "the host had resolved it")


def _resolve_from_capture(ctx: PacketContext, dev: "NetDevice", addr: int, mac: bytes, next_hops: dict,
                          before: "Callable[[int], None] | None" = None) -> int | None:
    """Make the next hop towards `addr` on `dev` REACHABLE at `mac` unless the model has it valid
    already (neigh_update, as an ARP reply would); returns the hop it updated.  Routes do not change
    during a replay, so each address is looked up once (`next_hops`, bounded)."""
    net = ctx.net
    route = next_hops.get(addr, -1)
    if route == -1:
        rt = ip_route_output(net, addr)
        ok = not rt.error and rt.type == "unicast" and rt.dev is not None
        route = next_hops[addr] = (rt.dev.name, rt.nexthop(addr)) if ok else None
        if len(next_hops) > 1 << 16:
            next_hops.clear()
    if route is None or route[0] != dev.name:
        return None
    hop = route[1]
    n = net.neigh.lookup(hop, dev.name)
    if n is None:
        n = net.neigh.create(hop, dev.name)
        _arp_constructor(net, n, dev)
    if n.state in NUD_VALID or n.state in ("NOARP", "PERMANENT"):
        return None
    if before is not None:
        before(hop)
    neigh_update(net, n, mac, "REACHABLE", override=True, ctx=ctx)
    return hop


def _sent_verdict(skb) -> tuple[str, str | None]:
    verdict = skb.verdict or "DROP"
    if verdict == "TRANSMIT":
        return SENT, None
    if verdict == "DROP":
        return "DROP", skb.reason or "NOT_SPECIFIED"
    return verdict, None


def _own_emission(emitted: list[Emitted], dev: str, ident, local_addrs: set[int]) -> Emitted | None:
    """The model's copy of the captured frame itself among what its send path emitted."""
    if ident is None:
        return None
    for e in emitted:
        if e.dev == dev and len(e.frame) >= 14:
            other = identify(int.from_bytes(e.frame[12:14], "big"), e.frame[14:], local_addrs, ident.fields.get("ttl", 64))
            if other is not None and other.key == ident.key:
                return e
    return None


def _observe_tcp(net, frame: Frame) -> None:
    """Tell the TCP model what the host really sent (its ISN, timestamps, window, data, FIN)."""
    if frame.ethertype != ETH_P_IP or len(frame.payload) < 40 or frame.payload[9] != 6:
        return
    from pathtrace.net.ipv4.tcp_ipv4 import tcp_observe_sent
    l3 = bytes(frame.payload)
    ihl = (l3[0] & 15) * 4
    tot = min(int.from_bytes(l3[2:4], "big"), len(l3))
    tcp = l3[ihl:tot]
    doff = (tcp[12] >> 4) * 4 if len(tcp) >= 13 else 20
    tcp_observe_sent(net, int.from_bytes(l3[12:16], "big"), int.from_bytes(tcp[0:2], "big"),
                     int.from_bytes(l3[16:20], "big"), int.from_bytes(tcp[2:4], "big"), tcp[:doff],
                     max(0, len(tcp) - doff), frame.ts)


def arrival_frame(net, frame: Frame, out_dev: "NetDevice") -> Frame | None:
    """The frame a forwarded IPv4 frame was when it arrived: addresses and ports before NAT (the
    conntrack entry it belongs to), TTL one more, checksums to match (partial stays partial), on the
    interface of the route back to its source.  `ifname` names that interface; None if not derivable."""
    from pathtrace.lib.checksum import (
        csum_fold, csum_partial, ip_fast_csum, is_partial_csum, l4_checksum, pseudo_header_sum,
    )
    from pathtrace.net.netfilter.nf_conntrack_tuple import nf_ct_invert_tuple, tuple_from_bytes
    l3 = bytearray(l3_of(ETH_P_IP, frame.payload))
    if frame.ethertype != ETH_P_IP or len(l3) < 20 or l3[8] >= 255:
        return None
    ihl = (l3[0] & 15) * 4
    seen = tuple_from_bytes(bytes(l3))
    if seen is None:
        return None
    before = seen
    table = getattr(net.nf, "conntrack", None) if net.nf is not None else None
    inverted = nf_ct_invert_tuple(seen)
    if table is not None and inverted is not None:
        hit = table.hash.get(inverted)
        if hit is not None:
            ct, direction = hit
            before = ct.orig if direction == 1 else ct.reply
    rt = ip_route_output(net, before.src)
    if rt.error or rt.dev is None or rt.dev is out_dev or rt.dev.loopback:
        return None
    partial = is_partial_csum(bytes(l3))
    l3[8] += 1
    struct.pack_into("!II", l3, 12, before.src, before.dst)
    proto = l3[9]
    if proto in (6, 17) and len(l3) >= ihl + 4 and not (struct.unpack_from("!H", l3, 6)[0] & 0x1FFF):
        struct.pack_into("!HH", l3, ihl, before.sport, before.dport)
        off = ihl + (16 if proto == 6 else 6)
        if len(l3) >= off + 2 and not (proto == 17 and l3[off:off + 2] == b"\0\0"):
            l3[off:off + 2] = b"\0\0"
            if partial:
                value = (~csum_fold(pseudo_header_sum(before.src, before.dst, proto, len(l3) - ihl))) & 0xFFFF
            else:
                value = l4_checksum(before.src, before.dst, proto, bytes(l3[ihl:])) or (0xFFFF if proto == 17 else 0)
            struct.pack_into("!H", l3, off, value)
    elif proto == 1 and len(l3) >= ihl + 8 and l3[ihl] in (0, 8):
        struct.pack_into("!H", l3, ihl + 4, before.sport)
        l3[ihl + 2:ihl + 4] = b"\0\0"
        struct.pack_into("!H", l3, ihl + 2, csum_fold(csum_partial(bytes(l3[ihl:]))))
    l3[10:12] = b"\0\0"
    struct.pack_into("!H", l3, 10, ip_fast_csum(bytes(l3[:ihl])))
    n = net.neigh.lookup(rt.nexthop(before.src), rt.dev.name)
    src_mac = n.lladdr if n is not None and n.lladdr else b"\x02\0\0\0\0\0"
    return Frame(index=frame.index, ts=frame.ts, ifname=rt.dev.name, linktype=1, dst_mac=rt.dev.mac,
                 src_mac=src_mac, pkt_type=None, vlan=(), ethertype=ETH_P_IP, payload=bytes(l3),
                 wirelen=len(l3) + 14, caplen=len(l3) + 14, error=None)


def assume_resolved(ctx: PacketContext, dev: "NetDevice", l3: bytes, next_hops: dict) -> None:
    """Traffic flowed through an interface the capture does not cover: the host had resolved the next
    hop towards the inferred arrival's source there (the capture cannot show its ARP)."""
    _resolve_from_capture(ctx, dev, int.from_bytes(l3[12:16], "big"), b"\x02\0\0\0\0\0", next_hops)
