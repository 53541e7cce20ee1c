"""Load an expectations file (the firewall's unit tests) with a line for every error.

    cases:
      - name: ssh is open
        packet: tcp 198.51.100.7:40000 203.0.113.10:22 --in eth0
        expect: {verdict: LOCAL_DELIVER, rule: filter/INPUT#5}
      - name: a conversation
        steps:
          - packet: {proto: tcp, src: "10.0.0.5:1234", dst: "198.51.100.7:80", in: lan}
            expect: {verdict: FORWARD, egress: wan, nat: {src: 203.0.113.2}}
      - name: from a capture
        pcap: captures/web.pcap          # relative to this file
        steps:
          - index: 3
            expect: {verdict: DROP, reason: NETFILTER_DROP}

Works on yaml.compose nodes, like the host loader, so `FILE:LINE: message`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from pathtrace.commands.flowspec import FlowSpec, FlowSpecError, from_mapping, parse_words
from pathtrace.errors import PathtraceError
from pathtrace.inputs import compose_yaml, node_value, read_text

VERDICTS = {"LOCAL_DELIVER", "FORWARD", "DROP", "CONSUMED", "QUEUED", "STOLEN", "NOT_MODELLED"}
EXPECT_KEYS = {"verdict", "reason", "egress", "table", "chain", "rule", "ct", "nat", "sends"}
CASE_KEYS = {"name", "packet", "pcap", "index", "in", "expect", "steps"}
STEP_KEYS = {"packet", "index", "expect", "name"}
_RULE_REF = re.compile(r"^(?P<table>[a-z]+)/(?P<chain>[^#\s]+)(?:#(?P<num>\d+)| (?P<policy>policy))?$")


class ExpectFileError(PathtraceError):
    """The expectations file is invalid."""

    yaml_syntax = "invalid YAML"


@dataclass
class Expect:
    values: dict[str, Any]
    line: int


@dataclass
class CheckStep:
    line: int
    expect: Expect
    packet: FlowSpec | None = None
    index: int | None = None
    name: str = ""


@dataclass
class Case:
    name: str
    line: int
    steps: list[CheckStep] = field(default_factory=list)
    pcap: str | None = None
    ingress: str | None = None


class _Reader:
    def __init__(self, path: str):
        self.path = path
        self.base = os.path.dirname(os.path.abspath(path))

    def fail(self, node: yaml.Node | None, msg: str) -> ExpectFileError:
        return ExpectFileError(msg, self.path, node.start_mark.line + 1 if node is not None else None)

    def mapping(self, node: yaml.Node, what: str, keys: set[str]) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        out: dict[str, yaml.Node] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode) or k.value not in keys:
                raise self.fail(k, f"unknown key {getattr(k, 'value', '?')!r} in {what} "
                                   f"(known: {', '.join(sorted(keys))})")
            if k.value in out:
                raise self.fail(k, f"duplicate key {k.value!r} in {what}")
            out[k.value] = v
        return out

    def scalar(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{what} must be a single value")
        return node.value

    def value(self, node: yaml.Node) -> Any:
        return node_value(node)

    # ---- structure --------------------------------------------------------------------------
    def load(self) -> list[Case]:
        root = compose_yaml(read_text(self.path, ExpectFileError, "expectations file"), self.path, ExpectFileError)
        if root is None:
            raise ExpectFileError("empty expectations file (needs cases:)", self.path, 1)
        if isinstance(root, yaml.MappingNode):
            root = self.mapping(root, "the file", {"cases"}).get("cases")
            if root is None:
                raise ExpectFileError("no cases: list", self.path, 1)
        if not isinstance(root, yaml.SequenceNode) or not root.value:
            raise self.fail(root, "cases must be a non-empty list")
        cases = [self.case(n, i) for i, n in enumerate(root.value, 1)]
        seen: dict[str, int] = {}
        for c in cases:
            if c.name in seen:
                raise ExpectFileError(f"duplicate case name {c.name!r} (first at line {seen[c.name]})",
                                      self.path, c.line)
            seen[c.name] = c.line
        return cases

    def case(self, node: yaml.Node, n: int) -> Case:
        m = self.mapping(node, "a case", CASE_KEYS)
        line = node.start_mark.line + 1
        name = self.scalar(m["name"], "name") if "name" in m else f"case {n}"
        case = Case(name, line)
        if "pcap" in m:
            case.pcap = os.path.join(self.base, self.scalar(m["pcap"], "pcap"))
        if "in" in m:
            case.ingress = self.scalar(m["in"], "in")
        if "steps" in m:
            extra = sorted(set(m) & {"packet", "index", "expect"})
            if extra:
                raise self.fail(m[extra[0]], f"a case with steps: puts {extra[0]} in each step")
            if not isinstance(m["steps"], yaml.SequenceNode) or not m["steps"].value:
                raise self.fail(m["steps"], "steps must be a non-empty list")
            case.steps = [self.step(s, self.mapping(s, "a step", STEP_KEYS), case) for s in m["steps"].value]
        else:
            case.steps = [self.step(node, m, case)]
        if case.pcap is not None:
            idx = [s.index for s in case.steps]
            if idx != sorted(set(idx)):
                raise self.fail(node, "capture steps must have increasing indices")
        return case

    def step(self, node: yaml.Node, m: dict[str, yaml.Node], case: Case) -> CheckStep:
        if "expect" not in m:
            raise self.fail(node, "missing expect:")
        step = CheckStep(node.start_mark.line + 1, self.expect(m["expect"]))
        if "name" in m:
            step.name = self.scalar(m["name"], "name")
        if case.pcap is not None:
            if "packet" in m or "index" not in m:
                raise self.fail(node, "a capture case names packets by index: (not packet:)")
            text = self.scalar(m["index"], "index")
            if not text.isdigit():
                raise self.fail(m["index"], f"index must be a packet number from 0, not {text!r}")
            step.index = int(text)
            return step
        if "index" in m:
            raise self.fail(m["index"], "index: needs pcap: in the case")
        if "packet" not in m:
            raise self.fail(node, "missing packet: (or pcap: and index:)")
        step.packet = self.packet(m["packet"])
        return step

    def packet(self, node: yaml.Node) -> FlowSpec:
        try:
            if isinstance(node, yaml.MappingNode):
                return from_mapping(self.value(node))
            return parse_words(self.scalar(node, "packet"))
        except FlowSpecError as exc:
            raise self.fail(node, f"packet: {exc}") from None

    def expect(self, node: yaml.Node) -> Expect:
        m = self.mapping(node, "expect", EXPECT_KEYS)
        values: dict[str, Any] = {}
        for key, v in m.items():
            values[key] = self.expect_value(key, v)
        if not values:
            raise self.fail(node, "expect: is empty")
        return Expect(values, node.start_mark.line + 1)

    def expect_value(self, key: str, node: yaml.Node) -> Any:
        if key == "nat":
            m = self.mapping(node, "nat", {"src", "dst"})
            return {k: self.endpoint(v) for k, v in m.items()}
        if key == "sends":
            items = node.value if isinstance(node, yaml.SequenceNode) else [node]
            return [self.scalar(i, "sends") for i in items]
        value = self.value(node)
        if key == "verdict":
            if str(value).upper() not in VERDICTS:
                raise self.fail(node, f"verdict {value!r} is not one of {', '.join(sorted(VERDICTS))}")
            return str(value).upper()
        if key == "reason":
            text = str(value).upper().removeprefix("SKB_DROP_REASON_")
            if not re.fullmatch(r"[A-Z0-9_]+", text):
                raise self.fail(node, f"reason {value!r} is not a drop reason name (e.g. NETFILTER_DROP)")
            return text
        if key == "rule":
            return self.rule(node, value)
        if key == "egress":
            return None if value in (None, "none") else str(value)
        return None if value is None else str(value)

    def rule(self, node: yaml.Node, value: Any) -> dict[str, Any]:
        """5, policy, 'filter/INPUT#5', 'filter/INPUT policy' or a substring of the rule text."""
        if isinstance(value, int) and not isinstance(value, bool):
            return {"num": value}
        text = str(value)
        if text == "policy":
            return {"num": 0}
        m = _RULE_REF.match(text)
        if m:
            num = 0 if m["policy"] else (int(m["num"]) if m["num"] else None)
            return {"table": m["table"], "chain": m["chain"], "num": num}
        if not text.strip():
            raise self.fail(node, "rule: must be a number, policy, TABLE/CHAIN#N or rule text")
        return {"text": text}

    def endpoint(self, node: yaml.Node) -> str:
        text = self.scalar(node, "nat address")
        addr, _, port = text.partition(":")
        if not re.fullmatch(r"\d+\.\d+\.\d+\.\d+", addr) or (port and not port.isdigit()):
            raise self.fail(node, f"nat address {text!r} must be ADDR or ADDR:PORT")
        return text


def load_expectations(path: str) -> list[Case]:
    return _Reader(path).load()
