"""net/ipv4/ip_output.c: local output, POST_ROUTING, fragmentation, the neighbour hand-off."""
from __future__ import annotations

from pathtrace.lib.checksum import ip_fast_csum
from pathtrace.lib.inet import ntoa
from pathtrace.net.core.skbuff import IP_DF, IP_MF, IP_OFFSET, SkBuff, kfree_skb_reason
from pathtrace.net.netfilter_hooks import NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING, nf_hook


def ip_local_out(skb: SkBuff) -> None:
    """ip_local_out → __ip_local_out (LOCAL_OUT) → dst_output, for packets the host builds."""
    ctx = skb.ctx
    ctx.step("ip_local_out")
    iph = skb.iph
    iph.tot_len = 20 + len(iph.options) + len(skb.payload)
    iph.check = 0
    iph.check = ip_fast_csum(iph.pack())     # ip_send_check
    ctx.step("__ip_local_out")
    if nf_hook(NF_INET_LOCAL_OUT, skb, None, skb.dst.dev if skb.dst else None):
        dst_output(skb)


def dst_output(skb: SkBuff) -> None:
    ctx = skb.ctx
    ctx.step("dst_output")
    if skb.dst is None or skb.dst.dev is None:
        kfree_skb_reason(skb, "IP_OUTNOROUTES")
        return
    ip_output(skb)


def ip_output(skb: SkBuff) -> None:
    dev = skb.dst.dev
    if skb.dst.type == "broadcast" and not dev.loopback and not skb.cb.get("forwarded"):
        ip_mc_output(skb)
        return
    skb.ctx.step("ip_output", dev=dev.name)
    indev = skb.dev if skb.cb.get("forwarded") else None
    skb.dev = dev
    if nf_hook(NF_INET_POST_ROUTING, skb, indev, dev):
        ip_finish_output(skb)


def ip_mc_output(skb: SkBuff) -> None:
    """dst.output of an RTCF_BROADCAST route the host sends on: a clone goes through POST_ROUTING to
    ip_mc_finish_output, which loops it back in on the same device (dev_loopback_xmit); the packet
    itself leaves as any other."""
    from pathtrace.net.core.dev import dev_loopback_xmit
    ctx = skb.ctx
    dev = skb.dst.dev
    ctx.step("ip_mc_output", dev=dev.name)
    skb.dev = dev
    clone = skb.clone()
    with ctx.nested():
        if nf_hook(NF_INET_POST_ROUTING, clone, None, dev):
            ctx.step("ip_mc_finish_output")
            dev_loopback_xmit(clone, dev)
    if nf_hook(NF_INET_POST_ROUTING, skb, None, dev):
        ip_finish_output(skb)


def ip_finish_output(skb: SkBuff) -> None:
    ctx = skb.ctx
    ctx.step("ip_finish_output")
    ctx.step("__ip_finish_output")
    mtu = skb.dst.rtax_mtu or skb.dst.dev.mtu     # ip_skb_dst_mtu: the route's mtu metric first
    if skb.len > mtu or skb.cb.get("frag_max_size"):    # a reassembled datagram is always refragmented
        ip_fragment(skb, mtu)
        return
    ip_finish_output2(skb)


def ip_fragment(skb: SkBuff, mtu: int) -> None:
    from pathtrace.net.ipv4.icmp import ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, icmp_send
    ctx = skb.ctx
    frag_max = skb.cb.get("frag_max_size") or 0
    if skb.iph.frag_off & IP_DF and (not skb.cb.get("ignore_df") or frag_max > mtu):
        ctx.step("ip_fragment", result=f"len {skb.len} > mtu {mtu} with DF")
        icmp_send(skb, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, mtu)
        kfree_skb_reason(skb, "PKT_TOO_BIG")
        return
    if frag_max and frag_max < mtu:
        mtu = frag_max                  # ip_do_fragment: the largest fragment that came in
    if skb.len <= mtu:
        ip_finish_output2(skb)          # one piece: ip_do_fragment sends it as it is
        return
    ip_do_fragment(skb, mtu)


def ip_do_fragment(skb: SkBuff, mtu: int) -> None:
    """Slow-path fragmentation: 8-byte aligned pieces, options copied only where the kernel copies them."""
    skb.ctx.uncacheable("fragmentation")
    ctx = skb.ctx
    iph = skb.iph
    hlen = 20 + len(iph.options)
    room = (mtu - hlen) & ~7
    data = bytes(skb.payload)
    base_off = (iph.frag_off & IP_OFFSET) * 8
    more = iph.frag_off & IP_MF
    pieces = [data[i:i + room] for i in range(0, len(data), room)]
    ctx.step("ip_do_fragment", mtu=mtu, fragments=len(pieces))
    copied_opts = _copied_options(iph.options)
    # each fragment's frag_off is its offset; DF only for IPSKB_FRAG_PMTU (a reassembled datagram whose
    # largest fragments carried DF, see ip_fragment.py)
    df = iph.frag_off & IP_DF if skb.cb.get("frag_max_size") else 0
    verdicts = []
    for n, piece in enumerate(pieces):
        frag = skb.clone()
        frag.verdict = None
        opts = iph.options if n == 0 else copied_opts
        frag.iph.options = opts
        frag.iph.ihl = 5 + len(opts) // 4
        frag.payload = bytearray(piece)
        last = n == len(pieces) - 1
        frag.iph.frag_off = df | ((base_off + n * room) // 8) | (0 if last and not more else IP_MF)
        frag.iph.tot_len = frag.iph.ihl * 4 + len(piece)
        frag.iph.check = 0
        frag.iph.check = ip_fast_csum(frag.iph.pack())
        ip_finish_output2(frag)
        if frag.verdict == "DROP":
            skb.verdict, skb.reason = frag.verdict, frag.reason
            return
        verdicts.append(frag.verdict)
    if skb.verdict is None:     # fragments waiting for the neighbour leave the datagram queued with them
        skb.verdict = "QUEUED" if verdicts and all(v == "QUEUED" for v in verdicts) else "TRANSMIT"
    skb.cb["egress"] = skb.dst.dev.name


def _copied_options(options: bytes) -> bytes:
    """ip_options_fragment: only options with the copied flag survive into later fragments."""
    out = bytearray()
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        length = options[i + 1] if i + 1 < len(options) else 1
        if kind & 0x80:
            out += options[i:i + length]
        i += max(length, 1)
    while len(out) % 4:
        out.append(0)
    return bytes(out)


def ip_finish_output2(skb: SkBuff) -> None:
    """Find or create the neighbour for the next hop and hand the packet to it."""
    from pathtrace.net.core.neighbour_output import neigh_output_for
    ctx = skb.ctx
    rt = skb.dst
    nexthop = rt.nexthop(skb.iph.daddr)
    if ctx.record:
        ctx.step("ip_finish_output2", nexthop=ntoa(nexthop), dev=rt.dev.name)
    neigh_output_for(skb, rt.dev, nexthop)


def ip_push_pending_frames(skb: SkBuff) -> None:
    """ip_push_pending_frames → __ip_make_skb → ip_send_skb (ping and raw sockets)."""
    skb.ctx.step("ip_push_pending_frames")
    skb.ctx.step("__ip_make_skb")
    ip_send_skb(skb)


def ip_send_skb(skb: SkBuff) -> None:
    """ip_send_skb → ip_local_out; a LOCAL_OUT or POST_ROUTING drop is the sender's EPERM."""
    skb.ctx.step("ip_send_skb")
    ip_local_out(skb)
    if skb.verdict == "DROP" and skb.reason == "NETFILTER_DROP":
        skb.ctx.warnings.append("netfilter dropped the host's own packet: the sender's call fails with EPERM")


def ip_queue_xmit(skb: SkBuff) -> None:
    """ip_queue_xmit → __ip_queue_xmit: a connected socket's segment, routed by the socket's cached
    dst (or ip_route_output_ports on first use), then ip_local_out.  The IP header is the caller's:
    the socket's own for segments it builds, the captured one for segments the capture shows."""
    from pathtrace.net.ipv4.route import ip_route_output
    ctx = skb.ctx
    ctx.step("ip_queue_xmit")
    ctx.step("__ip_queue_xmit")
    sk = skb.sk
    rt = skb.dst if skb.dst is not None else getattr(sk, "dst", None)
    if rt is None:
        iph = skb.iph
        ctx.step("ip_route_output_ports", daddr=ntoa(iph.daddr), saddr=ntoa(iph.saddr))
        rt = ip_route_output(ctx.net, iph.daddr, iph.saddr, mark=skb.mark, tos=iph.tos, ctx=ctx)
        if rt.error:
            ctx.step("__ip_queue_xmit", result=f"no route ({rt.error})")
            kfree_skb_reason(skb, "IP_OUTNOROUTES")
            return
        if sk is not None and hasattr(sk, "dst"):
            sk.dst = rt
    skb.dst = rt
    ip_local_out(skb)
