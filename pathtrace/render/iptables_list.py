"""Rulesets as `iptables -L -v -n` prints them (iptables 1.8.9+ with nf_tables, as on the reference
machine): chain headers with policy counters, the fixed columns (pkts, bytes, target, prot as a number,
opt, in, out, source, destination) and each match's and target's own words (`tcp dpt:22`,
`ctstate NEW`, `/* comment */`, `reject-with icmp-port-unreachable`).  The words are rebuilt from the
rule's iptables-save options, as the extensions' print functions write them; an option this module
does not know is shown in its iptables-save form.  Checked against iptables -L -v -n on the shipped
rulesets and the shared corpus (tests/test_iptables_list.py).
"""
from __future__ import annotations

from typing import Any, Iterator

from pathtrace.lib.inet import aton, ntoa

PROTO_NUMBERS = {"all": 0, "icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51,
                 "icmpv6": 58, "sctp": 132, "udplite": 136}
LIMIT_SCALE = 10000
_RATES = (("day", LIMIT_SCALE * 86400), ("hour", LIMIT_SCALE * 3600), ("min", LIMIT_SCALE * 60), ("sec", LIMIT_SCALE))
_UNITS = {"s": 1, "se": 1, "sec": 1, "second": 1, "m": 60, "mi": 60, "min": 60, "minute": 60, "h": 3600,
          "ho": 3600, "hour": 3600, "d": 86400, "da": 86400, "day": 86400}
LOG_LEVELS = {"emerg": 0, "alert": 1, "crit": 2, "error": 3, "err": 3, "warning": 4, "warn": 4, "notice": 5,
              "info": 6, "debug": 7}
COLUMN_OPTS = {"-p", "-s", "-d", "-i", "-o", "--protocol", "--source", "--destination", "--in-interface",
               "--out-interface"}


def human(n: int) -> str:
    """xtables_print_num: up to 99999 as is, then K, M, G, T rounded (width 5)."""
    if n <= 99999:
        return f"{n:5d}"
    for suffix in ("K", "M", "G", "T"):
        n = (n + 500) // 1000
        if n <= 9999:
            return f"{n:4d}{suffix}"
    return f"{n}P"


def _segments(tokens: list[str]) -> Iterator[tuple[str, str, list[tuple[bool, str, list[str]]]]]:
    """('m'|'j'|'g', name, [(negated, option, values)]) for each match module and the target."""
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t in ("-m", "--match", "-j", "--jump", "-g", "--goto") and i + 1 < len(tokens):
            kind, name = t.lstrip("-")[0], tokens[i + 1]
            i += 2
            opts: list[tuple[bool, str, list[str]]] = []
            neg = False
            while i < len(tokens) and tokens[i] not in ("-m", "--match", "-j", "--jump", "-g", "--goto") \
                    and tokens[i] not in COLUMN_OPTS:
                tok = tokens[i]
                if tok == "!":
                    neg = True
                    i += 1
                    continue
                if tok.startswith("-"):
                    vals = []
                    i += 1
                    while i < len(tokens) and not tokens[i].startswith("-") and tokens[i] != "!":
                        vals.append(tokens[i])
                        i += 1
                    opts.append((neg, tok, vals))
                    neg = False
                    continue
                i += 1
            yield kind, name, opts
            continue
        i += 1


def _ports(label: str, neg: bool, value: str) -> str:
    lo, _, hi = value.partition(":")
    inv = "!" if neg else ""
    return f" {label}s:{inv}{lo}:{hi}" if hi and hi != lo else f" {label}:{inv}{lo}"


_TCP_FLAGS = {"FIN": 1, "SYN": 2, "RST": 4, "PSH": 8, "ACK": 16, "URG": 32, "ECE": 64, "CWR": 128, "ALL": 63,
              "NONE": 0}


def _flagbits(text: str) -> int:
    return sum(_TCP_FLAGS.get(f.upper(), 0) for f in text.split(","))


def _rate(text: str) -> str:
    num, _, unit = text.partition("/")
    period = _RATES[-1][1] * _UNITS.get(unit or "sec", 1) // max(int(num), 1)
    i = 1
    while i < len(_RATES):
        mult = _RATES[i][1]
        if period > mult or mult // period < mult % period:
            break
        i += 1
    name, mult = _RATES[i - 1]
    return f"{mult // period}/{name}"


def _mark(word: str, neg: bool, value: str) -> str:
    v, _, m = value.partition("/")
    out = f" {word} match {'!' if neg else ''}0x{int(v, 0):x}"
    return out + (f"/0x{int(m, 0):x}" if m and int(m, 0) != 0xFFFFFFFF else "")


def match_words(name: str, opts: list[tuple[bool, str, list[str]]], proto: str) -> str:
    """A match's print function output, from its iptables-save options."""
    o = {opt: (neg, vals) for neg, opt, vals in opts}
    v = lambda key: o[key][1][0] if key in o and o[key][1] else ""  # noqa: E731
    n = lambda key: o[key][0] if key in o else False  # noqa: E731
    if name in ("tcp", "udp"):
        out = f" {name}"
        for key, label in (("--sport", "spt"), ("--source-port", "spt"), ("--dport", "dpt"),
                           ("--destination-port", "dpt")):
            if key in o:
                out += _ports(label, n(key), v(key))
        if "--tcp-option" in o:
            out += f" option={'!' if n('--tcp-option') else ''}{v('--tcp-option')}"
        if "--tcp-flags" in o:
            mask, comp = o["--tcp-flags"][1][:2]
            out += f" flags:{'!' if n('--tcp-flags') else ''}0x{_flagbits(mask):02X}/0x{_flagbits(comp):02X}"
        if "--syn" in o:
            out += f" flags:{'!' if n('--syn') else ''}0x17/0x02"
        return out
    if name == "icmp":
        from pathtrace.net.netfilter.xt_tcpudp import parse_icmp_type
        typ, lo, hi = parse_icmp_type(v("--icmp-type"))
        out = f" {'!' if n('--icmp-type') else ''}icmptype {typ}" if typ != 0xFF else " icmp any"
        if lo == hi:
            out += f" code {lo}"
        elif (lo, hi) != (0, 0xFF):
            out += f" codes {lo}-{hi}"
        return out
    if name == "multiport":
        for key, label in (("--sports", "sports"), ("--source-ports", "sports"), ("--dports", "dports"),
                           ("--destination-ports", "dports"), ("--ports", "ports")):
            if key in o:
                return f" multiport {label} {'!' if n(key) else ''}{v(key)}"
    if name == "conntrack":
        out = ""
        for neg, key, vals in opts:
            word = key.lstrip("-")
            out += f" {'! ' if neg else ''}{word} {' '.join(vals)}".rstrip()
        return out
    if name == "state":
        return f" {'! ' if n('--state') else ''}state {v('--state')}"
    if name == "limit":
        rate = v("--limit") or "3/hour"
        return f" limit: avg {_rate(rate)} burst {v('--limit-burst') or 5}"
    if name in ("mark", "connmark"):
        return _mark(name, n("--mark"), v("--mark"))
    if name == "comment":
        return f" /* {' '.join(o['--comment'][1]).strip(chr(34))} */"
    if name == "addrtype":
        out = " ADDRTYPE match"
        for key, word in (("--src-type", "src-type"), ("--dst-type", "dst-type")):
            if key in o:
                out += f" {word} {'!' if n(key) else ''}{v(key)}"
        for key in ("--limit-iface-in", "--limit-iface-out"):
            if key in o:
                out += " limit-in" if key.endswith("in") else " limit-out"
        return out
    if name == "policy":
        out = " policy match"
        for neg, key, vals in opts:
            out += f" {key.lstrip('-')} {' '.join(vals)}".rstrip()
        return out
    if name == "rpfilter":
        return " rpfilter" + "".join(f" {key.lstrip('-')}" for _, key, _ in opts)
    if name == "owner":
        out = ""
        for neg, key, vals in opts:
            word = {"--uid-owner": "UID", "--gid-owner": "GID"}.get(key)
            out += f" owner {word} match {'!' if neg else ''}{vals[0]}" if word else f" owner {key.lstrip('-')}"
        return out
    if name == "recent":
        action = next((w.upper().lstrip("-") for w in ("--set", "--rcheck", "--update", "--remove") if w in o), "")
        action = {"RCHECK": "CHECK"}.get(action, action)
        out = f" recent: {'!' if any(o[k][0] for k in o) else ''}{action}"
        if "--seconds" in o:
            out += f" seconds: {v('--seconds')}"
        if "--reap" in o:
            out += " reap"
        if "--hitcount" in o:
            out += f" hit_count: {v('--hitcount')}"
        if "--rttl" in o:
            out += " TTL-Match"
        out += f" name: {v('--name') or 'DEFAULT'}"
        out += " side: dest" if "--rdest" in o else " side: source"
        return out + f" mask: {v('--mask') or '255.255.255.255'}"
    if name == "iprange":
        out = ""
        for key, word in (("--src-range", "source"), ("--dst-range", "destination")):
            if key in o:
                out += f" {word} IP range {'! ' if n(key) else ''}{v(key)}"
        return out
    if name == "length":
        lo, _, hi = v("--length").partition(":")
        return f" length {'!' if n('--length') else ''}{lo}" + (f":{hi}" if hi and hi != lo else "")
    if name == "ttl":
        for key, op in (("--ttl-eq", "=="), ("--ttl-gt", ">"), ("--ttl-lt", "<")):
            if key in o:
                return f" TTL match TTL {'!=' if key == '--ttl-eq' and n(key) else op} {v(key)}"
    if name == "pkttype":
        return f" PKTTYPE {'!' if n('--pkt-type') else ''}= {v('--pkt-type')}"
    if name == "mac":
        return f" MAC {'! ' if n('--mac-source') else ''}{v('--mac-source').lower()}"
    return " " + " ".join(("! " if neg else "") + " ".join([key, *vals]) for neg, key, vals in opts) if opts else ""


def target_words(name: str, opts: list[tuple[bool, str, list[str]]]) -> str:
    """A target's print function output, from its iptables-save options."""
    o = {opt: vals for _, opt, vals in opts}
    v = lambda key: o[key][0] if o.get(key) else ""  # noqa: E731
    if name == "LOG":
        flags = sum(bit for key, bit in (("--log-tcp-sequence", 1), ("--log-tcp-options", 2),
                                         ("--log-ip-options", 4), ("--log-uid", 8), ("--log-macdecode", 0x20))
                    if key in o)
        level = v("--log-level") or "4"
        level = str(LOG_LEVELS.get(level, level))
        out = f" LOG flags {flags} level {level}"
        if "--log-prefix" in o:
            out += f' prefix "{" ".join(o["--log-prefix"]).strip(chr(34))}"'
        return out
    if name == "REJECT":
        return f" reject-with {v('--reject-with') or 'icmp-port-unreachable'}"
    if name in ("DNAT", "SNAT"):
        key = "--to-destination" if name == "DNAT" else "--to-source"
        out = f" to:{v(key)}" if key in o else ""
        return out + (" random" if "--random" in o else "") + (" persistent" if "--persistent" in o else "")
    if name == "NETMAP":
        return f" to:{v('--to')}"
    if name == "MASQUERADE":
        return (f" masq ports: {v('--to-ports')}" if "--to-ports" in o else "") + (" random" if "--random" in o else "")
    if name == "REDIRECT":
        return f" redir ports {v('--to-ports')}" if "--to-ports" in o else ""
    if name in ("MARK", "CONNMARK"):
        for key in ("--set-xmark", "--set-mark", "--and-mark", "--or-mark", "--xor-mark"):
            if key in o:
                val, _, m = v(key).partition("/")
                mark, mask = int(val, 0), int(m, 0) if m else 0xFFFFFFFF
                if key == "--and-mark":
                    mark, mask = 0, ~mark & 0xFFFFFFFF
                elif key == "--or-mark":
                    mask = mark
                elif key == "--xor-mark":
                    mask = 0
                elif key == "--set-mark" and m:
                    mask = mask | mark           # --set-mark V/M is xset V/(M|V)
                # mark_tg_print: the xset form said in the simplest words
                if mark == 0:
                    return f" {name} and 0x{~mask & 0xFFFFFFFF:x}"
                if mark == mask:
                    return f" {name} or 0x{mark:x}"
                if mask == 0:
                    return f" {name} xor 0x{mark:x}"
                if mask == 0xFFFFFFFF:
                    return f" {name} set 0x{mark:x}"
                return f" {name} xset 0x{mark:x}/0x{mask:x}"
        if "--save-mark" in o:
            return " CONNMARK save"
        if "--restore-mark" in o:
            return " CONNMARK restore"
    if name == "CHECKSUM":
        return " CHECKSUM fill"
    if name == "CT" and "--helper" in o:
        return f" CT helper {v('--helper')}"
    if name == "CT" and "--zone" in o:
        return f" CT zone {v('--zone')}"
    if name == "TCPMSS":
        return " TCPMSS clamp to PMTU" if "--clamp-mss-to-pmtu" in o else f" TCPMSS set {v('--set-mss')}"
    if name == "CT" and "--notrack" in o:
        return " NOTRACK"
    if name == "NFLOG":      # nflog_print: prefix, group, size, threshold
        out = f' nflog-prefix "{" ".join(o["--nflog-prefix"]).strip(chr(34))}"' if "--nflog-prefix" in o else ""
        for key in ("--nflog-group", "--nflog-size", "--nflog-range", "--nflog-threshold"):
            if key in o and v(key) not in ("", "0"):
                out += f" {'nflog-size' if key == '--nflog-range' else key.lstrip('-')} {v(key)}"
        return out
    if name == "TTL":
        for key, word in (("--ttl-set", "set to"), ("--ttl-inc", "increment by"), ("--ttl-dec", "decrement by")):
            if key in o:
                return f" TTL {word} {v(key)}"
    return " " + " ".join(" ".join([key, *vals]) for _, key, vals in opts) if opts else ""


def _address(value: str | None, neg: bool) -> str:
    if value is None:
        text = "0.0.0.0/0"
    else:
        addr, _, plen = value.partition("/")
        bits = int(plen) if plen.isdigit() else 32
        mask = (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
        text = ntoa(aton(addr) & mask) + ("" if bits == 32 else f"/{bits}")     # the rule keeps the masked address
    return ("!" if neg else " ") + f"{text:<19} "


_LONG_COLUMNS = {"--protocol": "p", "--source": "s", "--destination": "d", "--in-interface": "i",
                 "--out-interface": "o"}


def _split(text: str) -> tuple[dict[str, tuple[bool, str]], str, list[str]]:
    """A rule's iptables-save text as its column options (letter -> (negated, value)), its fragment
    flag and the rest (match modules and the target, '!' kept)."""
    from pathtrace.net.netfilter.iptables_restore import tokenize
    toks = tokenize(text)[2:]
    cols: dict[str, tuple[bool, str]] = {}
    rest: list[str] = []
    frag = "--"
    i, neg = 0, False
    while i < len(toks):
        t = toks[i]
        if t == "!":
            neg = True
            i += 1
            continue
        if t in COLUMN_OPTS and i + 1 < len(toks):
            cols[t[1] if len(t) == 2 else _LONG_COLUMNS[t]] = (neg, toks[i + 1])
            i += 2
        elif t in ("-f", "--fragment"):
            frag = "!f" if neg else "-f"
            i += 1
        else:
            rest += ["!", t] if neg else [t]
            i += 1
        neg = False
    return cols, frag, rest


def rule_line(rule: Any, counters: bool = True) -> str:
    """One rule as iptables -L -v -n prints it."""
    cols, frag, rest = _split(rule.text)
    tokens = [t for t in rest if t]
    proto = cols.get("p", (False, "all"))
    pnum = PROTO_NUMBERS.get(proto[1].lower(), proto[1])
    target, goto, extra = "", False, ""
    for kind, name, opts in _segments(tokens):
        if kind == "m":
            extra += match_words(name, opts, proto[1])
        elif name == "NOTRACK":          # iptables turns -j NOTRACK into CT --notrack
            target, extra = "CT", extra + " NOTRACK"
        else:
            target, goto = name, kind == "g"
            extra += target_words(name, opts) if kind == "j" else ""
    iface = lambda key: (("!" if cols[key][0] else "") + cols[key][1]) if key in cols else "*"  # noqa: E731
    line = (f"{human(rule.pkts)} {human(rule.bytes)} " if counters else "") + f"{target:<9} "
    line += ("!" if proto[0] else " ") + f"{pnum!s:<4} {frag}  {iface('i'):<6} {iface('o'):<6} "
    line += _address(cols.get("s", (False, None))[1], cols.get("s", (False, None))[0])
    line += _address(cols.get("d", (False, None))[1], cols.get("d", (False, None))[0])
    return line + ("[goto] " if goto else "") + extra


def chain_header(table: Any, chain: Any, counters: bool = True) -> list[str]:
    from pathtrace.net.netfilter.x_tables import VERDICT_NAMES
    if chain.builtin:
        head = f"Chain {chain.name} (policy {VERDICT_NAMES[chain.policy]}"
        head += f" {human(chain.pkts).strip()} packets, {human(chain.bytes).strip()} bytes)" if counters else ")"
    else:
        refs = sum(1 for c in table.chains.values() for r in c.rules if r.target.name == chain.name)
        head = f"Chain {chain.name} ({refs} references)"
    cols = (" pkts bytes " if counters else "") + "target     prot opt in     out     source               destination         "
    return [head, cols]


def format_table(table: Any, counters: bool = True) -> str:
    """`iptables -t TABLE -L -v -n` for one table."""
    out: list[str] = []
    for chain in table.chains.values():
        out += chain_header(table, chain, counters)
        out += [rule_line(r, counters) for r in chain.rules]
        out.append("")
    return "\n".join(out[:-1]) + "\n" if out else ""


def rule_meaning(text: str) -> tuple:
    """What a rule says, independent of how its options were ordered (iptables-save may reorder them,
    people write them in any order): its columns, its match modules with their options as sets, and
    its target.  Two rules with the same meaning match the same packets and do the same thing."""
    found, frag, rest = _split(text)
    cols: list[tuple] = [("f", frag)]
    for key, (neg, value) in found.items():
        if key in "sd":
            addr, _, plen = value.partition("/")
            bits = int(plen) if plen.isdigit() else 32
            value = f"{ntoa(aton(addr) & ((0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF))}/{bits}"
        cols.append((key, neg, value.lower() if key == "p" else value))
    matches, target = [], None
    for kind, name, opts in _segments(rest):
        key = (name, tuple(sorted((n, o, tuple(v)) for n, o, v in opts)))
        if kind == "m":
            matches.append(key)
        else:
            target = (kind, *key)
    return tuple(sorted(cols)), tuple(sorted(matches)), target
