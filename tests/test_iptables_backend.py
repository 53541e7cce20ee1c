"""Which iptables the host runs (the host file's iptables-backend).  Live on 6.18 (netns, 20 UDP datagrams
at once to `-A INPUT -p udp -m limit --limit R --limit-burst B -j ACCEPT; -A INPUT -p udp -j DROP`):
iptables v1.8.9 (nf_tables) accepted `--limit 1/day --limit-burst 2` and let 2 through; 5/second burst 10
let 10; iptables-legacy refused 1/day burst 2 with "Numerical result out of range"."""
from __future__ import annotations

import pytest

from helpers import Rig
from pathtrace.errors import PathtraceError
from pathtrace.packet import build

HOST = """
{backend}interfaces:
  - name: eth0
    driver: veth
    mac: 02:00:00:00:00:01
    addresses: [10.6.0.1/24]
iptables: |
  *filter
  -A INPUT -p udp -m limit --limit {rate} --limit-burst {burst} -j ACCEPT
  -A INPUT -p udp -j DROP
  COMMIT
"""


def _accepted(tmp_path, rate: str, burst: int, backend: str = "") -> int:
    rig = Rig(tmp_path, HOST.format(rate=rate, burst=burst, backend=backend))
    return sum(rig.send("eth0", build.udp_packet("10.6.0.2", "10.6.0.1", 4000, 9, b"x"), dt=0.0001,
                        src_mac="02:00:00:00:00:02").rules[-1]["verdict"] == "ACCEPT" for _ in range(20))


@pytest.mark.parametrize("rate,burst", [("1/day", 2), ("5/second", 10), ("1/minute", 5)])
def test_nft_backend_as_measured(tmp_path, rate, burst):
    assert _accepted(tmp_path, rate, burst) == burst


def test_legacy_refuses_an_overflowing_limit(tmp_path):
    with pytest.raises(PathtraceError, match="Overflow"):
        _accepted(tmp_path, "1/day", 2, "iptables-backend: legacy\n")
    assert _accepted(tmp_path, "5/second", 10, "iptables-backend: legacy\n") == 10


def test_unknown_backend_is_refused_with_its_line(tmp_path):
    with pytest.raises(PathtraceError, match=r"host.yaml:2: iptables-backend must be nft"):
        _accepted(tmp_path, "1/day", 2, "iptables-backend: iptables\n")
