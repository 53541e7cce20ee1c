"""`conntrack -L` output for the model's table (conntrack-tools 1.4 default format).

Checked against conntrack v1.4.7 on a 6.18 kernel, e.g.
  tcp      6 117 TIME_WAIT src=10.0.1.2 dst=203.0.113.5 sport=40000 dport=80 src=203.0.113.5
  dst=203.0.113.1 sport=80 dport=40000 [ASSURED] mark=0 use=1
(one line per entry; the remaining timeout is whole seconds, truncated).
"""
from __future__ import annotations

from pathtrace.lib.inet import ntoa
from pathtrace.net.netfilter.nf_conntrack_core import IPS_ASSURED, IPS_SEEN_REPLY, ConntrackTable, NfConn
from pathtrace.net.netfilter.nf_conntrack_tuple import IPPROTO_ICMP, PORT_PROTOS, PROTO_NAMES, Tuple


def _tuple_text(t: Tuple) -> str:
    text = f"src={ntoa(t.src)} dst={ntoa(t.dst)} "
    if t.proto in PORT_PROTOS:
        text += f"sport={t.sport} dport={t.dport} "
    elif t.proto == IPPROTO_ICMP:
        text += f"type={t.dport >> 8} code={t.dport & 0xFF} id={t.sport} "
    return text


def format_conntrack_entry(ct: NfConn, now: float) -> str:
    from pathtrace.net.netfilter.nf_conntrack_proto_tcp import TcpState, STATE_NAMES
    proto = ct.orig.proto
    line = f"{PROTO_NAMES.get(proto, 'unknown'):<8} {proto} {max(0, int(ct.timeout - now))} "
    if isinstance(ct.proto, TcpState):
        line += STATE_NAMES[ct.proto.state] + " "
    line += _tuple_text(ct.orig)
    if not ct.status & IPS_SEEN_REPLY:
        line += "[UNREPLIED] "
    line += _tuple_text(ct.reply)
    if ct.status & IPS_ASSURED:
        line += "[ASSURED] "
    line += f"mark={ct.mark} "
    if ct.zone:
        line += f"zone={ct.zone} "
    return line + "use=1"


def format_conntrack_list(table: ConntrackTable, now: float) -> str:
    """All live entries, one per line (what `conntrack -L` prints on stdout)."""
    return "\n".join(format_conntrack_entry(ct, now) for ct in table.entries(now))


def conntrack_summary_line(table: ConntrackTable, now: float) -> str:
    """The line conntrack -L prints on stderr."""
    return f"conntrack v1.4.7 (conntrack-tools): {len(table.entries(now))} flow entries have been shown."


def _tuple_json(t: Tuple) -> dict:
    out = {"src": ntoa(t.src), "dst": ntoa(t.dst)}
    if t.proto in PORT_PROTOS:
        out.update(sport=t.sport, dport=t.dport)
    elif t.proto == IPPROTO_ICMP:
        out.update(type=t.dport >> 8, code=t.dport & 0xFF, id=t.sport)
    return out


def conntrack_entry_json(ct: NfConn, now: float) -> dict:
    """One entry with the fields conntrack -L prints, as data (conntrack -o json has no stable form)."""
    from pathtrace.net.netfilter.nf_conntrack_proto_tcp import STATE_NAMES, TcpState
    entry = {"proto": PROTO_NAMES.get(ct.orig.proto, "unknown"), "protonum": ct.orig.proto,
             "timeout": max(0, int(ct.timeout - now)),
             "state": STATE_NAMES[ct.proto.state] if isinstance(ct.proto, TcpState) else None,
             "original": _tuple_json(ct.orig), "reply": _tuple_json(ct.reply),
             "status": ct.status_names(), "mark": ct.mark}
    if ct.zone:
        entry["zone"] = ct.zone
    return entry
