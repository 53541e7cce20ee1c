"""Build hosts and frames in tests and replay them without touching pcap files."""
from __future__ import annotations

import textwrap
from pathlib import Path

from pathtrace.capture.frame import Frame
from pathtrace.capture.linktypes import frame_from_ethernet
from pathtrace.host.loader import load_host
from pathtrace.packet import build
from pathtrace.replay import Replayer, ReplayOptions, create_namespace
from pathtrace.trace import PacketRecord

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def make_host(tmp_path: Path, text: str, name: str = "host.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return load_host(str(path))


def eth_frame(data: bytes, ts: float, index: int = 0) -> Frame:
    """A Frame as the capture reader would produce for an Ethernet record."""
    return frame_from_ethernet(data, index, ts)


class Rig:
    """A host plus a replayer; `send` pushes frames in and returns their records."""

    def __init__(self, tmp_path: Path, text: str, **options):
        self.host = make_host(tmp_path, text)
        self.net = create_namespace(self.host)
        self.replayer = Replayer(self.net, ReplayOptions(**options))
        self.t = 1000.0
        self.index = 0

    def mac(self, dev: str) -> bytes:
        return self.net.devices[dev].mac

    def send(self, dev: str, ip_packet: bytes, src_mac: str = "02:aa:aa:aa:aa:01", dst_mac: bytes | None = None,
             dt: float = 0.001, vlan=None, ethertype: int = 0x0800) -> PacketRecord:
        frame = build.ether(dst_mac if dst_mac is not None else self.mac(dev), src_mac, ethertype, ip_packet, vlan=vlan)
        return self.send_frame(frame, dt)

    def send_frame(self, frame_bytes: bytes, dt: float = 0.001) -> PacketRecord:
        self.t += dt
        rec = self.replayer.process(eth_frame(frame_bytes, self.t, self.index))
        self.index += 1
        return rec


def fns(record: PacketRecord, depth: int | None = None) -> list[str]:
    return [s.fn for s in record.path if depth is None or s.depth == depth]


def step(record: PacketRecord, fn: str) -> dict:
    for s in record.path:
        if s.fn == fn:
            return s.detail
    raise AssertionError(f"{fn} not in path: {fns(record)}")


def live_skip_reason(*tools: str) -> str | None:
    """Why live kernel checks do not run here (None when they do): they need PATHTRACE_LIVE=1 or
    CI=true, root with network namespaces (pathtrace.verify.netns.check_available) and `tools`."""
    import os
    import shutil
    if os.environ.get("PATHTRACE_LIVE") != "1" and os.environ.get("CI") != "true":
        return "live kernel checks run with PATHTRACE_LIVE=1 or CI=true"
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return f"{missing[0]} is not installed"
    from pathtrace.verify.netns import Unavailable, check_available
    try:
        check_available()
    except Unavailable as exc:
        return str(exc)
    return None
