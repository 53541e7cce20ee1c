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
