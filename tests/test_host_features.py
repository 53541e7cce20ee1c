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
