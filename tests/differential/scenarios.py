"""Differential scenarios: each a host (YAML) and frames built with pathtrace.packet.build.

Addresses are documentation/private ranges that exist only inside the verify
namespaces.  Peers the host must answer have permanent neighbour entries, so the
only ARP on the wire is the one a scenario is about.  Record the kernel's answers
with `python -m pathtrace.verify.record` (root); tests/test_verify_differential.py
checks the model against them.
"""
from __future__ import annotations

from pathtrace.packet import build as b
from pathtrace.verify.scenario import Scenario

R_LAN, R_OUT, R_DMZ = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"
CLIENT_MAC, REMOTE_MAC, GW_MAC, DMZ_GW_MAC = ("02:00:00:00:01:0a", "02:00:00:00:02:14",
                                              "02:00:00:00:02:fe", "02:00:00:00:03:fe")
CLIENT, REMOTE, GW = "10.0.1.10", "198.51.100.20", "198.51.100.254"


def host(sysctl: str = "", routes: str = "", rules: str = "", iptables: str = "", mtu_out: int = 1500,
         sockets: str = "") -> str:
    """A three-legged router/host: lan eth0, outside eth1 (default route), dmz eth2."""
    forward = "" if "net.ipv4.ip_forward:" in sysctl else "  net.ipv4.ip_forward: 1\n"    # no duplicate key
    text = f"""\
name: diff
interfaces:
  - {{name: eth0, mac: "{R_LAN}", addresses: [10.0.1.1/24]}}
  - {{name: eth1, mac: "{R_OUT}", addresses: [198.51.100.1/24], mtu: {mtu_out}}}
  - {{name: eth2, mac: "{R_DMZ}", addresses: [192.0.2.1/24]}}
sysctl:
{forward}{sysctl}routes:
  - default via {GW} dev eth1
{routes}neighbours:
  - {CLIENT} dev eth0 lladdr {CLIENT_MAC} permanent
  - {REMOTE} dev eth1 lladdr {REMOTE_MAC} permanent
  - {GW} dev eth1 lladdr {GW_MAC} permanent
  - 192.0.2.254 dev eth2 lladdr {DMZ_GW_MAC} permanent
sockets:
  - tcp 0.0.0.0:22
  - udp 0.0.0.0:53
{sockets}"""
    if rules:
        text += "rules:\n" + rules
    if iptables:
        text += "iptables: |\n" + "".join(f"  {line.strip()}\n" for line in iptables.strip().splitlines())
    return text


def lan(pkt: bytes) -> tuple[str, bytes]:
    return "eth0", b.ether(R_LAN, CLIENT_MAC, b.ETH_P_IP, pkt)


def out(pkt: bytes) -> tuple[str, bytes]:
    return "eth1", b.ether(R_OUT, REMOTE_MAC, b.ETH_P_IP, pkt)


def syn(src: str, dst: str, dport: int, sport: int = 40000, flags: str = "S", **ip) -> bytes:
    return b.tcp_packet(src, dst, sport, dport, flags, seq=1000, **ip)


def udp(src: str, dst: str, dport: int, sport: int = 40001, payload: bytes = b"hello", **ip) -> bytes:
    return b.udp_packet(src, dst, sport, dport, payload, **ip)


def echo(src: str, dst: str, seq: int = 1, **ip) -> bytes:
    return b.ipv4(src, dst, b.IPPROTO_ICMP, b.icmp(8, 0, b"pathtrace-echo", id=0x77, seq=seq), **ip)


def sc(name: str, packets: list[tuple[str, bytes]], note: str, ipt: bool = False, gap: float = 0.2,
       **hostargs) -> Scenario:
    return Scenario(name=name, host_yaml=host(**hostargs), packets=packets, note=note, needs_iptables=ipt, gap=gap)


_id = iter(range(0x1001, 0x2000))


def i() -> int:
    """Distinct IP ids: the kernel side recognises a forwarded packet by id and TTL."""
    return next(_id)


FILTER_HEAD = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
BIG = bytes(1400)

SCENARIOS: list[Scenario] = [
    # ---- local delivery ------------------------------------------------------------------
    sc("local_tcp_listener", [lan(syn(CLIENT, "10.0.1.1", 22, id=i()))], "SYN to a listener: SYN-ACK"),
    sc("synack_retransmit", [lan(syn(CLIENT, "10.0.1.1", 22, id=i())), lan(udp(CLIENT, "10.0.1.1", 53, id=i()))],
       "SYN to a listener, no ACK: the request sock retransmits the SYN-ACK after 1 s (TCP_TIMEOUT_INIT), "
       "seen in the window of a packet 0.9 s later", gap=0.9),
    sc("local_tcp_closed", [lan(syn(CLIENT, "10.0.1.1", 23, id=i()))], "SYN to a closed port: RST"),
    sc("local_udp_bound", [lan(udp(CLIENT, "10.0.1.1", 53, id=i()))], "UDP to a bound socket"),
    sc("local_udp_closed", [lan(udp(CLIENT, "10.0.1.1", 54, id=i()))], "UDP to a closed port: port unreachable"),
    sc("icmp_echo", [lan(echo(CLIENT, "10.0.1.1", id=i()))], "echo request: echo reply"),
    sc("icmp_echo_other_if_addr", [lan(echo(CLIENT, "198.51.100.1", id=i()))],
       "echo to the address of another interface (weak host model)"),
    sc("icmp_echo_broadcast", [lan(echo(CLIENT, "10.0.1.255", id=i()))],
       "echo to the subnet broadcast, icmp_echo_ignore_broadcasts=1"),
    sc("arp_request_for_us", [("eth0", b.ether("ff:ff:ff:ff:ff:ff", CLIENT_MAC, b.ETH_P_ARP,
                                               b.arp("request", CLIENT_MAC, CLIENT, "00:00:00:00:00:00", "10.0.1.1")))],
       "ARP request for the host's address: reply"),
    sc("arp_request_other", [("eth0", b.ether("ff:ff:ff:ff:ff:ff", CLIENT_MAC, b.ETH_P_ARP,
                                              b.arp("request", CLIENT_MAC, CLIENT, "00:00:00:00:00:00", "10.0.1.77")))],
       "ARP request for someone else: ignored"),
    sc("otherhost_mac", [("eth0", b.ether("02:00:00:00:99:99", CLIENT_MAC, b.ETH_P_IP, echo(CLIENT, "10.0.1.1", id=i())))],
       "frame for another MAC: PACKET_OTHERHOST"),
    # ---- forwarding ----------------------------------------------------------------------
    sc("forward_enabled", [lan(syn(CLIENT, REMOTE, 80, id=i()))], "forwarded to a neighbour on eth1"),
    sc("forward_default_route", [lan(udp(CLIENT, "203.0.113.9", 5000, id=i()))], "forwarded via the default gateway"),
    sc("forward_disabled", [lan(syn(CLIENT, REMOTE, 80, id=i()))], "ip_forward=0",
       sysctl="  net.ipv4.ip_forward: 0\n"),
    sc("ttl_expiry", [lan(udp(CLIENT, REMOTE, 5000, ttl=1, id=i()))], "TTL 1: time exceeded"),
    sc("df_small_mtu", [lan(udp(CLIENT, REMOTE, 5000, payload=BIG, df=True, id=i()))],
       "DF and egress MTU 1280: frag needed", mtu_out=1280),
    sc("fragmentation", [lan(udp(CLIENT, REMOTE, 5000, payload=BIG, id=i()))],
       "no DF and egress MTU 1280: two fragments", mtu_out=1280),
    sc("reassembly_local", [lan(b.ipv4(CLIENT, "10.0.1.1", 17, b.udp(40001, 53, bytes(24), CLIENT, "10.0.1.1")[:16],
                                       id=0x4242, mf=True)),
                            lan(b.ipv4(CLIENT, "10.0.1.1", 17, b.udp(40001, 53, bytes(24), CLIENT, "10.0.1.1")[16:],
                                       id=0x4242, frag_offset=2))],
       "two fragments to a bound UDP socket: held, then delivered"),
    sc("route_blackhole", [lan(udp(CLIENT, "203.0.113.9", 5000, id=i()))], "blackhole route: silent drop",
       routes="  - blackhole 203.0.113.0/24\n"),
    sc("route_unreachable", [lan(udp(CLIENT, "203.0.113.9", 5000, id=i()))], "unreachable route: ICMP host unreachable",
       routes="  - unreachable 203.0.113.0/24\n"),
    sc("route_prohibit", [lan(udp(CLIENT, "203.0.113.9", 5000, id=i()))], "prohibit route: ICMP admin prohibited",
       routes="  - prohibit 203.0.113.0/24\n"),
    sc("policy_by_source", [lan(udp("10.0.1.200", "203.0.113.9", 5000, id=i())),
                            lan(udp(CLIENT, "203.0.113.9", 5000, id=i()))],
       "from 10.0.1.128/25 lookup 100 (default via dmz); others use main",
       routes="  - default via 192.0.2.254 dev eth2 table 100\n", rules="  - from 10.0.1.128/25 lookup 100 priority 100\n"),
    sc("unresolved_neighbour", [lan(udp(CLIENT, "198.51.100.99", 5000, id=i()))],
       "next hop without a neighbour entry: ARP request, packet queued"),
    # ---- source validation ---------------------------------------------------------------
    sc("rp_filter_strict", [out(udp("10.0.1.50", "192.0.2.9", 5000, id=i()))],
       "rp_filter=1, LAN source arriving on eth1", sysctl="  net.ipv4.conf.all.rp_filter: 1\n"),
    sc("rp_filter_loose", [out(udp("10.0.1.50", "192.0.2.9", 5000, id=i()))],
       "rp_filter=2, LAN source arriving on eth1: routable somewhere, accepted",
       sysctl="  net.ipv4.conf.all.rp_filter: 2\n"),
    sc("martian_loopback_source", [lan(udp("127.0.0.1", REMOTE, 5000, id=i()))], "source 127.0.0.1 from the wire"),
    sc("martian_multicast_source", [lan(udp("224.0.0.5", REMOTE, 5000, id=i()))], "multicast source"),
    sc("martian_zeronet_dest", [lan(udp(CLIENT, "0.1.2.3", 5000, id=i()))], "destination in 0.0.0.0/8"),
    sc("local_source_on_wire", [lan(udp("10.0.1.1", REMOTE, 5000, id=i()))], "our own address as source"),
    # ---- malformed -----------------------------------------------------------------------
    sc("bad_ip_checksum", [lan(b.ipv4(CLIENT, "10.0.1.1", 1, b.icmp(8, 0, b"x"), check=0x1234, id=i()))],
       "IP header checksum wrong"),
    sc("bad_ihl", [lan(b.ipv4(CLIENT, "10.0.1.1", 1, b.icmp(8, 0, b"x"), ihl=4, id=i()))], "ihl 4 (< 5)"),
    sc("truncated_ip", [lan(b.ipv4(CLIENT, "10.0.1.1", 1, b.icmp(8, 0, b"x" * 40), tot_len=200, id=i()))],
       "tot_len larger than the frame"),
    sc("bad_tcp_checksum", [lan(b.tcp_packet(CLIENT, "10.0.1.1", 40000, 22, "S", tcp_check=0x1234, id=i()))],
       "SYN to a listener with a bad TCP checksum"),
    sc("bad_udp_checksum", [lan(b.udp_packet(CLIENT, "10.0.1.1", 40001, 53, b"hi", udp_check=0x1234, id=i()))],
       "UDP to a bound socket with a bad checksum"),
    sc("bad_icmp_checksum", [lan(b.ipv4(CLIENT, "10.0.1.1", 1, b.icmp(8, 0, b"x", check=0x1234), id=i()))],
       "echo request with a bad ICMP checksum"),
    # ---- netfilter -----------------------------------------------------------------------
    sc("reject_tcp_reset", [lan(syn(CLIENT, "10.0.1.1", 22, id=i()))], "INPUT REJECT --reject-with tcp-reset", ipt=True,
       iptables=FILTER_HEAD + "-A INPUT -p tcp --dport 22 -j REJECT --reject-with tcp-reset\nCOMMIT"),
    sc("reject_port_unreach", [lan(udp(CLIENT, "10.0.1.1", 53, id=i()))], "INPUT REJECT (default icmp-port-unreachable)",
       ipt=True, iptables=FILTER_HEAD + "-A INPUT -p udp -j REJECT\nCOMMIT"),
    sc("reject_admin_prohibited", [lan(syn(CLIENT, REMOTE, 80, id=i()))], "FORWARD REJECT icmp-admin-prohibited",
       ipt=True, iptables=FILTER_HEAD + "-A FORWARD -j REJECT --reject-with icmp-admin-prohibited\nCOMMIT"),
    sc("drop_policy_forward", [lan(syn(CLIENT, REMOTE, 80, id=i())), lan(syn(CLIENT, REMOTE, 443, id=i()))],
       "FORWARD policy DROP, port 443 accepted", ipt=True,
       iptables="*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                "-A FORWARD -p tcp --dport 443 -j ACCEPT\nCOMMIT"),
    sc("dnat_conversation", [out(syn(REMOTE, "198.51.100.1", 8080, id=i())),
                             lan(syn(CLIENT, REMOTE, 40000, sport=80, flags="SA", id=i()))],
       "DNAT 198.51.100.1:8080 -> 10.0.1.10:80, then the server's SYN-ACK is un-DNATed", ipt=True,
       iptables="*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
                "-A PREROUTING -i eth1 -p tcp --dport 8080 -j DNAT --to-destination 10.0.1.10:80\nCOMMIT"),
    sc("snat_conversation", [lan(syn(CLIENT, REMOTE, 80, id=i())),
                             out(syn(REMOTE, "198.51.100.1", 40000, sport=80, flags="SA", id=i()))],
       "SNAT to 198.51.100.1 on eth1, reply un-SNATed", ipt=True,
       iptables="*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
                "-A POSTROUTING -o eth1 -j SNAT --to-source 198.51.100.1\nCOMMIT"),
    sc("masquerade_conversation", [lan(udp(CLIENT, REMOTE, 5000, id=i())),
                                   out(udp(REMOTE, "198.51.100.1", 40001, sport=5000, id=i()))],
       "MASQUERADE on eth1, reply un-masqueraded", ipt=True,
       iptables="*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
                "-A POSTROUTING -o eth1 -j MASQUERADE\nCOMMIT"),
    sc("related_icmp_error", [lan(udp(CLIENT, REMOTE, 5000, id=0x3333)),
                              out(b.ipv4(REMOTE, CLIENT, 1, b.icmp(3, 3, udp(CLIENT, REMOTE, 5000, id=0x3333, ttl=63)[:28]),
                                        id=i()))],
       "FORWARD DROP policy with RELATED,ESTABLISHED: the port-unreachable for a forwarded flow passes", ipt=True,
       iptables="*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
                "-A FORWARD -i eth0 -j ACCEPT\nCOMMIT"),
    sc("unrelated_icmp_error", [out(b.ipv4(REMOTE, CLIENT, 1, b.icmp(3, 3, udp(CLIENT, REMOTE, 5999, ttl=63)[:28]), id=i()))],
       "an ICMP error for no known flow is INVALID, dropped by the FORWARD policy", ipt=True,
       iptables="*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
                "-A FORWARD -i eth0 -j ACCEPT\nCOMMIT"),
    sc("conntrack_invalid", [lan(syn(CLIENT, "10.0.1.1", 22, flags="SF", id=i()))],
       "SYN+FIN is INVALID: dropped by --ctstate INVALID", ipt=True,
       iptables=FILTER_HEAD + "-A INPUT -m conntrack --ctstate INVALID -j DROP\nCOMMIT"),
    sc("user_chain_return_goto", [lan(syn(CLIENT, "10.0.1.1", 22, id=i())), lan(udp(CLIENT, "10.0.1.1", 53, id=i())),
                                  lan(echo(CLIENT, "10.0.1.1", id=i()))],
       "RETURN from a -j chain continues INPUT; a -g chain's end returns to INPUT's caller (policy)", ipt=True,
       iptables="*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:CHK - [0:0]\n:GO - [0:0]\n"
                "-A INPUT -j CHK\n-A INPUT -p tcp --dport 22 -j ACCEPT\n-A INPUT -p udp -g GO\n"
                "-A INPUT -p icmp -j ACCEPT\n-A CHK -p tcp -j RETURN\n-A CHK -p icmp -j RETURN\n"
                "-A GO -p udp --dport 54 -j ACCEPT\nCOMMIT"),
    sc("limit_echo", [lan(echo(CLIENT, "10.0.1.1", seq=n, id=i())) for n in range(4)],
       "limit 1/minute burst 2: two echoes answered, two dropped", ipt=True,
       iptables="*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                "-A INPUT -p icmp -m limit --limit 1/minute --limit-burst 2 -j ACCEPT\nCOMMIT"),
    sc("mark_policy_routing", [lan(udp(CLIENT, "203.0.113.9", 5000, id=i())),
                               lan(udp("10.0.1.11", "203.0.113.9", 5000, id=i()))],
       "mangle PREROUTING marks 10.0.1.10; fwmark 1 lookup 100 routes it out eth2", ipt=True,
       routes="  - default via 192.0.2.254 dev eth2 table 100\n", rules="  - fwmark 1 lookup 100 priority 100\n",
       iptables="*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                ":POSTROUTING ACCEPT [0:0]\n-A PREROUTING -s 10.0.1.10 -j MARK --set-mark 1\nCOMMIT"),
]
