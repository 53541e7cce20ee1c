"""Each match: a packet that matches and one that just misses."""
from __future__ import annotations

import pytest

from netfilter_helpers import ETH0, filter_rules, icmp_payload, load, make_skb, tcp_payload, udp_payload, verdict

MSS_OPT = bytes((2, 4, 0x05, 0xB4))


def _drops(rule: str, skb, hook: int = 1, indev=ETH0, outdev=None, ipsets=None) -> bool:
    nf = load(filter_rules(f"-A {'INPUT' if hook == 1 else 'OUTPUT' if hook == 3 else 'FORWARD'} {rule} -j DROP"),
              ipsets=ipsets)
    return nf.hook(hook, skb, indev, outdev) == 0


CASES = [
    ("-s 10.0.0.0/24", dict(src="10.0.0.9"), dict(src="10.0.1.9")),
    ("! -d 10.0.0.2", dict(dst="10.0.0.3"), dict(dst="10.0.0.2")),
    ("-p udp", dict(proto=17), dict(proto=6)),
    ("-p 1", dict(proto=1), dict(proto=17)),
    ("-f", dict(proto=17, frag_off=5, payload=b"12345678"), dict(proto=17)),
    ("-p tcp --dport 22", dict(payload=tcp_payload(1, 22)), dict(payload=tcp_payload(1, 23))),
    ("-p tcp -m tcp --sport 1000:2000", dict(payload=tcp_payload(2000, 1)), dict(payload=tcp_payload(2001, 1))),
    ("-p tcp -m tcp --syn", dict(payload=tcp_payload(1, 2, 0x02)), dict(payload=tcp_payload(1, 2, 0x12))),
    ("-p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN", dict(payload=tcp_payload(1, 2, 0x10)),
     dict(payload=tcp_payload(1, 2, 0x02))),
    ("-p tcp -m tcp --tcp-option 2", dict(payload=tcp_payload(1, 2, options=MSS_OPT)), dict(payload=tcp_payload(1, 2))),
    ("-p udp -m udp ! --dport 53", dict(proto=17, payload=udp_payload(1, 54)), dict(proto=17, payload=udp_payload(1, 53))),
    ("-p icmp -m icmp --icmp-type echo-request", dict(proto=1, payload=icmp_payload(8)),
     dict(proto=1, payload=icmp_payload(0))),
    ("-p icmp -m icmp --icmp-type 3/4", dict(proto=1, payload=icmp_payload(3, 4)), dict(proto=1, payload=icmp_payload(3, 3))),
    ("-p tcp -m multiport --dports 21,80:90", dict(payload=tcp_payload(1, 85)), dict(payload=tcp_payload(1, 91))),
    ("-p tcp -m multiport --ports 443", dict(payload=tcp_payload(443, 1)), dict(payload=tcp_payload(442, 1))),
    ("-m iprange --src-range 10.0.0.1-10.0.0.5", dict(src="10.0.0.5"), dict(src="10.0.0.6")),
    ("-m mark --mark 0x1/0xf", dict(mark=0x31), dict(mark=0x2)),
    ("-m length --length 40:100", dict(), dict(payload=tcp_payload(1, 2, data=b"x" * 100))),
    ("-m ttl --ttl-lt 10", dict(ttl=9), dict(ttl=10)),
    ("-m ttl ! --ttl-eq 64", dict(ttl=63), dict(ttl=64)),
    ("-m tos --tos 0x10", dict(tos=0x10), dict(tos=0x08)),
    ("-m dscp --dscp-class EF", dict(tos=46 << 2), dict(tos=0)),
    ("-m pkttype --pkt-type broadcast", dict(pkt_type=1), dict(pkt_type=0)),
    ("-m mac --mac-source 02:aa:00:00:00:01", dict(), dict(mac_src=b"\x02\xaa\0\0\0\x02")),
    ("-m comment --comment \"x y\" -s 10.0.0.1", dict(), dict(src="10.0.0.3")),
    ("-m policy --dir in --pol none", dict(), None),
    ("-m set --match-set S src", dict(src="192.0.2.7"), dict(src="192.0.2.8")),
    ("-p tcp -m set --match-set SP src,dst", dict(src="192.0.2.7", payload=tcp_payload(1, 80)),
     dict(src="192.0.2.7", payload=tcp_payload(1, 81))),
]


@pytest.mark.parametrize("rule,hit,miss", CASES, ids=[c[0] for c in CASES])
def test_match_hit_and_miss(rule, hit, miss) -> None:
    sets = {"S": ["192.0.2.7", "198.51.100.0/24"], "SP": ["192.0.2.7,tcp:80"]}

    def mk(kw):
        kw = dict(kw)
        extra = {k: kw.pop(k) for k in ("mark", "pkt_type", "mac_src") if k in kw}
        skb = make_skb(**{k: v for k, v in kw.items() if k != "mac_src"}, **({"mac_src": extra["mac_src"]} if "mac_src" in extra else {}))
        for k in ("mark", "pkt_type"):
            if k in extra:
                setattr(skb, k, extra[k])
        return skb
    assert _drops(rule, mk(hit), ipsets=sets)
    if miss is not None:
        assert not _drops(rule, mk(miss), ipsets=sets)


def test_policy_ipsec_never_matches() -> None:
    assert not _drops("-m policy --dir in --pol ipsec", make_skb())


def test_tcp_truncated_header_hotdrops() -> None:
    nf = load(filter_rules("-A INPUT -p tcp --dport 1 -j ACCEPT"))
    skb = make_skb(payload=b"\0\1\0\1", fix_csum=False)
    assert nf.hook(1, skb, ETH0, None) == 0
    assert skb.ctx.steps[1].detail["note"] == "hotdrop"


def test_interface_in_output_is_empty_name() -> None:
    nf = load(filter_rules("-A OUTPUT -o eth+ -j DROP"))
    assert nf.hook(3, make_skb(), None, ETH0) == 0
    assert nf.hook(3, make_skb(), None, None) == 1


def test_owner_without_socket() -> None:
    assert not _drops("-m owner --uid-owner 0", make_skb(), hook=3, indev=None, outdev=ETH0)
    assert _drops("-m owner ! --uid-owner 0", make_skb(), hook=3, indev=None, outdev=ETH0)


def test_limit_token_bucket() -> None:
    nf = load(filter_rules("-A INPUT -m limit --limit 1/second --limit-burst 2 -j ACCEPT", policy="DROP"))
    times = [0.0, 0.001, 0.002, 0.5, 1.003, 1.004]
    got = [nf.hook(1, make_skb(now=t), ETH0, None) for t in times]
    assert got == [1, 1, 0, 0, 1, 0]


def test_hashlimit_per_source() -> None:
    nf = load(filter_rules("-A INPUT -m hashlimit --hashlimit-upto 1/sec --hashlimit-burst 1 "
                           "--hashlimit-mode srcip --hashlimit-name t -j ACCEPT", policy="DROP"))
    assert nf.hook(1, make_skb(src="10.0.0.1"), ETH0, None) == 1
    assert nf.hook(1, make_skb(src="10.0.0.1", now=0.1), ETH0, None) == 0
    assert nf.hook(1, make_skb(src="10.0.0.7", now=0.1), ETH0, None) == 1
    assert nf.hook(1, make_skb(src="10.0.0.1", now=1.2), ETH0, None) == 1


def test_recent_set_and_update() -> None:
    nf = load(filter_rules("-A INPUT -m recent --update --seconds 60 --hitcount 3 --name ssh --rsource -j DROP",
                           "-A INPUT -m recent --set --name ssh --rsource -j ACCEPT"))
    got = [nf.hook(1, make_skb(now=t), ETH0, None) for t in (0, 1, 2, 3)]
    assert got == [1, 1, 1, 0]          # the 4th packet sees 3 stamps within 60 s
    assert nf.hook(1, make_skb(now=200), ETH0, None) == 1


def test_addrtype_uses_route_type(monkeypatch) -> None:
    from pathtrace.net.ipv4 import route
    monkeypatch.setattr(route, "inet_addr_type", lambda net, a: "LOCAL" if a == 0x0A000002 else "UNICAST")
    assert _drops("-m addrtype --dst-type LOCAL", make_skb())
    assert not _drops("-m addrtype --dst-type LOCAL", make_skb(dst="10.0.0.3"))


def test_conntrack_and_state() -> None:
    from pathtrace.net.netfilter.nf_conntrack_core import UNTRACKED, NfConn
    from pathtrace.net.netfilter.nf_conntrack_tuple import Tuple
    ct = NfConn(Tuple(1, 2, 6, 3, 4), Tuple(2, 1, 6, 4, 3), status=1 << 5, mark=7)
    nf = load(filter_rules("-A INPUT -m conntrack --ctstate DNAT --ctorigdstport 4 -j DROP",
                           "-A INPUT -m state --state INVALID -j DROP", "-A INPUT -m connmark --mark 7 -j DROP"))
    skb = make_skb(); skb.ct, skb.ctinfo = ct, 2
    assert nf.hook(1, skb, ETH0, None) == 0 and skb.ctx.verdicts[-1]["rule"] == 1
    skb = make_skb(); skb.ct = None
    assert nf.hook(1, skb, ETH0, None) == 0 and skb.ctx.verdicts[-1]["rule"] == 2
    skb = make_skb(); skb.ct, skb.ctinfo = UNTRACKED, 7
    assert nf.hook(1, skb, ETH0, None) == 1
    assert nf.conntrack is not None
