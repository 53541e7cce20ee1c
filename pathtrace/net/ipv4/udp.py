"""net/ipv4/udp.c: length and checksum checks, socket lookup, port unreachable."""
from __future__ import annotations

import struct

from pathtrace.lib.checksum import l4_checksum
from pathtrace.net.core.skbuff import CHECKSUM_PARTIAL, IPPROTO_UDP, SkBuff, kfree_skb_reason


def lookup_udp(net, daddr: int, dport: int, dev: str):
    """__udp4_lib_lookup: the best-scoring bound socket (exact address over wildcard)."""
    best = None
    for sock in net.sockets:
        if sock.proto != "udp" or sock.port != dport or (sock.dev is not None and sock.dev != dev):
            continue
        if sock.addr == daddr:
            return sock
        if sock.addr == 0 and best is None:
            best = sock
    return best


def udp_rcv(skb: SkBuff) -> None:
    ctx = skb.ctx
    net = skb.ctx_net
    ctx.step("udp_rcv")
    data = skb.payload
    if len(data) < 8:
        ctx.step("__udp4_lib_rcv", result=f"short UDP header ({len(data)} bytes)")
        kfree_skb_reason(skb, "PKT_TOO_SMALL")
        return
    sport, dport, ulen, check = struct.unpack_from("!HHHH", data)
    if ulen > len(data) or ulen < 8:
        ctx.step("__udp4_lib_rcv", result=f"UDP length {ulen} vs {len(data)} bytes")
        kfree_skb_reason(skb, "PKT_TOO_SMALL")
        return
    segment = bytes(data[:ulen])
    if check and skb.ip_summed != CHECKSUM_PARTIAL and l4_checksum(skb.iph.saddr, skb.iph.daddr, IPPROTO_UDP, segment):
        ctx.step("__udp4_lib_rcv", result="bad UDP checksum")
        kfree_skb_reason(skb, "UDP_CSUM")
        return
    ctx.step("__udp4_lib_rcv", sport=sport, dport=dport, len=ulen)
    if skb.dst.type in ("broadcast", "multicast"):
        socks = [s for s in net.sockets if s.proto == "udp" and s.port == dport]
        ctx.step("__udp4_lib_mcast_deliver", sockets=len(socks))
        if socks:
            for s in socks:
                s.rx_packets += 1
            skb.verdict = "LOCAL_DELIVER"
            return
        kfree_skb_reason(skb, "NOT_SPECIFIED", why="no socket for broadcast/multicast")
        return
    sock = lookup_udp(net, skb.iph.daddr, dport, skb.dev.name if skb.dev else "")
    ctx.step("__udp4_lib_lookup", found=sock.text if sock else None)
    if sock is not None:
        sock.rx_packets += 1
        ctx.step("udp_unicast_rcv_skb")
        ctx.step("udp_queue_rcv_skb", socket=sock.text)
        skb.verdict = "LOCAL_DELIVER"
        return
    from pathtrace.net.ipv4.icmp import ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, icmp_send
    icmp_send(skb, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH)
    kfree_skb_reason(skb, "NO_SOCKET")


def udp_sendmsg(skb: SkBuff) -> None:
    """udp_sendmsg → ip_route_output_flow → ip_make_skb → udp_send_skb → ip_send_skb: a datagram the host sent."""
    from pathtrace.net.ipv4.ip_output import ip_send_skb
    from pathtrace.net.socket import route_for_send
    ctx = skb.ctx
    net = ctx.net
    if ctx.record:
        ctx.step("udp_sendmsg", sport=skb.sport, dport=skb.dport)
    if _bound(net, skb.iph.saddr, skb.sport) is None:
        from pathtrace.lib.inet import ntoa
        from pathtrace.net.core.net_namespace import Socket
        ctx.step("inet_autobind")
        ctx.step("udp_v4_get_port", port=skb.sport)
        net.sockets.append(Socket("udp", skb.iph.saddr, skb.sport, None,
                                  f"udp {ntoa(skb.iph.saddr)}:{skb.sport} (the capture shows the host sending from it)"))
    if not route_for_send(skb):
        return
    ctx.step("ip_make_skb")
    ctx.step("udp_send_skb", len=len(skb.payload))
    ip_send_skb(skb)


def _bound(net, addr: int, port: int):
    """The socket bound to addr:port (or the wildcard) that a datagram from that port was sent on."""
    return next((s for s in net.sockets if s.proto == "udp" and s.port == port and s.addr in (0, addr)), None)
