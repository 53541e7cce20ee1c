"""Host-file features real machines have (issue 12): kernel limits on sysctl values, net.netfilter
sysctls, route attributes.  Limits were measured on 6.18 by writing /proc/sys in a new namespace
(`unshare -n`; the live check below repeats that where it can)."""
from __future__ import annotations

import os
import shutil
import subprocess
import textwrap

import pytest

from pathtrace.errors import HostFileError
from pathtrace.host.loader import load_host
from pathtrace.net.core.net_namespace import build_net
from pathtrace.net.ipv4.devinet import GLOBAL_LIMITS


def write(tmp_path, text: str) -> str:
    p = tmp_path / "h.yaml"
    p.write_text(textwrap.dedent(text))
    return str(p)


def load_err(tmp_path, text: str) -> HostFileError:
    path = write(tmp_path, text)
    with pytest.raises(HostFileError) as err:
        load_host(path)
    assert str(err.value).startswith(f"{path}:")
    return err.value


IFACE = "interfaces:\n  - name: eth0\n    addresses: [10.0.0.1/24]\n"


@pytest.mark.parametrize("key,value,limits", [
    ("net.ipv4.ip_default_ttl", 0, "1 and 255"),
    ("net.ipv4.ip_default_ttl", 256, "1 and 255"),
    ("net.ipv4.tcp_ecn", 3, "0 and 2"),
    ("net.ipv4.icmp_echo_ignore_all", 2, "0 and 1"),
    ("net.ipv4.tcp_sack", 256, "0 and 255"),
    ("net.ipv4.icmp_ratelimit", -1, "0 and 2147483647"),
    ("net.ipv4.conf.eth0.rp_filter", 2**31, "-2147483648 and 2147483647"),
])
def test_values_the_kernel_refuses(tmp_path, key, value, limits):
    err = load_err(tmp_path, IFACE + f"sysctl:\n  {key}: {value}\n")
    assert err.line == 5
    assert f"must be between {limits} (kernel: EINVAL)" in str(err)


@pytest.mark.parametrize("key,value", [
    ("net.ipv4.ip_default_ttl", 1), ("net.ipv4.ip_default_ttl", 255),
    ("net.ipv4.conf.eth0.rp_filter", 5),       # devinet_conf_proc is a plain proc_dointvec
    ("net.ipv4.conf.all.send_redirects", -1), ("net.ipv4.ip_forward", 7),
])
def test_values_the_kernel_takes(tmp_path, key, value):
    host = load_host(write(tmp_path, IFACE + f"sysctl:\n  {key}: {value}\n"))
    build_net(host)


def _live_accepts(key: str, value: int) -> bool:
    path = "/proc/sys/" + key.replace(".", "/")
    cmd = ["unshare", "-n", "sh", "-c", f"echo {value} > {path}"]
    return subprocess.run(cmd, capture_output=True).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
@pytest.mark.parametrize("name", sorted(GLOBAL_LIMITS))
def test_limits_match_the_running_kernel(name):
    if not os.path.exists(f"/proc/sys/net/ipv4/{name}"):
        pytest.skip(f"this kernel has no net.ipv4.{name}")
    low, high = GLOBAL_LIMITS[name]
    key = f"net.ipv4.{name}"
    assert _live_accepts(key, low) and _live_accepts(key, high)
    assert not _live_accepts(key, low - 1) and not _live_accepts(key, high + 1)


# ---- net.netfilter.* -----------------------------------------------------------------------------

NF_HOST = IFACE + """sysctl:
  net.netfilter.nf_conntrack_tcp_loose: 0
  net.netfilter.nf_conntrack_tcp_be_liberal: 1
  net.netfilter.nf_conntrack_udp_timeout: 60
  net.nf_conntrack_max: 1000
iptables: |
  *filter
  -A INPUT -m conntrack --ctstate INVALID -j DROP
  COMMIT
"""


def test_netfilter_sysctls_reach_the_conntrack_table(tmp_path):
    from pathtrace.replay import create_namespace
    net = create_namespace(load_host(write(tmp_path, NF_HOST)))
    ct = net.nf.conntrack
    assert ct is not None
    assert ct.sysctl["nf_conntrack_tcp_loose"] == 0 and ct.sysctl["nf_conntrack_tcp_be_liberal"] == 1
    assert ct.sysctl["nf_conntrack_udp_timeout"] == 60 and ct.sysctl["nf_conntrack_max"] == 1000
    assert ct.sysctl["nf_conntrack_icmp_timeout"] == 30          # untouched default


@pytest.mark.parametrize("key,value,fragment,on_key", [
    ("net.netfilter.nf_conntrack_tcp_loose", 2, "must be between 0 and 1 (kernel: EINVAL)", False),
    ("net.netfilter.nf_conntrack_tcp_max_retrans", 256, "must be between 0 and 255", False),
    ("net.netfilter.nf_conntrack_max", -1, "must be between 0 and 2147483647", False),
    ("net.netfilter.nf_conntrack_generic_timeout", 9000000, "must be between -8589934 and 8589934", False),
    ("net.netfilter.nf_conntrack_frobnicate", 1, "unknown sysctl 'net.netfilter.nf_conntrack_frobnicate'", True),
])
def test_netfilter_sysctl_errors(tmp_path, key, value, fragment, on_key):
    err = load_err(tmp_path, IFACE + f"sysctl:\n  {key}: {value}\n")
    assert err.line == 5 and fragment in str(err)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None
                    or not os.path.exists("/proc/sys/net/netfilter/nf_conntrack_tcp_loose"),
                    reason="needs root, unshare and nf_conntrack loaded")
@pytest.mark.parametrize("name,low,high", [
    ("nf_conntrack_tcp_loose", 0, 1), ("nf_conntrack_tcp_be_liberal", 0, 1), ("nf_conntrack_checksum", 0, 1),
    ("nf_conntrack_tcp_max_retrans", 0, 255), ("nf_conntrack_udp_timeout", -8589934, 8589934),
])
def test_netfilter_limits_match_the_running_kernel(name, low, high):
    from pathtrace.net.netfilter.nf_conntrack_core import ConntrackTable
    key = f"net.netfilter.{name}"
    for v in (low, high):
        ConntrackTable().set_sysctl(key, v)
        assert _live_accepts(key, v)
    for v in (low - 1, high + 1):
        with pytest.raises(ValueError):
            ConntrackTable().set_sysctl(key, v)
        assert not _live_accepts(key, v)


ROUTER = """
interfaces:
  - name: eth0
    addresses: [10.0.0.1/24]
  - name: eth1
    addresses: [10.1.0.1/24]
sysctl:
  net.ipv4.ip_forward: 1
  net.netfilter.nf_conntrack_tcp_loose: {loose}
neighbours:
  - 10.1.0.2 dev eth1 lladdr 02:00:00:00:01:02
iptables: |
  *filter
  :FORWARD ACCEPT [0:0]
  -A FORWARD -m conntrack --ctstate INVALID -j DROP
  COMMIT
"""


@pytest.mark.parametrize("loose,verdict", [(1, "FORWARD"), (0, "DROP")])
def test_tcp_loose_decides_mid_stream_pickup(tmp_path, loose, verdict):
    """nf_conntrack_tcp_loose=0: a mid-stream ACK is not picked up (tcp_new), so it is INVALID."""
    from pathtrace.packet import build
    from tests.helpers import Rig
    rig = Rig(tmp_path, ROUTER.format(loose=loose))
    rec = rig.send("eth0", build.tcp_packet("10.0.0.2", "10.1.0.2", 40000, 80, "A", seq=1000, ack=2000))
    assert rec.verdict == verdict


# ---- route attributes (ip route add on 6.18 in a new namespace gave each expected error/listing) ------

TWO = """
interfaces:
  - name: eth0
    mac: 02:00:00:00:00:01
    addresses: [10.0.0.1/24]
  - name: eth1
    mac: 02:00:00:00:00:02
    addresses: [10.1.0.1/24]
sysctl:
  net.ipv4.ip_forward: 1
  net.ipv4.conf.all.rp_filter: {rpf}
neighbours:
  - 10.0.0.254 dev eth0 lladdr 02:00:00:00:00:fe
  - 10.1.0.254 dev eth1 lladdr 02:00:00:00:01:fe
  - 10.1.0.9 dev eth1 lladdr 02:00:00:00:01:09
  - 10.0.0.7 dev eth0 lladdr 02:00:00:00:00:07
routes:
"""


def two(tmp_path, routes: list[str], rpf: int = 0):
    from helpers import Rig
    return Rig(tmp_path, TWO.format(rpf=rpf) + "".join(f"  - {r}\n" for r in routes))


@pytest.mark.parametrize("route,fragment", [
    ("10.9.0.0/24 via 10.0.0.254 tos 0x11", "ECN bits must be 0"),
    ("10.9.0.0/24 via 10.0.0.254 tos 16", "ECN bits must be 0"),        # iproute2 reads 16 as 0x16
    ("10.9.0.0/24 via 10.0.0.254 src 10.5.5.5", "Invalid prefsrc address"),
    ("10.9.0.0/24 via 10.0.0.254 scope host", "host scope can not have a gateway"),
    ("10.9.0.0/24 via 10.0.0.254 scope link", "Nexthop has invalid gateway"),
    ("10.9.0.0/24 via 10.7.0.2 onlink", "Nexthop device required for onlink"),
    ("10.9.0.0/24 via 10.0.0.254 dev eth1", "gateway is not reachable"),
    ("10.9.0.0/24 nexthop via 10.0.0.254 nexthop via 10.7.0.2", "gateway is not reachable"),
    ("10.9.0.0/24 nexthop via 10.0.0.254 nexthop via 10.1.0.254 dev eth9", "unknown interface 'eth9'"),
])
def test_route_attributes_the_kernel_refuses(tmp_path, route, fragment):
    err = load_err(tmp_path, TWO.format(rpf=0) + f"  - {route}\n")
    assert fragment in str(err) and err.line == 18


def test_route_attributes_load_and_show(tmp_path):
    from pathtrace.render.show import render_host
    rig = two(tmp_path, ["10.9.0.0/24 via 10.0.0.254 mtu lock 1400 advmss 1300 proto bird metric 50",
                         "10.9.1.0/24 via 10.0.0.254 mtu 70000 src 10.1.0.1 tos 0x10",
                         "local 10.5.5.5 dev eth0 table 100 src 10.5.5.5"])
    fa = rig.net.fib_tables[254].lookup(0x0A090001)
    assert (fa.dev, fa.mtu, fa.mtu_lock, fa.advmss, fa.metric, fa.proto) == ("eth0", 1400, True, 1300, 50, "bird")
    clamped = rig.net.fib_tables[254].lookup(0x0A090101, tos=0x10)
    assert (clamped.mtu, clamped.tos, clamped.prefsrc) == (65520, 0x10, 0x0A010001)   # ip route shows mtu 65520
    shown = render_host(rig.net)
    assert "10.9.0.0/24 via 10.0.0.254 dev eth0 mtu lock 1400 advmss 1300 proto bird metric 50" in shown


def test_via_without_dev_takes_the_gateways_device_for_rp_filter(tmp_path):
    """fib_check_nh_v4_gw resolves the device at insertion: strict rp_filter accepts the source on it."""
    rig = two(tmp_path, ["10.5.0.0/16 via 10.1.0.254"], rpf=1)
    ok = rig.send("eth1", build_udp("10.5.1.1", "10.0.0.7"))
    assert ok.reason != "IP_RPFILTER" and ok.egress == "eth0"
    bad = rig.send("eth0", build_udp("10.5.1.1", "10.1.0.9"))
    assert (bad.verdict, bad.reason) == ("DROP", "IP_RPFILTER")


def ip_frames(rec) -> list[bytes]:
    """IPv4 packets the host sent (queued behind an ARP request when the neighbour is unknown)."""
    return [e.frame[14:] for e in rec.emitted if e.frame[12:14] == b"\x08\x00"]


def build_udp(src: str, dst: str, size: int = 1, **ip) -> bytes:
    from pathtrace.packet import build
    return build.udp_packet(src, dst, 1000, 2000, b"x" * size, **ip)


def test_route_mtu_limits_forwarding(tmp_path):
    rig = two(tmp_path, ["10.9.0.0/24 via 10.1.0.254 mtu 1300"])
    big = rig.send("eth0", build_udp("10.0.0.7", "10.9.0.1", 1350, df=True))
    assert (big.verdict, big.reason) == ("DROP", "PKT_TOO_BIG")
    frag_needed = ip_frames(big)[0]
    assert frag_needed[20] == 3 and frag_needed[21] == 4 and int.from_bytes(frag_needed[26:28], "big") == 1300
    split = rig.send("eth0", build_udp("10.0.0.7", "10.9.0.1", 1350))
    assert split.verdict == "FORWARD" and len(split.emitted) == 2
    assert max(len(e.frame) - 14 for e in split.emitted) <= 1300
    small = rig.send("eth0", build_udp("10.0.0.7", "10.9.0.1", 1250, df=True))
    assert small.verdict == "FORWARD" and len(small.emitted) == 1


def test_route_tos_and_metric_choose_the_route(tmp_path):
    rig = two(tmp_path, ["10.9.0.0/24 tos 0x10 via 10.1.0.254", "10.9.0.0/24 via 10.0.0.254 metric 5",
                         "10.9.0.0/24 via 10.1.0.254 metric 10"])
    assert rig.send("eth0", build_udp("10.0.0.7", "10.9.0.1", tos=0x10)).egress == "eth1"
    assert rig.send("eth1", build_udp("10.1.0.9", "10.9.0.1")).egress == "eth0"     # metric 5 before 10


def test_route_src_is_the_source_of_icmp_errors(tmp_path):
    """icmp_send leaves saddr 0 for a forwarded packet: the route back's prefsrc (src) is used."""
    rig = two(tmp_path, ["10.5.0.0/16 via 10.1.0.254 src 10.0.0.1"])
    rec = rig.send("eth1", build_udp("10.5.1.1", "10.0.0.200", ttl=1))
    icmp = ip_frames(rec)[0]
    assert icmp[9] == 1 and icmp[20] == 11 and icmp[12:16] == bytes([10, 0, 0, 1])


@pytest.mark.parametrize("name", ["routes", "secondary", "peer"])
def test_host_features_agree_with_the_recorded_kernel(name):
    """tests/data/host_features/NAME.*, the kernel's side recorded with `pathtrace verify --json` on 6.18.
    routes: via without dev under strict rp_filter, a route mtu (DF and fragmented), tos and metric, src
    as the ICMP error source, nf_conntrack_tcp_loose=0.  secondary: primary and secondary addresses on
    one subnet and a /25 beside them, as sources of replies and ICMP errors, and their broadcasts.
    peer: point-to-point addresses (a /32 peer and a /24 peer prefix) for delivery, forwarding,
    strict rp_filter, ICMP error sources and the peer prefix's broadcast."""
    import json
    from pathlib import Path
    from pathtrace.capture.reader import read_frames
    from pathtrace.verify.runner import plan, run_model
    data = Path(__file__).parent / "data" / "host_features"
    host = load_host(str(data / f"{name}.yaml"))
    kernel = json.loads((data / f"{name}.kernel.json").read_text())["observations"]
    model = run_model(host, plan(host, read_frames(str(data / f"{name}.pcap"))))
    assert len(model) == len(kernel) == 9
    for n, (m, k) in enumerate(zip(model, kernel)):
        assert (m.verdict, m.reason, m.egress, m.emitted) == (k["verdict"], k["reason"], k["egress"], k["emitted"]), n


# ---- secondary addresses ---------------------------------------------------------------------------

def test_secondary_address_routes_match_the_kernel(tmp_path):
    """`ip addr add 10.0.0.1/24; 10.0.0.2/24; 10.0.0.3/25` then `ip route show table all` on 6.18:
    the secondary 10.0.0.2 adds only its local route, with the primary as src."""
    host = load_host(write(tmp_path, """
        interfaces:
          - name: eth0
            addresses: [10.0.0.1/24, 10.0.0.2/24, 10.0.0.3/25]
        """))
    net = build_net(host)
    routes = {fa.describe() for t in (254, 255) for fa in net.fib_tables[t].routes() if fa.dev == "eth0"}
    assert routes == {
        "10.0.0.0/25 dev eth0 proto kernel scope link src 10.0.0.3",
        "10.0.0.0/24 dev eth0 proto kernel scope link src 10.0.0.1",
        "local 10.0.0.1 dev eth0 proto kernel scope host src 10.0.0.1",
        "local 10.0.0.2 dev eth0 proto kernel scope host src 10.0.0.1",
        "local 10.0.0.3 dev eth0 proto kernel scope host src 10.0.0.3",
        "broadcast 10.0.0.127 dev eth0 proto kernel scope link src 10.0.0.3",
        "broadcast 10.0.0.255 dev eth0 proto kernel scope link src 10.0.0.1",
    }
    # ip addr lists secondaries after every primary
    assert [a.local & 0xFF for a in net.devices["eth0"].addrs] == [1, 3, 2]
    assert net.inet_select_addr(net.devices["eth0"], 0x0A000063) == 0x0A000001


def test_peer_addresses_route_the_peer_prefix(tmp_path):
    """`ip addr add 10.2.0.1 peer 10.3.0.1` and `10.4.0.1 peer 10.5.0.0/24` on 6.18: the prefix route
    and broadcast follow the peer (ifa_address), the local route the local address."""
    host = load_host(write(tmp_path, """
        interfaces:
          - name: eth0
            addresses: ["10.2.0.1 peer 10.3.0.1", "10.4.0.1 peer 10.5.0.0/24"]
        """))
    net = build_net(host)
    routes = {fa.describe() for t in (254, 255) for fa in net.fib_tables[t].routes() if fa.dev == "eth0"}
    assert routes == {
        "10.3.0.1 dev eth0 proto kernel scope link src 10.2.0.1",
        "10.5.0.0/24 dev eth0 proto kernel scope link src 10.4.0.1",
        "local 10.2.0.1 dev eth0 proto kernel scope host src 10.2.0.1",
        "local 10.4.0.1 dev eth0 proto kernel scope host src 10.4.0.1",
        "broadcast 10.5.0.255 dev eth0 proto kernel scope link src 10.4.0.1",
    }


@pytest.mark.parametrize("text", ["10.2.0.1/24 peer 10.3.0.1", "10.2.0.1 peer 10.3.0.300/32", "10.2.0.1 peer 10.3.0.1/40"])
def test_bad_peer_addresses(tmp_path, text):
    err = load_err(tmp_path, f"interfaces:\n  - name: eth0\n    addresses: [\"{text}\"]\n")
    assert err.line == 3 and "bad address" in str(err)
