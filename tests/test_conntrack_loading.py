"""conntrack runs only when something in the ruleset loads it (nf_ct_netns_get), as in the kernel.

Checked on 6.18 in a netns: with only `-t raw -A PREROUTING -p udp --dport 53 -j CT --notrack`,
UDP to other ports leaves `conntrack -L` empty; adding `-A INPUT -m conntrack --ctstate NEW -j
ACCEPT` makes the next datagram an entry."""
from __future__ import annotations

from helpers import Rig, fns
from pathtrace.packet import build

HOST = """
interfaces:
  - name: eth0
    driver: veth
    mac: 02:00:00:00:00:10
    addresses: [203.0.113.10/24]
neighbours:
  - 203.0.113.1 dev eth0 lladdr 02:00:00:00:00:01 reachable
routes:
  - default via 203.0.113.1 dev eth0
iptables: |
  *raw
  -A PREROUTING -p udp --dport 53 {target}
  COMMIT
  *filter
  -A INPUT -p udp --dport 53 -j ACCEPT
  {extra}
  COMMIT
"""


def _rig(tmp_path, target: str, extra: str = ""):
    return Rig(tmp_path, HOST.format(target=target, extra=extra))


def test_notrack_alone_loads_no_conntrack(tmp_path):
    for target in ("-j NOTRACK", "-j CT --notrack"):
        rig = _rig(tmp_path, target)
        assert rig.net.nf.conntrack is None, target
        rec = rig.send("eth0", build.udp_packet("198.51.100.7", "203.0.113.10", 4000, 53, b"q"),
                       src_mac="02:00:00:00:00:01")
        assert "ipv4_conntrack_in" not in fns(rec) and "ipv4_conntrack_defrag" not in fns(rec)


def test_ct_with_a_zone_or_another_user_loads_it(tmp_path):
    assert _rig(tmp_path, "-j CT --zone 1").net.nf.conntrack is not None
    rig = _rig(tmp_path, "-j NOTRACK", "-A INPUT -m conntrack --ctstate UNTRACKED -j ACCEPT")
    assert rig.net.nf.conntrack is not None
    rec = rig.send("eth0", build.udp_packet("198.51.100.7", "203.0.113.10", 4000, 53, b"q"),
                   src_mac="02:00:00:00:00:01")
    assert "ipv4_conntrack_in" in fns(rec)
