"""-m connlimit against 6.18 live (netns, listener on 10.7.0.1:80, `-A INPUT -p tcp --syn --dport 80
-m connlimit --connlimit-above 2 -j REJECT --reject-with tcp-reset`, four connects held open from one
client): connections 0 and 1 were accepted, 2 and 3 refused with a reset (rule counter 2)."""
from __future__ import annotations

from helpers import Rig
from pathtrace.packet import build

HOST = """
interfaces:
  - name: eth0
    driver: veth
    mac: 02:00:00:00:00:01
    addresses: [10.7.0.1/24]
neighbours:
  - 10.7.0.2 dev eth0 lladdr 02:00:00:00:00:02 reachable
sockets:
  - tcp 10.7.0.1:80
iptables: |
  *filter
  -A INPUT -p tcp --syn --dport 80 -m connlimit {opt} -j REJECT --reject-with tcp-reset
  COMMIT
"""


def _syns(tmp_path, opt: str, sources: list[str]) -> list[str]:
    rig = Rig(tmp_path, HOST.format(opt=opt))
    out = []
    for n, src in enumerate(sources):
        rec = rig.send("eth0", build.tcp_packet(src, "10.7.0.1", 40000 + n, 80, "S", seq=1000 * n),
                       src_mac="02:00:00:00:00:02")
        out.append("accepted" if rec.verdict == "LOCAL_DELIVER" else "refused")
    return out


def test_above_two_refuses_the_third_and_fourth(tmp_path):
    assert _syns(tmp_path, "--connlimit-above 2", ["10.7.0.2"] * 4) == ["accepted", "accepted", "refused", "refused"]


def test_upto_mask_and_per_source_counts(tmp_path):
    # upto 1 inverts: the rule (REJECT) matches while the count is <= 1; a refused SYN's connection
    # never gets confirmed, so nf_conncount evicts it and the next one counts 1 again
    assert _syns(tmp_path, "--connlimit-upto 1", ["10.7.0.2", "10.7.0.2"]) == ["refused", "refused"]
    # per /32 source, two sources each get their own two
    assert _syns(tmp_path, "--connlimit-above 1", ["10.7.0.2", "10.7.0.3", "10.7.0.2"]) == \
        ["accepted", "accepted", "refused"]
    # one /24 key for both
    assert _syns(tmp_path, "--connlimit-above 1 --connlimit-mask 24", ["10.7.0.2", "10.7.0.3"]) == \
        ["accepted", "refused"]
