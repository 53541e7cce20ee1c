"""The one decoding layer for every file and string the user hands the tool.

Host files, iptables files, expectation files and packet spellings come in as bytes or
argv strings that may be binary, UTF-16, invalid UTF-8, hold NUL bytes or control
characters, nest a thousand levels deep or expand a billion aliases.  Each of those is
turned here into a `FILE:LINE: what` error (exit 2) before any parser sees the text,
so parsers never meet UnicodeDecodeError, RecursionError or MemoryError.

YAML is composed here from PyYAML's event stream by an iterative composer (no recursion
however deep the file), which also refuses duplicate keys, unsafe tags, and alias
expansion beyond MAX_YAML_NODES (a billion-laughs file fails at once).  JSON (nft -j
rulesets) gets its nesting bounded before json.loads; numbers are read as strtoul reads
them (parse_int), never with int() alone.
"""
from __future__ import annotations

import re
from typing import Type

import yaml

from pathtrace.errors import PathtraceError

MAX_YAML_DEPTH = 64           # host and expectation files nest 5-6 levels; the constructor recurses per level
MAX_YAML_NODES = 1_000_000    # nodes after alias expansion: far above any real file, far below a MemoryError
MAX_NUMBER_DIGITS = 64        # longer "numbers" are not numbers any kernel interface takes
_SAFE_TAG_PREFIX = "tag:yaml.org,2002:"
# what the YAML 1.1 reader refuses (yaml/reader.py NON_PRINTABLE), found here so the error names the line
_YAML_NON_PRINTABLE = re.compile("[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")
_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
         (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))
_ASCII_INT = re.compile(r"[+-]?(0[xX][0-9a-fA-F]+|0[oO]?[0-7]+|0[bB][01]+|[0-9]+)")


def line_of(text: str | bytes, offset: int) -> int:
    """1-based line number of position `offset` in text."""
    return text.count("\n" if isinstance(text, str) else b"\n", 0, offset) + 1


def decode(data: bytes, path: str, error: Type[PathtraceError] = PathtraceError, first_line: int = 1) -> str:
    """UTF-8 text of `data`, or error(path:line) naming the encoding problem (UTF-16, NUL, invalid byte)."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise error(f"file is {name} (byte order mark {bom.hex()}); pathtrace reads UTF-8 text", path, first_line)
    data = data.removeprefix(b"\xef\xbb\xbf")
    nul = data.find(b"\0")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if 0 <= nul < exc.start:
            raise error("NUL byte: a binary file, not text", path, line_of(data, nul) + first_line - 1) from None
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error(f"invalid UTF-8 (byte 0x{data[exc.start]:02x} at column {col}); pathtrace reads UTF-8 text",
                    path, line_of(data, exc.start) + first_line - 1) from None
    if nul >= 0:
        raise error("NUL byte: a binary file, not text", path, line_of(data, nul) + first_line - 1)
    return text


def read_text(path: str, error: Type[PathtraceError] = PathtraceError, what: str = "file") -> str:
    """The decoded text of `path`; unreadable files and bad encodings are `error`s naming the file."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except (OSError, ValueError) as exc:       # ValueError: a NUL in the name
        raise error(f"cannot read {what}: {getattr(exc, 'strerror', None) or exc}", repr(path) if "\0" in path
                    else path) from None
    return decode(data, path, error)


def check_arg(text: str, what: str, error: Type[PathtraceError] = PathtraceError) -> str:
    """A command-line string: argv bytes that were not UTF-8 arrive as lone surrogates; NUL cannot be
    passed by exec but can be by a YAML escape.  Both are refused by name."""
    prefix = f"{what}: " if what else ""
    if "\0" in text:
        raise error(f"{prefix}NUL character in {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{prefix}invalid UTF-8 in {text.encode('utf-8', 'surrogateescape')!r}") from None
    return text


def shorten(text: str, limit: int = 60) -> str:
    """repr(text) for a one-line message, cut in the middle when longer than `limit` characters."""
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit // 2]) + f"...({len(text) - limit} more)..." + repr(text[-limit // 2:])


def parse_int(text: str, base: int = 0) -> int:
    """An integer as the kernel's and iproute2's strtoul-based parsers read it: ASCII digits only
    (Python's int() also takes '٣' and '1_000'), at most MAX_NUMBER_DIGITS of them; ValueError else."""
    t = text.strip()
    if len(t) > MAX_NUMBER_DIGITS:
        raise ValueError(f"number too long ({len(t)} characters)")
    if base == 0:
        if not _ASCII_INT.fullmatch(t):
            raise ValueError(f"not a number: {text!r}")
        body = t.lstrip("+-")
        if len(body) > 1 and body[0] == "0" and body[1] in "0123456789":
            return int(t[: len(t) - len(body)] + "0o" + body[1:], 0)   # C's leading-zero octal
        return int(t, 0)
    if not t.isascii() or "_" in t:
        raise ValueError(f"not a number: {text!r}")
    return int(t, base)


# ---- JSON ---------------------------------------------------------------------------------

_JSON_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def load_json(text: str, path: str, error: Type[PathtraceError] = PathtraceError, what: str = "JSON") -> object:
    """json.loads with the nesting bounded first (the C decoder recurses: 100,000 '[' raise
    RecursionError); a syntax error names its line."""
    import json
    depth = 0
    for m in _JSON_STRUCTURE.finditer(text):
        c = m.group()[0]
        if c in "[{":
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise error(f"{what} nested deeper than {MAX_YAML_DEPTH} levels", path, line_of(text, m.start()))
        elif c in "]}":
            depth -= 1
    def bounded_int(digits: str) -> int:      # int() refuses 4,300 digits with a ValueError of its own
        if len(digits) > MAX_NUMBER_DIGITS:
            raise _LongNumber(digits)
        return int(digits)
    try:
        return json.loads(text, parse_int=bounded_int)
    except json.JSONDecodeError as exc:
        raise error(f"{what}: {exc.msg} (column {exc.colno})", path, exc.lineno) from None
    except _LongNumber as exc:
        digits = exc.args[0]
        raise error(f"{what}: number of {len(digits)} digits", path, line_of(text, text.find(digits))) from None


class _LongNumber(Exception):
    """A JSON integer longer than MAX_NUMBER_DIGITS (its digits)."""


# ---- YAML ---------------------------------------------------------------------------------

def _yaml_error(exc: yaml.YAMLError, path: str, error: Type[PathtraceError]) -> PathtraceError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return error(f"{getattr(error, 'yaml_syntax', 'YAML syntax error')}: {problem}", path, line)


def check_yaml_chars(text: str, path: str, error: Type[PathtraceError]) -> None:
    """Control characters YAML refuses, with their line (PyYAML's reader gives only a byte position)."""
    m = _YAML_NON_PRINTABLE.search(text)
    if m:
        raise error(f"control character U+{ord(m.group()):04X} (YAML allows tab, newline and printable "
                    f"characters only)", path, line_of(text, m.start()))


class _Frame:
    """An open sequence or mapping while composing: its node, anchor, size so far and keys seen."""

    __slots__ = ("node", "anchor", "start", "key", "keys", "height")

    def __init__(self, node: yaml.Node, anchor: str | None, start: int):
        self.node, self.anchor, self.start = node, anchor, start
        self.key: yaml.Node | None = None
        self.keys: dict[str, int] = {}
        self.height = 1         # levels of collections from this one down, aliases expanded


def compose_yaml(text: str, path: str, error: Type[PathtraceError] = PathtraceError) -> yaml.Node | None:
    """The node graph of one YAML document (None when empty), like yaml.compose with SafeLoader, but
    iterative and bounded: depth <= MAX_YAML_DEPTH, nodes after alias expansion <= MAX_YAML_NODES,
    no duplicate mapping keys, no python/ or local tags.  Every refusal is error(path:line)."""
    check_yaml_chars(text, path, error)
    try:
        return _compose(text, path, error, getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        try:
            return _compose(text, path, error, yaml.SafeLoader)     # the pure parser's message and line
        except yaml.YAMLError as exc:
            raise _yaml_error(exc, path, error) from None


def _compose(text: str, path: str, error: Type[PathtraceError], loader: type) -> yaml.Node | None:
    resolver = yaml.resolver.Resolver()
    stack: list[_Frame] = []
    anchors: dict[str, yaml.Node] = {}
    sizes: dict[str, int] = {}
    heights: dict[str, int] = {}        # an anchored node's height: an alias adds it where it is used
    root: yaml.Node | None = None
    documents = 0
    expanded = 0

    def fail(mark: yaml.Mark | None, message: str) -> PathtraceError:
        return error(message, path, mark.line + 1 if mark is not None else None)

    def tag_of(ev: yaml.Event, kind: type, value: str | None) -> str:
        tag = ev.tag
        if tag is None or tag == "!":
            return resolver.resolve(kind, value, ev.implicit)
        if not tag.startswith(_SAFE_TAG_PREFIX) or tag.startswith(_SAFE_TAG_PREFIX + "python/"):
            shown = "!!" + tag[len(_SAFE_TAG_PREFIX):] if tag.startswith(_SAFE_TAG_PREFIX) else tag
            raise fail(ev.start_mark, f"YAML tag {shown} is not allowed (plain values only)")
        return tag

    def add(node: yaml.Node, height: int) -> None:
        nonlocal root
        if not stack:
            root = node
            return
        top = stack[-1]
        top.height = max(top.height, height + 1)
        if isinstance(top.node, yaml.SequenceNode):
            top.node.value.append(node)
        elif top.key is None:
            top.key = node
        else:
            key = top.key
            if isinstance(key, yaml.ScalarNode):
                first = top.keys.get(key.value)
                if first is not None:
                    raise fail(key.start_mark, f"duplicate key {key.value!r} (first at line {first})")
                top.keys[key.value] = key.start_mark.line + 1
            top.node.value.append((key, node))
            top.key = None

    def grow(n: int, mark: yaml.Mark) -> None:
        nonlocal expanded
        expanded += n
        if expanded > MAX_YAML_NODES:
            raise fail(mark, f"the YAML expands to more than {MAX_YAML_NODES:,} values (aliases of aliases?)")

    def anchor(name: str | None, node: yaml.Node) -> None:
        if name is not None:
            anchors[name] = node
            sizes.pop(name, None)
            heights.pop(name, None)

    for ev in yaml.parse(text, Loader=loader):
        if isinstance(ev, yaml.ScalarEvent):
            tag = tag_of(ev, yaml.ScalarNode, ev.value)
            if tag == _SAFE_TAG_PREFIX + "int" and len(ev.value) > MAX_NUMBER_DIGITS:   # int() would refuse it
                raise fail(ev.start_mark, f"number of {len(ev.value)} characters (at most {MAX_NUMBER_DIGITS})")
            node = yaml.ScalarNode(tag, ev.value, ev.start_mark, ev.end_mark, style=ev.style)
            anchor(ev.anchor, node)
            if ev.anchor is not None:
                sizes[ev.anchor] = 1
            grow(1, ev.start_mark)
            add(node, 0)
        elif isinstance(ev, yaml.AliasEvent):
            if ev.anchor not in anchors:
                raise fail(ev.start_mark, f"YAML alias *{ev.anchor} names no anchor before it")
            if ev.anchor not in sizes:
                raise fail(ev.start_mark, f"YAML alias *{ev.anchor} is inside the node it names (a loop)")
            grow(sizes[ev.anchor], ev.start_mark)
            height = heights.get(ev.anchor, 0)
            if len(stack) + height > MAX_YAML_DEPTH:      # aliases of nested aliases nest deeper still
                raise fail(ev.start_mark, f"YAML nested deeper than {MAX_YAML_DEPTH} levels (through alias "
                                          f"*{ev.anchor})")
            add(anchors[ev.anchor], height)
        elif isinstance(ev, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if len(stack) >= MAX_YAML_DEPTH:
                raise fail(ev.start_mark, f"YAML nested deeper than {MAX_YAML_DEPTH} levels")
            seq = isinstance(ev, yaml.SequenceStartEvent)
            kind = yaml.SequenceNode if seq else yaml.MappingNode
            node = kind(tag_of(ev, kind, None), [], ev.start_mark, None, flow_style=ev.flow_style)
            anchor(ev.anchor, node)
            stack.append(_Frame(node, ev.anchor, expanded))
            grow(1, ev.start_mark)
        elif isinstance(ev, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            frame = stack.pop()
            frame.node.end_mark = ev.end_mark
            if frame.anchor is not None:
                sizes[frame.anchor] = expanded - frame.start
                heights[frame.anchor] = frame.height
            add(frame.node, frame.height)
        elif isinstance(ev, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise fail(ev.start_mark, "more than one YAML document (a second '---')")
            anchors.clear()
            sizes.clear()
            heights.clear()
    return root


def node_value(node: yaml.Node) -> object:
    """Plain Python data of a composed node (SafeLoader's constructor; depth and aliases are bounded
    by compose_yaml, and shared nodes stay shared objects, never copies)."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()
