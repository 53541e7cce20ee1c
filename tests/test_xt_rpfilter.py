"""-m rpfilter (ipt_rpfilter.c) in raw PREROUTING, against what 6.18 did live in a netns (two veths,
eth0 192.0.2.1/24, eth1 198.51.100.1/24, default via eth1, `-t raw -A PREROUTING -m rpfilter --invert
-j DROP`, UDP datagrams from 198.51.100.7, counted by the raw DROP rule and an INPUT ACCEPT rule): arriving
on eth0 it was dropped, on eth1 accepted; with --loose the eth0 one was accepted too."""
from __future__ import annotations

import pytest

from helpers import Rig
from pathtrace.errors import PathtraceError
from pathtrace.packet import build

HOST = """
interfaces:
  - name: eth0
    driver: veth
    mac: 02:00:00:00:00:01
    addresses: [192.0.2.1/24]
  - name: eth1
    driver: veth
    mac: 02:00:00:00:00:02
    addresses: [198.51.100.1/24]
routes:
  - default via 198.51.100.254 dev eth1
iptables: |
  *{table}
  -A {chain} -m rpfilter {opts} -j DROP
  COMMIT
"""


def _verdict(tmp_path, dev: str, src: str, opts: str = "--invert", table: str = "raw",
             chain: str = "PREROUTING") -> str:
    rig = Rig(tmp_path, HOST.format(opts=opts, table=table, chain=chain))
    rec = rig.send(dev, build.icmp_packet(src, "192.0.2.1" if dev == "eth0" else "198.51.100.1", id=1, seq=1),
                   src_mac="02:aa:aa:aa:aa:01")
    return rec.verdict + (f" {rec.reason}" if rec.reason else "")


def test_strict_drops_a_source_routed_elsewhere(tmp_path):
    assert _verdict(tmp_path, "eth0", "198.51.100.7") == "DROP NETFILTER_DROP"
    assert _verdict(tmp_path, "eth1", "198.51.100.7") == "LOCAL_DELIVER"
    assert _verdict(tmp_path, "eth0", "192.0.2.7") == "LOCAL_DELIVER"


def test_loose_and_mangle(tmp_path):
    assert _verdict(tmp_path, "eth0", "198.51.100.7", "--loose --invert") == "LOCAL_DELIVER"
    assert _verdict(tmp_path, "eth0", "198.51.100.7", "--invert", "mangle") == "DROP NETFILTER_DROP"


def test_refused_outside_raw_and_mangle(tmp_path):
    with pytest.raises(PathtraceError, match="rpfilter: only valid in the 'raw' or 'mangle' table"):
        _verdict(tmp_path, "eth0", "198.51.100.7", "--invert", "filter", "INPUT")
