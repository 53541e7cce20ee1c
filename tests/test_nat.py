"""NAT: DNAT + MASQUERADE of a TCP flow, ICMP errors un-NATed, port and address choice.

"kernel:" notes were checked on a 6.18 kernel in network namespaces (router netns
with iptables-nft MASQUERADE / SNAT, clients and server netns over veth,
`conntrack -L` in the router).
"""
from __future__ import annotations

import struct
from types import SimpleNamespace

from pathtrace.lib.checksum import csum_fold, csum_partial, ip_fast_csum, l4_checksum
from pathtrace.lib.inet import aton, ntoa
from pathtrace.net.core.netdevice import InAddr, NetDevice
from pathtrace.net.netfilter.nf_conntrack_core import (
    IP_CT_ESTABLISHED_REPLY, IP_CT_RELATED_REPLY, IPS_DST_NAT, IPS_SRC_NAT, NF_ACCEPT, NF_DROP,
    NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING, NF_INET_PRE_ROUTING, ConntrackTable, ipv4_confirm,
    ipv4_conntrack_in, ipv4_conntrack_local, nf_ct_set_untracked,
)
from pathtrace.net.netfilter.nf_conntrack_proto_tcp import tcp_state_name
from pathtrace.net.netfilter.nf_conntrack_tuple import Tuple
from pathtrace.net.netfilter.nf_nat_core import (
    NF_NAT_MANIP_DST, NF_NAT_MANIP_SRC, NF_NAT_RANGE_MAP_IPS, NF_NAT_RANGE_PROTO_SPECIFIED, NatRange,
    nf_nat_ipv4_local_fn, nf_nat_ipv4_out, nf_nat_ipv4_pre_routing, nf_nat_setup_info,
)
from pathtrace.net.netfilter.nf_nat_masquerade import nf_nat_masquerade_ipv4
from pathtrace.net.netfilter.nf_nat_netmap import nf_nat_netmap_ipv4
from pathtrace.net.netfilter.nf_nat_redirect import nf_nat_redirect_ipv4
from pathtrace.net.netfilter.nf_nat_unique import find_best_ips_proto
from pathtrace.packet import build
from test_conntrack import mk_skb, tcp_pkt, udp_pkt

CLIENT, PUBLIC, SERVER, INSIDE = "192.168.1.10", "198.51.100.1", "10.0.0.5", "10.0.0.1"
ETH0 = NetDevice("eth0", 2, b"\x02\0\0\0\0\x01", addrs=[InAddr(aton(PUBLIC), 24)])
ETH1 = NetDevice("eth1", 3, b"\x02\0\0\0\0\x02", addrs=[InAddr(aton(INSIDE), 24)])


class Router:
    """The forward path of a NAT box: conntrack+DNAT in PRE_ROUTING, MASQUERADE+confirm in POST_ROUTING."""

    def __init__(self, table: ConntrackTable | None = None, masquerade: bool = True):
        self.table = table or ConntrackTable()
        self.nf = SimpleNamespace(conntrack=self.table, net=None)
        self.chain_runs: list[int] = []
        self.masquerade = masquerade

    def nat_chain(self, skb, hook: int) -> int:
        self.chain_runs.append(hook)
        ct = skb.ct
        if hook == NF_INET_PRE_ROUTING and skb.iph.daddr == aton(PUBLIC) and skb.dport == 8080:
            rng = NatRange(NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED, aton(SERVER), aton(SERVER), 80, 80)
            return nf_nat_setup_info(ct, rng, NF_NAT_MANIP_DST)
        if hook == NF_INET_POST_ROUTING and self.masquerade and skb.dev is ETH1:
            return nf_nat_masquerade_ipv4(skb, NatRange(), ETH1)
        return NF_ACCEPT

    def forward(self, ip: bytes, now: float, indev: NetDevice, outdev: NetDevice):
        skb = mk_skb(ip, now, dev=indev)
        assert ipv4_conntrack_in(self.nf, skb, NF_INET_PRE_ROUTING) == NF_ACCEPT
        verdict = nf_nat_ipv4_pre_routing(self.nf, skb, NF_INET_PRE_ROUTING, self.nat_chain)
        if verdict != NF_ACCEPT:
            return skb, verdict
        skb.dev = outdev
        skb.dst = SimpleNamespace(nexthop=lambda daddr: daddr)
        verdict = nf_nat_ipv4_out(self.nf, skb, NF_INET_POST_ROUTING, self.nat_chain, outdev)
        if verdict == NF_ACCEPT:
            verdict = ipv4_confirm(self.nf, skb, NF_INET_POST_ROUTING)
        return skb, verdict


def addrs(skb) -> tuple[str, int, str, int]:
    return ntoa(skb.iph.saddr), skb.sport, ntoa(skb.iph.daddr), skb.dport


def checksums_ok(skb) -> bool:
    raw = skb.network_bytes()
    ihl = (raw[0] & 0xF) * 4
    if ip_fast_csum(raw[:ihl]) != 0:
        return False
    if skb.iph.protocol in (6, 17):
        return l4_checksum(skb.iph.saddr, skb.iph.daddr, skb.iph.protocol, raw[ihl:]) == 0
    return csum_fold(csum_partial(raw[ihl:])) == 0


def test_tcp_flow_dnat_and_masquerade_both_ways():
    r = Router()
    c, s = 1000, 7000
    syn, v = r.forward(tcp_pkt(CLIENT, PUBLIC, 40000, 8080, "S", seq=c), 0.0, ETH0, ETH1)
    assert v == NF_ACCEPT and addrs(syn) == (INSIDE, 40000, SERVER, 80) and checksums_ok(syn)
    ct = syn.ct
    assert ct.status & IPS_SRC_NAT and ct.status & IPS_DST_NAT
    assert ct.orig == Tuple(aton(CLIENT), aton(PUBLIC), 6, 40000, 8080)
    assert ct.reply == Tuple(aton(SERVER), aton(INSIDE), 6, 80, 40000)
    assert r.chain_runs == [NF_INET_PRE_ROUTING, NF_INET_POST_ROUTING]
    steps = {st.fn: st.detail for st in syn.ctx.steps}
    nats = [st.detail["nat"] for st in syn.ctx.steps if st.fn == "nf_nat_setup_info"]
    assert nats == ["dst 198.51.100.1:8080 -> 10.0.0.5:80", "src 192.168.1.10:40000 -> 10.0.0.1:40000"]
    assert steps["nf_nat_masquerade_ipv4"]["addr"] == INSIDE
    assert "__nf_conntrack_confirm" in steps

    synack, v = r.forward(tcp_pkt(SERVER, INSIDE, 80, 40000, "SA", seq=s, ack=c + 1), 0.01, ETH1, ETH0)
    assert v == NF_ACCEPT and synack.ctinfo == IP_CT_ESTABLISHED_REPLY
    assert addrs(synack) == (PUBLIC, 8080, CLIENT, 40000) and checksums_ok(synack)
    flow = [
        (CLIENT, PUBLIC, 40000, 8080, "A", c + 1, s + 1, b"", ETH0, ETH1),
        (CLIENT, PUBLIC, 40000, 8080, "PA", c + 1, s + 1, b"hello", ETH0, ETH1),
        (SERVER, INSIDE, 80, 40000, "PA", s + 1, c + 6, b"world!", ETH1, ETH0),
        (CLIENT, PUBLIC, 40000, 8080, "FA", c + 6, s + 7, b"", ETH0, ETH1),
        (SERVER, INSIDE, 80, 40000, "FA", s + 7, c + 7, b"", ETH1, ETH0),
        (CLIENT, PUBLIC, 40000, 8080, "A", c + 7, s + 8, b"", ETH0, ETH1),
    ]
    for i, (sa, da, sp, dp, fl, seq, ack, data, i_dev, o_dev) in enumerate(flow):
        skb, v = r.forward(tcp_pkt(sa, da, sp, dp, fl, seq=seq, ack=ack, data=data), 1.0 + i, i_dev, o_dev)
        assert v == NF_ACCEPT and skb.ct is ct and checksums_ok(skb), fl
        expect = (INSIDE, 40000, SERVER, 80) if i_dev is ETH0 else (PUBLIC, 8080, CLIENT, 40000)
        assert addrs(skb) == expect
    assert tcp_state_name(ct) == "TIME_WAIT"
    assert r.chain_runs == [NF_INET_PRE_ROUTING, NF_INET_POST_ROUTING]     # nat table only for the first packet
    assert len(r.table) == 1


def test_icmp_error_for_natted_flow_is_related_and_unnatted():
    """An ICMP error from the inside quoting the post-NAT packet is RELATED_REPLY and, like the
    kernel's nf_nat_icmp_reply_translation, both the outer header and the quoted packet are
    translated back to what the client sent."""
    r = Router()
    syn, _ = r.forward(tcp_pkt(CLIENT, PUBLIC, 40000, 8080, "S", seq=1000), 0.0, ETH0, ETH1)
    quoted = syn.network_bytes()
    err_ip = build.icmp_error_packet(SERVER, INSIDE, 3, 3, quoted, quote=20)
    err, v = r.forward(err_ip, 0.5, ETH1, ETH0)
    assert v == NF_ACCEPT and err.ct is syn.ct and err.ctinfo == IP_CT_RELATED_REPLY
    assert (ntoa(err.iph.saddr), ntoa(err.iph.daddr)) == (PUBLIC, CLIENT)
    inner = bytes(err.payload[8:])
    isrc, idst = struct.unpack_from("!II", inner, 12)
    isport, idport = struct.unpack_from("!HH", inner, 20)
    assert (ntoa(isrc), isport, ntoa(idst), idport) == (CLIENT, 40000, PUBLIC, 8080)
    assert ip_fast_csum(inner[:20]) == 0 and checksums_ok(err)
    # the quoted TCP header was complete (20 bytes): its checksum follows the rewrite
    original = tcp_pkt(CLIENT, PUBLIC, 40000, 8080, "S", seq=1000)
    assert inner[20:40] == original[20:40]
    assert any(st.fn == "nf_nat_icmp_reply_translation" for st in err.ctx.steps)
    assert len(r.table) == 1


def test_masquerade_port_clash_two_clients():
    """kernel: two clients behind MASQUERADE using the same source port 40000 to the same
    server: the first keeps 40000, the second gets another port (42821 in the run; UDP 40291),
    i.e. get_unique_tuple keeps the original port if free, else nf_nat_l4proto_unique_tuple
    searches 1024-65535 from a random offset.  The model's offset comes from its seeded RNG."""
    r = Router()
    a, _ = r.forward(tcp_pkt("192.168.1.10", "10.0.0.9", 40000, 80, "S"), 0.0, ETH0, ETH1)
    b, _ = r.forward(tcp_pkt("192.168.1.11", "10.0.0.9", 40000, 80, "S"), 0.1, ETH0, ETH1)
    assert addrs(a) == (INSIDE, 40000, "10.0.0.9", 80)
    assert ntoa(b.iph.saddr) == INSIDE and b.sport != 40000 and 1024 <= b.sport <= 65535
    assert b.ct.reply == Tuple(aton("10.0.0.9"), aton(INSIDE), 6, 80, b.sport)
    # a reply to the second mapping reaches the second client
    rep, _ = r.forward(tcp_pkt("10.0.0.9", INSIDE, 80, b.sport, "SA", seq=1, ack=1), 0.2, ETH1, ETH0)
    assert rep.ct is b.ct and addrs(rep) == ("10.0.0.9", 80, "192.168.1.11", 40000)
    # privileged source ports stay privileged: 1-511 for < 512
    c, _ = r.forward(udp_pkt("192.168.1.12", "10.0.0.9", 123, 123), 0.3, ETH0, ETH1)
    d, _ = r.forward(udp_pkt("192.168.1.13", "10.0.0.9", 123, 123), 0.4, ETH0, ETH1)
    assert c.sport == 123 and 1 <= d.sport <= 511 and d.sport != 123


def test_dnat_port_range_sequential_without_random():
    """Destination NAT searches its port range from the start (no random offset)."""
    table = ConntrackTable()
    nf = SimpleNamespace(conntrack=table, net=None)
    rng = NatRange(NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED, aton(SERVER), aton(SERVER), 8000, 8003)

    def chain(skb, hook):
        return nf_nat_setup_info(skb.ct, rng, NF_NAT_MANIP_DST) if hook == NF_INET_PRE_ROUTING else NF_ACCEPT

    ports = []
    for i in range(3):
        skb = mk_skb(udp_pkt(CLIENT, PUBLIC, 5000, 53), float(i), dev=ETH0)
        ipv4_conntrack_in(nf, skb, NF_INET_PRE_ROUTING)
        nf_nat_ipv4_pre_routing(nf, skb, NF_INET_PRE_ROUTING, chain)
        ipv4_confirm(nf, skb, NF_INET_POST_ROUTING)
        ports.append(skb.dport)
    assert ports == [8000, 8000, 8000]      # same flow: one binding
    for sport in (5001, 5002):
        skb = mk_skb(udp_pkt(CLIENT, PUBLIC, sport, 53), 5.0, dev=ETH0)
        ipv4_conntrack_in(nf, skb, NF_INET_PRE_ROUTING)
        nf_nat_ipv4_pre_routing(nf, skb, NF_INET_PRE_ROUTING, chain)
        ipv4_confirm(nf, skb, NF_INET_POST_ROUTING)
        assert skb.dport == 8000            # no clash: different source port


def test_snat_address_range_hash_matches_kernel():
    """kernel: SNAT --to-source 198.51.100.1-198.51.100.10 (UDP from port 6000 to
    203.0.113.5:53) mapped clients 10.0.1.2..12 to these addresses; find_best_ips_proto
    (jhash2 of the source seeded with the destination) reproduces every one."""
    kernel = {2: 8, 3: 7, 4: 10, 5: 3, 6: 1, 7: 1, 8: 6, 9: 8, 10: 7, 11: 7, 12: 6}
    rng = NatRange(NF_NAT_RANGE_MAP_IPS, aton("198.51.100.1"), aton("198.51.100.10"))
    for host, last in kernel.items():
        t = Tuple(aton(f"10.0.1.{host}"), aton("203.0.113.5"), 17, 6000, 53)
        assert find_best_ips_proto(t, rng, NF_NAT_MANIP_SRC) == t._replace(src=aton(f"198.51.100.{last}"))


def test_snat_reuses_existing_source_mapping():
    """kernel: later flows from the same source ip:port to other destinations kept the first
    flow's mapped address (find_appropriate_src), e.g. 10.0.1.5:6000 -> 198.51.100.3 for
    203.0.113.5, .6 and .77, although the hash alone would pick .9 and .4 for the latter."""
    table = ConntrackTable()
    nf = SimpleNamespace(conntrack=table, net=None)
    rng = NatRange(NF_NAT_RANGE_MAP_IPS, aton("198.51.100.1"), aton("198.51.100.10"))

    def chain(skb, hook):
        return nf_nat_setup_info(skb.ct, rng, NF_NAT_MANIP_SRC) if hook == NF_INET_POST_ROUTING else NF_ACCEPT

    mapped = []
    for dst in ("203.0.113.5", "203.0.113.6", "203.0.113.77"):
        skb = mk_skb(udp_pkt("10.0.1.5", dst, 6000, 53), 0.0, dev=ETH0)
        ipv4_conntrack_in(nf, skb, NF_INET_PRE_ROUTING)
        nf_nat_ipv4_pre_routing(nf, skb, NF_INET_PRE_ROUTING, chain)
        nf_nat_ipv4_out(nf, skb, NF_INET_POST_ROUTING, chain, ETH1)
        ipv4_confirm(nf, skb, NF_INET_POST_ROUTING)
        mapped.append((ntoa(skb.iph.saddr), skb.sport))
    assert mapped == [("198.51.100.3", 6000)] * 3


def test_untracked_packet_is_not_natted():
    r = Router()
    skb = mk_skb(tcp_pkt(CLIENT, PUBLIC, 40000, 8080, "S"), 0.0, dev=ETH0)
    nf_ct_set_untracked(skb)
    ipv4_conntrack_in(r.nf, skb, NF_INET_PRE_ROUTING)
    assert nf_nat_ipv4_pre_routing(r.nf, skb, NF_INET_PRE_ROUTING, r.nat_chain) == NF_ACCEPT
    assert addrs(skb) == (CLIENT, 40000, PUBLIC, 8080) and r.chain_runs == []


def test_masquerade_oif_change_kills_flow():
    r = Router()
    syn, _ = r.forward(tcp_pkt(CLIENT, "10.0.0.9", 40000, 80, "S"), 0.0, ETH0, ETH1)
    other = NetDevice("eth2", 4, b"\x02\0\0\0\0\x03", addrs=[InAddr(aton("10.9.9.1"), 24)])
    skb, v = r.forward(tcp_pkt(CLIENT, "10.0.0.9", 40000, 80, "S"), 0.5, ETH0, other)
    assert v == NF_DROP and len(r.table) == 0


def test_redirect_and_local_out_reroute(monkeypatch):
    """REDIRECT: ingress device's first address in PRE_ROUTING, 127.0.0.1 for local traffic
    (which then needs ip_route_me_harder)."""
    table = ConntrackTable()
    nf = SimpleNamespace(conntrack=table, net=None)

    def chain(skb, hook):
        if hook in (NF_INET_PRE_ROUTING, NF_INET_LOCAL_OUT):
            return nf_nat_redirect_ipv4(skb, NatRange(NF_NAT_RANGE_PROTO_SPECIFIED, 0, 0, 3128, 3128), hook)
        return NF_ACCEPT

    skb = mk_skb(tcp_pkt(CLIENT, "203.0.113.80", 40000, 80, "S"), 0.0, dev=ETH0)
    ipv4_conntrack_in(nf, skb, NF_INET_PRE_ROUTING)
    skb.dst = object()
    nf_nat_ipv4_pre_routing(nf, skb, NF_INET_PRE_ROUTING, chain)
    assert addrs(skb) == (CLIENT, 40000, PUBLIC, 3128) and skb.dst is None

    import pathtrace.net.ipv4.route as route
    rerouted = []
    monkeypatch.setattr(route, "ip_route_me_harder", lambda s: rerouted.append(s) or True, raising=False)
    loc = mk_skb(tcp_pkt(INSIDE, "203.0.113.80", 41000, 80, "S"), 0.0)
    ipv4_conntrack_local(nf, loc, NF_INET_LOCAL_OUT)
    assert nf_nat_ipv4_local_fn(nf, loc, NF_INET_LOCAL_OUT, chain) == NF_ACCEPT
    assert addrs(loc) == (INSIDE, 41000, "127.0.0.1", 3128) and rerouted == [loc]


def test_netmap_prefix_mapping():
    table = ConntrackTable()
    nf = SimpleNamespace(conntrack=table, net=None)
    rng = NatRange(NF_NAT_RANGE_MAP_IPS, aton("172.16.0.0"), aton("172.16.255.255"))

    def chain(skb, hook):
        return nf_nat_netmap_ipv4(skb, rng, hook) if hook == NF_INET_PRE_ROUTING else NF_ACCEPT

    skb = mk_skb(udp_pkt(CLIENT, "10.1.2.3", 5000, 53), 0.0, dev=ETH0)
    ipv4_conntrack_in(nf, skb, NF_INET_PRE_ROUTING)
    nf_nat_ipv4_pre_routing(nf, skb, NF_INET_PRE_ROUTING, chain)
    assert ntoa(skb.iph.daddr) == "172.16.2.3" and checksums_ok(skb)
