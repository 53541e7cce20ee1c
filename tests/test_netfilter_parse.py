"""Ruleset parsing: formats, quoting, negation, chain checks the kernel/iptables make."""
from __future__ import annotations

import pytest

from netfilter_helpers import ETH0, ETH1, decided, filter_rules, load, make_skb, verdict
from pathtrace.errors import HostFileError
from pathtrace.net.netfilter.iptables_restore import tokenize


def test_tokenize_quotes_and_escapes() -> None:
    assert tokenize('-A X -m comment --comment "a b" -j LOG --log-prefix "\\"q"') == \
        ["-A", "X", "-m", "comment", "--comment", "a b", "-j", "LOG", "--log-prefix", '"q']


def test_listing_format_with_table_hint_and_counters() -> None:
    nf = load("# table: filter\n-P INPUT DROP\n-N X\n-A INPUT -j X\n-A X -s 10.0.0.1 -j ACCEPT\n")
    assert verdict(nf, make_skb()) == 1
    assert verdict(nf, make_skb(src="10.0.0.9")) == 0


def test_save_format_counters_ignored() -> None:
    nf = load("*filter\n:INPUT DROP [5:500]\n[3:120] -A INPUT -p udp -j ACCEPT\nCOMMIT\n")
    assert verdict(nf, make_skb(proto=17)) == 1
    assert [c["pkts"] for c in nf.rule_counters() if c["chain"] == "INPUT"] == [0, 1]


def test_old_style_negation_and_wildcard() -> None:
    nf = load(filter_rules("-A INPUT -s ! 10.0.0.0/8 -j DROP", "-A INPUT ! -i eth+ -j DROP"))
    assert verdict(nf, make_skb(src="192.0.2.1")) == 0
    assert verdict(nf, make_skb(), indev=ETH1) == 1
    assert verdict(nf, make_skb(), indev=None) == 0
    assert "! -s 10.0.0.0/8" in nf.tables["filter"].chains["INPUT"].rules[0].text


@pytest.mark.parametrize("rules,chains,msg,line", [
    (["-A INPUT -j A", "-A A -j B", "-A B -j A"], ":A - [0:0]\n:B - [0:0]\n", "chain loop", 7),
    (["-A INPUT -j NOPE"], "", "NOPE", 5),
    (["-A INPUT -s host.example -j DROP"], "", "DNS", 5),
    (["-A INPUT -m physdev --physdev-in x -j DROP"], "", "physdev", 5),
    (["-A INPUT -p tcp --frob 1 -j DROP"], "", "--frob", 5),
    (["-A INPUT -o eth0 -j DROP"], "", "-o with INPUT", 5),
    (["-A INPUT -p udp -j REJECT --reject-with tcp-reset"], "", "TCP_RESET", 5),
    (["-A INPUT -j DNAT --to-destination 1.2.3.4"], "", "nat table", 5),
    (["-A INPUT -m multiport --dports 1,2 -j DROP"], "", "multiport", 5),
])
def test_refusals_name_line(rules, chains, msg, line) -> None:
    with pytest.raises(HostFileError) as e:
        load(filter_rules(*rules, chains=chains))
    assert msg in e.value.message
    assert e.value.line == line + chains.count("\n")


def test_hook_restriction_through_user_chain() -> None:
    text = "*mangle\n:PREROUTING ACCEPT [0:0]\n:X - [0:0]\n-A PREROUTING -j X\n-A X -j REJECT\nCOMMIT\n"
    with pytest.raises(HostFileError, match="used from hooks PREROUTING"):
        load(text)


def test_unreachable_loop_is_accepted_like_the_kernel() -> None:
    load(filter_rules("-A A -j B", "-A B -j A", chains=":A - [0:0]\n:B - [0:0]\n"))


def test_no_ruleset_no_hooks() -> None:
    nf = load("")
    skb = make_skb()
    assert nf.hook(1, skb, ETH0, None) == 1 and skb.ctx.steps == []


def test_only_filter_registers_only_filter() -> None:
    nf = load(filter_rules("-A INPUT -j ACCEPT"))
    assert nf.conntrack is None
    assert [e.name for e in nf.entries[1]] == ["iptable_filter_hook"]
    assert 0 not in nf.entries


def test_goto_return_goes_to_policy_and_user_chain_implicit_return() -> None:
    nf = load(filter_rules("-A INPUT -g G", "-A INPUT -j ACCEPT", "-A G -p udp -j RETURN",
                           chains=":G - [0:0]\n", policy="DROP"))
    skb = make_skb(proto=17)
    assert verdict(nf, skb) == 0 and decided(skb)["rule"] == 0
    nf2 = load(filter_rules("-A INPUT -j U", "-A INPUT -j ACCEPT", chains=":U - [0:0]\n", policy="DROP"))
    assert verdict(nf2, make_skb()) == 1
