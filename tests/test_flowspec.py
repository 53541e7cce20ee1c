"""The packet spelling shared by explain and expectation files: parsing and the bytes built."""
from __future__ import annotations

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pathtrace.commands.flowspec import FlowSpecError, from_mapping, ip_packet, parse_words
from pathtrace.commands.headers import ip_headers
from pathtrace.lib.inet import aton, ntoa


def test_tcp_spelling_with_options() -> None:
    spec = parse_words("tcp 198.51.100.7:40000 203.0.113.2:22 --in eth0 --flags SA --mark 0x10 --ttl 3 --len 100")
    assert (spec.proto, ntoa(spec.src), spec.sport, ntoa(spec.dst), spec.dport) == (6, "198.51.100.7", 40000,
                                                                                       "203.0.113.2", 22)
    assert (spec.ingress, spec.tcp_flags, spec.mark, spec.ttl, spec.length) == ("eth0", "SA", 16, 3, 100)
    ip = dpkt.ip.IP(ip_packet(spec))
    assert ip.len == 100 and ip.ttl == 3 and ip.data.flags == dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK
    assert ip.data.dport == 22


def test_default_flags_follow_state() -> None:
    assert parse_words("tcp 1.2.3.4:1 5.6.7.8:2").tcp_flags == "S"
    assert parse_words("tcp 1.2.3.4:1 5.6.7.8:2 --state established").tcp_flags == "A"


def test_icmp_and_other_protocols() -> None:
    spec = parse_words("icmp 1.2.3.4 5.6.7.8 --type 3 --code 1")
    ip = dpkt.ip.IP(ip_packet(spec))
    assert (ip.p, ip.data.type, ip.data.code) == (1, 3, 1)
    gre = parse_words(["47", "1.2.3.4", "5.6.7.8"])
    assert gre.proto == 47 and dpkt.ip.IP(ip_packet(gre)).p == 47


def test_mapping_and_words_agree() -> None:
    a = from_mapping({"proto": "udp", "src": "10.0.0.1:53", "dst": "10.0.0.2:5353", "in": "lan", "ttl": 9})
    b = parse_words("udp 10.0.0.1:53 10.0.0.2:5353 --in lan --ttl 9")
    assert a == b


def test_source_port_defaults_but_destination_port_is_required() -> None:
    assert parse_words("tcp 1.2.3.4 5.6.7.8:22").sport == 40000
    with pytest.raises(FlowSpecError, match="needs a port"):
        parse_words("tcp 1.2.3.4:1 5.6.7.8")


@pytest.mark.parametrize("text,message", [
    ("tcp 1.2.3:1 5.6.7.8:2", "bad source address"),
    ("icmp 1.2.3.4:5 5.6.7.8", "no ports"),
    ("tcp 1.2.3.4:1 5.6.7.8:99999", "bad destination port"),
    ("bogus 1.2.3.4 5.6.7.8", "unknown protocol"),
    ("udp 1.2.3.4:1 5.6.7.8:2 --flags S", "only for tcp"),
    ("tcp 1.2.3.4:1 5.6.7.8:2 --flags Q", "unknown TCP flag"),
    ("tcp 1.2.3.4:1 5.6.7.8:2 --state half-open", "state must be"),
    ("tcp 1.2.3.4:1 5.6.7.8:2 --colour red", "unknown packet option"),
    ("tcp 1.2.3.4:1", "expected PROTO SRC DST"),
    ("tcp 1.2.3.4:1 5.6.7.8:2 --ttl", "needs a value"),
])
def test_errors_name_the_part(text: str, message: str) -> None:
    with pytest.raises(FlowSpecError, match=message):
        parse_words(text)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(1, 65535), st.integers(1, 65535),
       st.sampled_from(["tcp", "udp"]), st.integers(48, 1500))
def test_built_packet_round_trips(src: int, dst: int, sport: int, dport: int, proto: str, length: int) -> None:
    spec = parse_words(f"{proto} {ntoa(src)}:{sport} {ntoa(dst)}:{dport} --len {length}")
    pkt = ip_packet(spec)
    h = ip_headers(pkt)
    assert len(pkt) == length
    assert (h.src, h.dst, h.sport, h.dport) == (src, dst, sport, dport)
    assert aton(ntoa(src)) == src
