"""net/ipv4/ip_fragment.c: reassembly queues keyed like the kernel's (saddr, daddr, id, protocol, user).

A fragment that completes a datagram returns the whole packet; the others stay
queued (verdict FRAG_QUEUED).  Queues expire after ipfrag_time seconds of capture
time (ip_expire: ICMP time exceeded, reassembly, if the first fragment arrived).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pathtrace.lib.checksum import ip_fast_csum
from pathtrace.lib.inet import ntoa
from pathtrace.net.core.skbuff import IP_DF, IP_MF, IP_OFFSET, SkBuff, kfree_skb_reason

IP_DEFRAG_LOCAL_DELIVER = "LOCAL_DELIVER"
IP_DEFRAG_CONNTRACK_IN = "CONNTRACK_IN"
IP_DEFRAG_CONNTRACK_OUT = "CONNTRACK_OUT"


@dataclass(slots=True)
class FragQueue:
    first_seen: float
    pieces: dict[int, bytes] = field(default_factory=dict)   # offset -> data
    total: int | None = None
    first: SkBuff | None = None
    count: int = 0
    max_size: int = 0          # q.max_size: the largest fragment (header included)
    max_df_size: int = 0       # qp->max_df_size: the largest one that carried DF


def ip_defrag(net, skb: SkBuff, user: str) -> SkBuff | None:
    skb.ctx.uncacheable("reassembly")
    ctx = skb.ctx
    iph = skb.iph
    key = (iph.saddr, iph.daddr, iph.id, iph.protocol, user)
    _expire(net, ctx)
    q = net.ip_frags.get(key)
    if q is None:
        q = net.ip_frags[key] = FragQueue(first_seen=ctx.now)
        ctx.step("inet_frag_find", created=True, id=iph.id)
    offset = (iph.frag_off & IP_OFFSET) * 8
    data = bytes(skb.payload)
    end = offset + len(data)
    if not iph.frag_off & IP_MF:
        if q.total is not None and q.total != end:
            return _bad(net, key, skb, "conflicting last fragment")
        q.total = end
    elif len(data) % 8:
        return _bad(net, key, skb, "fragment length not a multiple of 8")
    if end > 65535 - iph.ihl * 4:
        return _bad(net, key, skb, "reassembled size over 65535", "FRAG_TOO_FAR")
    if offset in q.pieces and q.pieces[offset] == data:
        ctx.step("ip_defrag", result="duplicate fragment")
        kfree_skb_reason(skb, "DUP_FRAG")
        return None
    q.pieces[offset] = data
    q.count += 1
    fragsize = len(data) + iph.ihl * 4
    q.max_size = max(q.max_size, fragsize)
    if iph.frag_off & IP_DF:
        q.max_df_size = max(q.max_df_size, fragsize)
    if offset == 0:
        q.first = skb
    ctx.step("ip_defrag", user=user, offset=offset, length=len(data), more=bool(iph.frag_off & IP_MF))
    if q.total is None or q.first is None:
        skb.verdict = "FRAG_QUEUED"
        return None
    buf = bytearray(q.total)
    covered = 0
    for off in sorted(q.pieces):
        piece = q.pieces[off]
        if off > covered:
            skb.verdict = "FRAG_QUEUED"
            return None
        buf[off:off + len(piece)] = piece
        covered = max(covered, off + len(piece))
    if covered < q.total:
        skb.verdict = "FRAG_QUEUED"
        return None
    del net.ip_frags[key]
    # ip_frag_reasm turns the completing fragment itself into the whole datagram
    import copy
    # ip_frag_reasm: frag_max_size makes the output refragment at the sizes that came in; DF is set
    # only when the largest fragments all carried it (IPSKB_FRAG_PMTU)
    frag_max = max(q.max_df_size, q.max_size)
    skb.iph = copy.copy(q.first.iph)
    skb.payload = buf[:q.total]
    skb.iph.frag_off = IP_DF if q.max_df_size == q.max_size else 0
    skb.iph.tot_len = skb.iph.ihl * 4 + q.total
    skb.iph.check = 0
    skb.iph.check = ip_fast_csum(skb.iph.pack())
    skb.cb["frag_max_size"] = frag_max
    whole = skb
    ctx.step("ip_defrag", reassembled=True, fragments=q.count, length=whole.iph.tot_len)
    return whole


def _bad(net, key, skb: SkBuff, why: str, reason: str = "FRAG_REASM_TIMEOUT") -> None:
    net.ip_frags.pop(key, None)
    skb.ctx.step("ip_defrag", result=why)
    kfree_skb_reason(skb, reason if reason != "FRAG_REASM_TIMEOUT" else "NOT_SPECIFIED")
    return None


def _expire(net, ctx) -> None:
    timeout = net.sysctl.glob["ipfrag_time"]
    for key in [k for k, q in net.ip_frags.items() if ctx.now - q.first_seen > timeout]:
        q = net.ip_frags.pop(key)
        ctx.step("ip_expire", id=key[2], src=ntoa(key[0]), fragments=q.count)
        if q.first is not None:
            from pathtrace.net.ipv4.icmp import ICMP_TIME_EXCEEDED, icmp_send
            first = q.first
            first.ctx = ctx
            icmp_send(first, ICMP_TIME_EXCEEDED, 1)
