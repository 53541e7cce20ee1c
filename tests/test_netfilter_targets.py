"""Targets: terminal verdicts, mangling, REJECT replies (stack functions faked), NAT hand-off, NFQUEUE."""
from __future__ import annotations

import struct

from netfilter_helpers import ETH0, filter_rules, load, make_skb, tcp_payload


def test_reject_port_unreachable_default(monkeypatch) -> None:
    sent = []
    import pathtrace.net.ipv4.icmp as icmp
    monkeypatch.setattr(icmp, "icmp_send", lambda skb, t, c, info=0: sent.append((t, c)))
    nf = load(filter_rules("-A INPUT -p udp -j REJECT"))
    skb = make_skb(proto=17)
    assert nf.hook(1, skb, ETH0, None) == 0
    assert sent == [(3, 3)]
    assert [s.fn for s in skb.ctx.steps][:4] == ["nf_hook_slow", "ipt_do_table", "reject_tg", "nf_send_unreach"]


def test_reject_with_every_icmp_code(monkeypatch) -> None:
    import pathtrace.net.ipv4.icmp as icmp
    for name, code in (("icmp-net-unreachable", 0), ("icmp-host-unreachable", 1), ("icmp-proto-unreachable", 2),
                       ("icmp-port-unreachable", 3), ("icmp-net-prohibited", 9), ("icmp-host-prohibited", 10),
                       ("icmp-admin-prohibited", 13)):
        sent = []
        monkeypatch.setattr(icmp, "icmp_send", lambda skb, t, c, info=0: sent.append((t, c)))
        nf = load(filter_rules(f"-A INPUT -j REJECT --reject-with {name}"))
        assert nf.hook(1, make_skb(), ETH0, None) == 0 and sent == [(3, code)], name


def test_reject_tcp_reset(monkeypatch) -> None:
    import pathtrace.net.ipv4.ip_output as out
    import pathtrace.net.ipv4.tcp_ipv4 as tcp
    sent = []
    monkeypatch.setattr(tcp, "tcp_v4_build_reset", lambda old: "RST")
    monkeypatch.setattr(out, "ip_local_out", lambda skb: sent.append(skb))
    nf = load(filter_rules("-A INPUT -p tcp -j REJECT --reject-with tcp-reset"))
    assert nf.hook(1, make_skb(), ETH0, None) == 0 and sent == ["RST"]
    sent.clear()
    assert nf.hook(1, make_skb(payload=tcp_payload(1, 2, 0x04)), ETH0, None) == 0 and sent == []


def test_log_is_not_terminating() -> None:
    nf = load(filter_rules('-A INPUT -j LOG --log-prefix "IN: "', "-A INPUT -j NFLOG --nflog-group 5",
                           "-A INPUT -j DROP"))
    skb = make_skb()
    assert nf.hook(1, skb, ETH0, None) == 0
    logs = [s for s in skb.ctx.steps if s.fn in ("log_tg", "nflog_tg")]
    assert logs[0].detail["prefix"] == "IN: " and logs[1].detail["group"] == 5


def test_mark_variants() -> None:
    for opt, start, end in (("--set-xmark 0x1/0xff", 0x102, 0x101), ("--set-mark 0x5", 0x100, 0x5),
                            ("--and-mark 0xf0", 0x1ff, 0xf0), ("--or-mark 0x1", 0x100, 0x101),
                            ("--xor-mark 0x3", 0x1, 0x2)):
        nf = load(f"*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j MARK {opt}\nCOMMIT\n")
        skb = make_skb(); skb.mark = start
        nf.hook(0, skb, ETH0, None)
        assert skb.mark == end, opt


def test_connmark_save_restore() -> None:
    from pathtrace.net.netfilter.nf_conntrack_core import NfConn
    from pathtrace.net.netfilter.nf_conntrack_tuple import Tuple
    nf = load(filter_rules("-A INPUT -j CONNMARK --save-mark --mask 0xff", "-A OUTPUT -j CONNMARK --restore-mark"))
    ct = NfConn(Tuple(1, 2, 6, 3, 4), Tuple(2, 1, 6, 4, 3), mark=0x1000)
    skb = make_skb(); skb.ct, skb.ctinfo, skb.mark = ct, 2, 0x1234
    nf.hook(1, skb, ETH0, None)
    assert ct.mark == 0x1034
    skb2 = make_skb(); skb2.ct, skb2.ctinfo = ct, 0
    nf.hook(3, skb2, None, ETH0)
    assert skb2.mark == 0x1034


def test_ct_notrack_in_raw() -> None:
    from pathtrace.net.netfilter.nf_conntrack_core import UNTRACKED
    nf = load("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A PREROUTING -p udp -j CT --notrack\nCOMMIT\n")
    skb = make_skb(proto=17)
    nf.entries[0] = [e for e in nf.entries[0] if e.name == "iptable_raw_hook"]   # table only
    nf.hook(0, skb, ETH0, None)
    assert skb.ct is UNTRACKED


def test_ttl_and_tos_targets_fix_checksum() -> None:
    from pathtrace.lib.checksum import ip_fast_csum
    nf = load("*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j TTL --ttl-dec 2\n"
              "-A PREROUTING -j DSCP --set-dscp-class AF41\nCOMMIT\n")
    skb = make_skb(ttl=10)
    nf.hook(0, skb, ETH0, None)
    assert skb.iph.ttl == 8 and skb.iph.tos >> 2 == 34
    h = skb.iph
    h2 = type(h)(**{**{f: getattr(h, f) for f in h.__slots__}, "check": 0})
    assert ip_fast_csum(h2.pack()) == h.check


def test_tcpmss_clamps_existing_option() -> None:
    nf = load("*mangle\n:FORWARD ACCEPT [0:0]\n-A FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN "
              "-j TCPMSS --set-mss 1400\nCOMMIT\n")
    skb = make_skb(payload=tcp_payload(1, 2, 0x02, bytes((2, 4, 0x05, 0xB4))))
    nf.hook(2, skb, ETH0, ETH0)
    assert struct.unpack_from("!H", skb.payload, 22)[0] == 1400


def test_nfqueue_without_listener() -> None:
    nf = load(filter_rules("-A INPUT -j NFQUEUE --queue-num 3"))
    skb = make_skb()
    assert nf.hook(1, skb, ETH0, None) == 0 and skb.verdict == "DROP"
    nf = load(filter_rules("-A INPUT -j NFQUEUE --queue-num 3 --queue-bypass", "-A INPUT -j DROP"))
    assert nf.hook(1, make_skb(), ETH0, None) == 1


def test_dnat_calls_nf_nat_setup_info(monkeypatch) -> None:
    import pathtrace.net.netfilter.nf_nat_core as nat
    from pathtrace.net.netfilter.xt_nat import build_dnat
    from pathtrace.net.netfilter.x_tables import Opt, RuleCtx
    calls = []
    monkeypatch.setattr(nat, "nf_nat_setup_info", lambda ct, r, m: calls.append((r, m)) or 1)
    t = build_dnat([Opt("--to-destination", ["192.0.2.2:80"])], RuleCtx("nat", "PREROUTING", 6, False, 1))
    skb = make_skb(); skb.ct, skb.ctinfo = object(), 2
    import pathtrace.net.netfilter.nf_conntrack_core as core
    monkeypatch.setattr(core, "nf_ct_get", lambda skb: skb.ct)
    assert t.fn(skb, None) == 1
    r, manip = calls[0]
    assert manip == 1 and r.min_addr == 0xC0000202 and r.min_proto == 80 and r.flags == 3


def test_counters_and_unhit() -> None:
    nf = load(filter_rules("-A INPUT -p udp -j ACCEPT", "-A INPUT -p tcp -j ACCEPT"))
    nf.hook(1, make_skb(), ETH0, None)
    assert [c["text"] for c in nf.unhit_rules()] == ["-A INPUT -p udp -j ACCEPT"]
    assert "Chain INPUT (policy ACCEPT 0 packets, 0 bytes)" in nf.format_listing()


def test_no_record_path_still_records_verdicts() -> None:
    nf = load(filter_rules("-A INPUT -p tcp -j DROP"))
    skb = make_skb(record=False)
    assert nf.hook(1, skb, ETH0, None) == 0
    assert skb.ctx.steps == [] and skb.ctx.verdicts[0]["text"] == "-A INPUT -p tcp -j DROP"
