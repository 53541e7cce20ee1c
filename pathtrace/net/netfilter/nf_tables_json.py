"""The JSON of `nft -j list ruleset` (libnftables-json(5)) as the text nft would list for it.

The JSON and the text describe the same objects; turning the one into the other lets a
single parser (nf_tables_parse) check and compile both.  Each generated line remembers the
JSON object it came from, so an error names `nftables[N]` (the array index of the table,
chain, set or rule) instead of a line of generated text.
"""
from __future__ import annotations

import json
import re
from typing import Any

from pathtrace.errors import HostFileError

_WORD = re.compile(r"^[A-Za-z0-9_./:*\-]+$")
_PLAIN_STMTS = {"accept", "drop", "continue", "return", "notrack"}


class JsonRulesetError(HostFileError):
    """`FILE: nftables[N] (what): message`."""


def _v(x: Any) -> str:
    """A value or expression as nft lists it."""
    if isinstance(x, bool):
        return "exists" if x else "missing"
    if isinstance(x, (int, float)):
        return str(int(x))
    if isinstance(x, str):
        return x if x.startswith("@") or _WORD.match(x) else json.dumps(x)
    if isinstance(x, list):
        return ",".join(_v(i) for i in x)
    if not isinstance(x, dict) or len(x) != 1:
        raise ValueError(f"unexpected expression {json.dumps(x)[:60]}")
    (k, a), = x.items()
    if k == "payload":
        if "protocol" not in a:
            raise ValueError("not modelled: raw payload expressions")
        return f"{a['protocol']} {a['field']}"
    if k == "meta":
        return f"meta {a['key']}"
    if k == "ct":
        return "ct " + (f"{a['dir']} " if a.get("dir") else "") + a["key"]
    if k == "fib":
        flags = a.get("flags") or []
        flags = flags if isinstance(flags, list) else [flags]
        return "fib " + " . ".join(flags) + f" {a['result']}"
    if k == "concat":
        return " . ".join(_v(i) for i in a)
    if k == "set":
        items = a if isinstance(a, list) else [a]
        return "{ " + ", ".join(_elem(i) for i in items) + " }"
    if k == "prefix":
        return f"{_v(a['addr'])}/{a['len']}"
    if k == "range":
        return f"{_v(a[0])}-{_v(a[1])}"
    if k == "elem":
        return _elem(x)
    if k in ("&", "|", "^"):
        left, right = a
        if k == "&":
            return f"{_v(left)} & {_v(right)}"
        return f"({_v(left)} {k} {_v(right)})".replace("((", "(").replace("))", ")")
    if k == "map":
        return f"{_v(a['key'])} map {_v(a['data'])}"
    if k in ("accept", "drop", "continue", "return"):
        return k
    if k in ("jump", "goto"):
        return f"{k} {a['target']}"
    raise ValueError(f"not modelled: {k} expressions")


def _elem(i: Any) -> str:
    if isinstance(i, list) and len(i) == 2:                   # map element [key, data]
        return f"{_elem(i[0])} : {_v(i[1])}"
    if isinstance(i, dict) and "elem" in i:
        e = i["elem"]
        out = _v(e["val"])
        if e.get("timeout"):
            out += f" timeout {int(e['timeout'])}s"
        return out
    return _v(i)


def _stmt(s: dict) -> str:
    (k, a), = s.items()
    if k == "match":
        op = a.get("op", "==")
        op = "" if op in ("in", "implicit") else f"{op} "
        return f"{_v(a['left'])} {op}{_v(a['right'])}"
    if k in _PLAIN_STMTS:
        return k
    if k in ("jump", "goto"):
        return f"{k} {a['target']}"
    if k == "counter":
        return "counter"
    if k == "comment":
        return ""
    if k == "reject":
        a = a or {}
        t = a.get("type")
        if t == "tcp reset":
            return "reject with tcp reset"
        if t in ("icmp", "icmpx"):
            return f"reject with {t} type {_v(a.get('expr', 'port-unreachable'))}"
        return "reject"
    if k in ("snat", "dnat"):
        a = a or {}
        to = _v(a["addr"]) if "addr" in a else ""
        if "port" in a:
            to += f":{_v(a['port'])}"
        fam = f"{a['family']} " if a.get("family") else ""
        return f"{k} {fam}to {to}" + _flags(a)
    if k in ("masquerade", "redirect"):
        a = a or {}
        return k + (f" to :{_v(a['port'])}" if "port" in a else "") + _flags(a)
    if k == "log":
        a = a or {}
        out = "log"
        if "prefix" in a:
            out += f" prefix {json.dumps(a['prefix'])}"
        if "level" in a:
            out += f" level {a['level']}"
        if "group" in a:
            out += f" group {a['group']}"
        return out
    if k == "limit":
        unit = a.get("rate_unit", "packets")
        rate = f"{a['rate']}/{a.get('per', 'second')}" if unit == "packets" else f"{a['rate']} {unit}/{a.get('per', 'second')}"
        out = "limit rate " + ("over " if a.get("inv") else "") + rate
        if "burst" in a:
            out += f" burst {a['burst']} {a.get('burst_unit', 'packets')}"
        return out
    if k == "mangle":
        key = a["key"]
        if "meta" in key:
            return f"meta {key['meta']['key']} set {_v(a['value'])}"
        if "ct" in key:
            return f"ct {key['ct']['key']} set {_v(a['value'])}"
        raise ValueError("not modelled: payload mangling")
    if k == "vmap":
        return f"{_v(a['key'])} vmap {_v(a['data'])}"
    raise ValueError(f"not modelled: {k} statements")


def _flags(a: dict) -> str:
    f = a.get("flags")
    if not f:
        return ""
    return " " + ",".join(f if isinstance(f, list) else [f])


def _type(t: Any) -> str:
    return " . ".join(t) if isinstance(t, list) else str(t)


def json_to_text(text: str, path: str) -> str:
    """The ruleset text for the JSON; JsonRulesetError for what cannot be expressed."""
    from pathtrace.inputs import load_json      # nesting bounded (json.loads recurses), the line named
    doc = load_json(text, path, HostFileError, "nftables JSON")
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise HostFileError("nftables JSON: no \"nftables\" array (expected the output of nft -j list ruleset)",
                            path, None)
    tables: dict[tuple[str, str], dict[str, list[str]]] = {}
    for n, item in enumerate(items):
        if not isinstance(item, dict) or len(item) != 1:
            raise JsonRulesetError(f"nftables[{n}]: expected one object", path, None)
        (kind, o), = item.items()
        if kind == "metainfo":
            continue
        try:
            key = (o["family"], o["table"] if kind != "table" else o["name"])
            t = tables.setdefault(key, {"sets": [], "chains": {}, "handles": {}})
            if kind == "table":
                continue
            if kind in ("set", "map"):
                lines = [f"\t{kind} {o['name']} {{", f"\t\ttype {_type(o['type'])}" +
                         (f" : {_type(o['map'])}" if kind == "map" else "")]
                if o.get("flags"):
                    fl = o["flags"]
                    lines.append("\t\tflags " + ",".join(fl if isinstance(fl, list) else [fl]))
                if o.get("timeout"):
                    lines.append(f"\t\ttimeout {int(o['timeout'])}s")
                if o.get("elem"):
                    lines.append("\t\telements = { " + ", ".join(_elem(e) for e in o["elem"]) + " }")
                lines.append("\t}")
                t["sets"].extend(lines)
            elif kind == "chain":
                ch = t["chains"].setdefault(o["name"], [])
                if isinstance(o.get("handle"), int):
                    t["handles"][o["name"]] = o["handle"]
                if "hook" in o:
                    ch.insert(0, f"\t\ttype {o['type']} hook {o['hook']} priority {o['prio']}; "
                                 f"policy {o.get('policy', 'accept')};")
            elif kind == "rule":
                stmts = [_stmt(s) for s in o["expr"]]
                handle = f" # handle {o['handle']}" if isinstance(o.get("handle"), int) else ""
                t["chains"].setdefault(o["chain"], []).append("\t\t" + " ".join(s for s in stmts if s) + handle)
            else:
                raise ValueError(f"not modelled: {kind} objects")
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            msg = str(e) if isinstance(e, ValueError) else f"missing or malformed {e}"
            raise JsonRulesetError(f"nftables[{n}] ({kind}): {msg}", path, None) from None
    out: list[str] = []
    for (family, name), t in tables.items():
        out.append(f"table {family} {name} {{")
        out.extend(t["sets"])
        for cname, lines in t["chains"].items():
            handle = t["handles"].get(cname)
            out.append(f"\tchain {cname} {{" + (f" # handle {handle}" if handle else ""))
            out.extend(lines)
            out.append("\t}")
        out.append("}")
    return "\n".join(out) + "\n"
