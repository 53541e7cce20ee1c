"""Sysctl side effects as a 6.18 kernel applies them in a new namespace (values read back live:
ip netns add x; cat /proc/sys/net/ipv4/conf/{lo,all,default}/...; echo 1 > .../ip_forward; cat again)."""
from __future__ import annotations

from pathtrace.net.ipv4.devinet import Sysctl


def _sysctl() -> Sysctl:
    s = Sysctl()
    s.init_devices(["lo", "eth0"])
    return s


def test_loopback_defaults():
    s = _sysctl()
    assert (s.conf["lo"]["disable_xfrm"], s.conf["lo"]["disable_policy"], s.conf["lo"]["accept_source_route"]) == (1, 1, 1)
    assert s.conf["all"]["accept_source_route"] == 0 and s.conf["eth0"]["disable_xfrm"] == 0


def test_ip_forward_sets_every_device_and_turns_all_accept_redirects_off():
    s = _sysctl()
    s.write("net.ipv4.ip_forward", 1)
    assert s.conf["lo"]["forwarding"] == 1 and s.conf["default"]["forwarding"] == 1
    assert s.conf["all"]["accept_redirects"] == 0 and s.conf["default"]["accept_redirects"] == 1
    s.write("net.ipv4.ip_forward", 0)
    assert s.conf["all"]["accept_redirects"] == 1 and s.conf["lo"]["forwarding"] == 0
