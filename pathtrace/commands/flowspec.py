"""The packet spelling shared by `explain` and expectation files.

`tcp 198.51.100.7:40000 203.0.113.2:22 --in eth0 --flags S --state established`
`icmp 1.2.3.4 5.6.7.8 --type 8 --code 0`, `udp A:P B:Q`, `47 A B` (other protocols
by number).  One parser serves the command line (words plus click's options), a
string in YAML and a YAML mapping, so all three accept exactly the same packets.
"""
from __future__ import annotations

import shlex
import socket
from dataclasses import dataclass, replace
from typing import Any, Mapping

from pathtrace.inputs import check_arg, parse_int
from pathtrace.lib.inet import aton, ntoa
from pathtrace.packet import build

PROTO_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1}
PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}
STATES = ("new", "established")
# option name -> (field, converter); the spelling of the command line and of YAML mappings
OPTIONS: dict[str, str] = {"in": "ingress", "flags": "flags", "state": "state", "mark": "mark", "ttl": "ttl",
                           "len": "length", "type": "icmp_type", "code": "icmp_code", "df": "df", "tos": "tos",
                           "sport": "sport", "dport": "dport", "src": "src", "dst": "dst", "proto": "proto"}
# the range of each number: the header field it fills (skb->mark is 32 bits)
_INT_FIELDS = {"mark": (0, 0xFFFFFFFF), "ttl": (0, 255), "length": (20, 65535), "icmp_type": (0, 255),
               "icmp_code": (0, 255), "tos": (0, 255), "sport": (0, 65535), "dport": (0, 65535)}
_OPTION_OF = {field: name for name, field in OPTIONS.items()}


class FlowSpecError(ValueError):
    """The packet spelling is wrong; the message says which part."""


@dataclass(frozen=True, slots=True)
class FlowSpec:
    """One IPv4 packet to inject, as a user spells it."""

    proto: int
    src: int
    dst: int
    sport: int = 0
    dport: int = 0
    ingress: str | None = None
    flags: str | None = None           # TCP flags; default S, or A with --state established
    state: str = "new"
    mark: int = 0
    ttl: int = 64
    length: int | None = None          # IP total length (payload zero-padded)
    icmp_type: int = 8
    icmp_code: int = 0
    df: bool = False
    tos: int = 0

    @property
    def has_ports(self) -> bool:
        return self.proto in (6, 17)

    @property
    def tcp_flags(self) -> str:
        return self.flags or ("A" if self.state == "established" else "S")

    def describe(self) -> str:
        name = PROTO_NAMES.get(self.proto, str(self.proto))
        if self.has_ports:
            text = f"{name} {ntoa(self.src)}:{self.sport} -> {ntoa(self.dst)}:{self.dport}"
        else:
            text = f"{name} {ntoa(self.src)} -> {ntoa(self.dst)}"
        if self.proto == 6:
            text += f" [{self.tcp_flags}]"
        if self.proto == 1:
            text += f" type {self.icmp_type} code {self.icmp_code}"
        return text

    def reversed(self) -> "FlowSpec":
        return replace(self, src=self.dst, dst=self.src, sport=self.dport, dport=self.sport)


def parse_words(text: str | list[str]) -> FlowSpec:
    """A whole spelling as one string or a list of words (options included)."""
    if isinstance(text, str):
        check_arg(text, "", FlowSpecError)
        try:
            words = shlex.split(text)
        except ValueError as exc:          # shlex: "No closing quotation", "No escaped character"
            raise FlowSpecError(f"{str(exc)[0].lower()}{str(exc)[1:]} in {text!r}") from None
    else:
        words = [check_arg(w, "", FlowSpecError) for w in text]
    positional: list[str] = []
    options: dict[str, Any] = {}
    i = 0
    while i < len(words):
        w = words[i]
        if w.startswith("--"):
            name = w[2:]
            if "=" in name:
                name, value = name.split("=", 1)
            elif name == "df":
                value = True
            else:
                if i + 1 >= len(words):
                    raise FlowSpecError(f"{w} needs a value")
                i += 1
                value = words[i]
            options[name] = value
        else:
            positional.append(w)
        i += 1
    return from_parts(positional, options)


def from_mapping(data: Mapping[str, Any]) -> FlowSpec:
    """A YAML mapping: {proto: tcp, src: 'A:P', dst: 'B:Q', in: eth0, flags: S, ...}."""
    data = dict(data)
    missing = [k for k in ("proto", "src", "dst") if k not in data]
    if missing:
        raise FlowSpecError(f"packet needs {', '.join(missing)}")
    words = [str(data.pop("proto")), str(data.pop("src")), str(data.pop("dst"))]
    return from_parts(words, data)


def from_parts(words: list[str], options: Mapping[str, Any]) -> FlowSpec:
    """PROTO SRC[:PORT] DST[:PORT] plus options (None values are ignored)."""
    words = [check_arg(str(w), "", FlowSpecError) for w in words]
    if len(words) != 3:
        raise FlowSpecError(f"expected PROTO SRC DST, got {' '.join(words) or 'nothing'!r}")
    proto = parse_proto(words[0])
    src, sport = _endpoint(words[1], proto, "source")
    dst, dport = _endpoint(words[2], proto, "destination")
    fields: dict[str, Any] = {"proto": proto, "src": src, "dst": dst, "sport": sport, "dport": dport}
    for name, value in options.items():
        if value is None:
            continue
        field = OPTIONS.get(name)
        if field is None or field in ("src", "dst", "proto"):
            raise FlowSpecError(f"unknown packet option --{name}")
        if isinstance(value, str):
            check_arg(value, f"--{name}", FlowSpecError)
        fields[field] = _convert(field, value)
    spec = FlowSpec(**fields)
    _validate(spec)
    return spec


def parse_proto(text: str) -> int:
    t = str(text).lower()
    if t in PROTO_NUMBERS:
        return PROTO_NUMBERS[t]
    if t.isascii() and t.isdigit() and len(t) <= 3 and int(t) <= 255:
        return int(t)
    try:
        if not t.isascii() or "\0" in t:
            raise OSError
        return socket.getprotobyname(t)
    except OSError:
        raise FlowSpecError(f"unknown protocol {text!r} (tcp, udp, icmp or a number)") from None


def _endpoint(text: str, proto: int, what: str) -> tuple[int, int]:
    addr, sep, port = str(text).partition(":")
    try:
        value = aton(addr)
    except ValueError:
        raise FlowSpecError(f"bad {what} address {addr!r}") from None
    if proto in (6, 17):
        if not sep:
            if what == "source":
                return value, 40000
            raise FlowSpecError(f"{what} {text!r} needs a port (ADDR:PORT) for {PROTO_NAMES[proto]}")
        if not (port.isascii() and port.isdigit() and len(port) <= 5) or not 0 <= int(port) <= 65535:
            raise FlowSpecError(f"bad {what} port {port!r}")
        return value, int(port)
    if sep:
        raise FlowSpecError(f"{PROTO_NAMES.get(proto, proto)} has no ports: {text!r}")
    return value, 0


def _convert(field: str, value: Any) -> Any:
    if field in _INT_FIELDS:
        name = _OPTION_OF[field]
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise FlowSpecError(f"--{name} must be a number, not {value!r}")
        try:
            number = value if isinstance(value, int) else parse_int(check_arg(value, f"--{name}", FlowSpecError))
        except ValueError:
            raise FlowSpecError(f"--{name} must be a number, not {value!r}") from None
        lo, hi = _INT_FIELDS[field]
        if not lo <= number <= hi:
            raise FlowSpecError(f"--{name} {number} out of range {lo}-{hi}")
        return number
    if field == "df":
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    if field == "state":
        state = str(value).lower()
        if state not in STATES:
            raise FlowSpecError(f"state must be one of {', '.join(STATES)}, not {value!r}")
        return state
    if field == "flags":
        try:
            build.tcp_flag_bits(str(value))
        except ValueError as exc:
            raise FlowSpecError(str(exc)) from None
    return str(value)


def _validate(spec: FlowSpec) -> None:
    if spec.flags is not None and spec.proto != 6:
        raise FlowSpecError("--flags is only for tcp")
    for field, (lo, hi) in _INT_FIELDS.items():     # values given as ints by the caller, not _convert
        value = getattr(spec, field)
        if value is not None and not lo <= value <= hi:
            raise FlowSpecError(f"--{_OPTION_OF[field]} {value} out of range {lo}-{hi}")


def ip_packet(spec: FlowSpec, seq: int = 1000, ack: int = 0, flags: str | None = None,
              icmp_type: int | None = None, ident: int = 0x4242) -> bytes:
    """The IPv4 packet bytes of `spec` (checksums right, payload padded to --len)."""
    headers = 20 + {6: 20, 17: 8, 1: 8}.get(spec.proto, 0)
    pad = b"\0" * max(0, (spec.length or 0) - headers)
    if spec.length is not None and spec.length < headers:
        raise FlowSpecError(f"len {spec.length} is shorter than the headers ({headers} bytes)")
    ip: dict[str, Any] = {"ttl": spec.ttl, "df": spec.df, "tos": spec.tos}
    if spec.proto == 6:
        return build.tcp_packet(spec.src, spec.dst, spec.sport, spec.dport, flags or spec.tcp_flags, seq=seq,
                                ack=ack, payload=pad, **ip)
    if spec.proto == 17:
        return build.udp_packet(spec.src, spec.dst, spec.sport, spec.dport, payload=pad, **ip)
    if spec.proto == 1:
        return build.icmp_packet(spec.src, spec.dst, spec.icmp_type if icmp_type is None else icmp_type,
                                 spec.icmp_code, payload=pad, id=ident, seq=1, **ip)
    return build.ipv4(spec.src, spec.dst, spec.proto, pad, **ip)
