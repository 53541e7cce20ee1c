"""Multipath routes (`nexthop via A weight 1 nexthop via B weight 3`): loaded as ip route add takes
them (checked with pathtrace verify: a 6.18 kernel accepts the route and spreads flows over both
nexthops), fib_rebalance's bounds, and flows spread by weight.  Which nexthop one flow takes is keyed
by the kernel's per-boot random hash secret: the model's stand-in hash cannot predict it."""
from __future__ import annotations

import pytest

from helpers import Rig
from pathtrace.host.iproute import parse_route
from pathtrace.net.ipv4.fib import fib_rebalance
from pathtrace.packet import build

HOST = """
name: mp
interfaces:
  - {name: lan0, mac: "02:00:00:00:00:01", addresses: [10.0.0.1/24]}
  - {name: wan0, mac: "02:00:00:00:01:01", addresses: [192.0.2.1/24]}
  - {name: wan1, mac: "02:00:00:00:02:01", addresses: [198.51.100.1/24]}
sysctl:
  net.ipv4.ip_forward: 1
  net.ipv4.conf.all.rp_filter: 1
routes:
  - default nexthop via 192.0.2.254 weight 1 nexthop via 198.51.100.254 dev wan1 weight 3
neighbours:
  - 192.0.2.254 dev wan0 lladdr 02:00:00:00:01:fe permanent
  - 198.51.100.254 dev wan1 lladdr 02:00:00:00:02:fe permanent
"""


def test_parse_nexthops() -> None:
    r = parse_route("default metric 5 nexthop via 10.1.0.2 dev eth0 weight 2 nexthop via 10.2.0.2")
    assert r.nexthops == [(0x0A010002, "eth0", 2), (0x0A020002, None, 1)] and r.metric == 5
    for bad in ("default via 10.1.0.2 nexthop via 10.2.0.2", "default nexthop weight 2",
                "default nexthop via 10.1.0.2 weight 300"):
        with pytest.raises(ValueError):
            parse_route(bad)


def test_rebalance_bounds_split_the_31_bit_hash_by_weight() -> None:
    hops = fib_rebalance([(1, "a", 1), (2, "b", 3)])
    assert [h.upper_bound for h in hops] == [(1 << 29) - 1, (1 << 31) - 1]


def test_flows_spread_by_weight_and_stay_on_their_nexthop(tmp_path) -> None:
    rig = Rig(tmp_path, HOST)
    egress = []
    for n in range(400):
        src, dst = f"10.0.0.{2 + n % 200}", f"203.0.113.{1 + n // 2}"
        rec = rig.send("lan0", build.udp_packet(src, dst, 4000, 53, b"x"))
        again = rig.send("lan0", build.udp_packet(src, dst, 4001, 53, b"y"))
        assert rec.verdict == "FORWARD" and again.egress == rec.egress     # layer-3 hash: per address pair
        egress.append(rec.egress)
    share = egress.count("wan1") / len(egress)
    assert 0.65 < share < 0.85                                             # weight 3 of 4


def test_rp_filter_accepts_a_source_behind_any_nexthop(tmp_path) -> None:
    """fib_info_nh_uses_dev: strict rp_filter passes when the reverse route's nexthops include the
    input device, whichever one a forward flow would hash to."""
    rig = Rig(tmp_path, HOST)
    for dev in ("wan0", "wan1"):
        rec = rig.send(dev, build.udp_packet("203.0.113.5", "10.0.0.9", 53, 4000, b"x"))
        assert rec.reason != "IP_RPFILTER", dev
