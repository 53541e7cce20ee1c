"""connlimit (xt_connlimit.c over nf_conncount.c): how many connections a source (or
destination) prefix has open, as seen by this rule.

Each rule keeps nf_conncount's lists: per key (address & mask) the connections whose packets
it evaluated.  An evaluation adds the packet's connection when the list lacks it, and evicts
connections conntrack no longer holds or whose TCP state is TIME_WAIT/CLOSE (already_closed);
the match is `count > limit` (--connlimit-above) or its inverse (--connlimit-upto).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pathtrace.lib.inet import ntoa, prefix_mask
from pathtrace.net.netfilter.x_tables import ExtSpec, Opt, RuleCtx, XtError, XtMatch
from pathtrace.net.netfilter.xt_util import parse_int


@dataclass(slots=True)
class ConnCount:
    """nf_conncount_data: key -> the connections counted for it (conntrack objects)."""

    lists: dict[int, list] = field(default_factory=dict)


def _closed(ct) -> bool:
    from pathtrace.net.netfilter.nf_conntrack_proto_tcp import CLOSE, TIME_WAIT, TcpState
    return isinstance(ct.proto, TcpState) and ct.proto.state in (TIME_WAIT, CLOSE)


def nf_conncount_count(data: ConnCount, key: int, ct, table, now: float) -> int:
    """Count the key's live connections, adding `ct` if it is not counted yet."""
    conns = data.lists.setdefault(key, [])
    live = []
    for other in conns:
        if other is ct:
            continue
        hit = table.hash.get(other.orig) if table is not None else None
        if hit is None or hit[0] is not other or other.timeout <= now or _closed(other):
            continue                                   # find_or_evict / already_closed
        live.append(other)
    if ct is not None and not _closed(ct):
        live.append(ct)
    data.lists[key] = live
    if not live:
        del data.lists[key]
    return len(live)


def build(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    limit = None
    invert = False
    plen = 32
    use_daddr = False
    for o in opts:
        if o.name in ("--connlimit-above", "--connlimit-upto"):
            if limit is not None:
                raise XtError("connlimit: --connlimit-above and --connlimit-upto are mutually exclusive")
            limit = parse_int(o.arg, 0, 0xFFFFFFFF, "connlimit limit")
            invert = (o.name == "--connlimit-upto") != o.invert
        elif o.name == "--connlimit-mask":
            plen = parse_int(o.arg, 0, 32, "connlimit mask")
        elif o.name == "--connlimit-daddr":
            use_daddr = True
    if limit is None:
        raise XtError("connlimit: --connlimit-above or --connlimit-upto is required")
    mask = prefix_mask(plen)
    data = ConnCount()

    def count(skb, par) -> int:
        from pathtrace.net.netfilter.nf_conntrack_core import nf_ct_get
        addr = skb.iph.daddr if use_daddr else skb.iph.saddr
        return nf_conncount_count(data, addr & mask, nf_ct_get(skb), par.nf.conntrack, skb.ctx.now)

    def check(skb, par) -> bool:
        return (count(skb, par) > limit) != invert

    def why(skb, par) -> str:
        addr = skb.iph.daddr if use_daddr else skb.iph.saddr
        n = len(data.lists.get(addr & mask, ()))
        return (f"connlimit: {n} connections for {ntoa(addr & mask)}/{plen}, "
                f"{'upto' if invert else 'above'} {limit}")
    return XtMatch("connlimit", check, why, conntrack=True)


MATCHES = {"connlimit": ExtSpec("connlimit", {"--connlimit-above": 1, "--connlimit-upto": 1, "--connlimit-mask": 1,
                                              "--connlimit-saddr": 0, "--connlimit-daddr": 0}, build)}
