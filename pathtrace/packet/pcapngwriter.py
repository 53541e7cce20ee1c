"""`--write-pcapng`: the replay as a pcapng file Wireshark and tshark can filter.

Every input frame and every frame the host sent, each on its interface's block (an IDB per host
interface, named), with the EPB direction flag (inbound for what arrived, outbound for what left) and
a comment that says what the model decided: verdict, drop reason, deciding rule, egress and a short
path.  `tshark -r out.pcapng -Y 'frame.comment contains "NETFILTER_DROP"'` lists the dropped packets.
Each packet is one write, so an interrupted run leaves a file that ends on a whole block.
"""
from __future__ import annotations

import struct
from typing import Any, BinaryIO

from pathtrace.packet.pcapwriter import OwnedFile

LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
OPT_COMMENT, EPB_FLAGS, IF_NAME, SHB_USERAPPL, OPT_END = 1, 2, 2, 4, 0
FLAG_INBOUND, FLAG_OUTBOUND = 1, 2
PATH_NAMES = 12          # at most this many distinct top-level function names in a comment


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(btype: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", btype, length) + body + struct.pack("<I", length)


def record_comment(record: Any) -> str:
    """What the model decided about one input frame, in one line."""
    from pathtrace.render.brief import deciding_rule, rule_words
    parts = [f"pathtrace #{record.index}: {record.verdict}"]
    if record.reason:
        parts.append(f"reason {record.reason}")
    rule = deciding_rule(record)
    if rule is not None:
        parts.append(f"rule {rule_words(rule)}")
    if record.egress:
        parts.append(f"egress {record.egress}")
    names: list[str] = []
    for step in record.path:
        if step.depth == 0 and step.fn not in names:
            names.append(step.fn)
    if names:
        shown = names if len(names) <= PATH_NAMES else names[:PATH_NAMES // 2] + ["..."] + names[-PATH_NAMES // 2:]
        parts.append("path " + " > ".join(shown))
    return "; ".join(parts)


class PcapngWriter(OwnedFile):
    """One section with an interface block per host interface; blocks are added as frames come."""

    def __init__(self, dest: str | BinaryIO, interfaces: list[str]):
        self._open(dest)
        self._ids: dict[str, int] = {}
        shb = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _option(SHB_USERAPPL, b"pathtrace") + _option(OPT_END, b"")
        head = _block(0x0A0D0D0A, shb)
        for name in interfaces:
            head += self._idb(name)
        self._f.write(head)
        self.count = 0

    def _idb(self, name: str) -> bytes:
        self._ids[name] = len(self._ids)
        body = struct.pack("<HHI", LINKTYPE_ETHERNET, 0, SNAPLEN) + _option(IF_NAME, name.encode()) + _option(OPT_END, b"")
        return _block(1, body)

    def _epb(self, iface: str, frame: bytes, ts: float, flags: int, comment: str) -> bytes:
        prefix = b"" if iface in self._ids else self._idb(iface)
        ticks = round(ts * 1_000_000)
        data = bytes(frame[:SNAPLEN])
        body = struct.pack("<IIIII", self._ids[iface], ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(frame))
        body += data + b"\0" * (-len(data) % 4)
        body += _option(OPT_COMMENT, comment.encode("utf-8", "replace")) + _option(EPB_FLAGS, struct.pack("<I", flags))
        return prefix + _block(6, body + _option(OPT_END, b""))

    def write_record(self, record: Any, frame: Any) -> None:
        """The input frame (inbound, with the model's decision) and what the host sent because of it."""
        from pathtrace.capture.filter import ethernet_bytes
        out = b""
        inbound = record.agreement is None
        out += self._epb(record.ingress or "?", ethernet_bytes(frame), record.time,
                         FLAG_INBOUND if inbound else FLAG_OUTBOUND, record_comment(record))
        for e in record.emitted:
            if e.frame:
                out += self._epb(e.dev, e.frame, record.time, FLAG_OUTBOUND,
                                 f"pathtrace #{record.index}: {e.kind} by the host")
        self._f.write(out)              # one write per record: an interrupt leaves whole blocks
        self.count += 1
