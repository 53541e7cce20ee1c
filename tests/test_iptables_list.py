"""render/iptables_list.py against iptables -L -v -n itself: each ruleset (the shipped hosts and the
shared corpus's iptables-save files) is restored into a throw-away namespace and listed by iptables,
and pathtrace's listing of the same rules must be the same text, line for line (live: root, iptables,
PATHTRACE_LIVE=1 or CI=true).  Offline: the counter format."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pathtrace.render.iptables_list import human

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus" / "rulesets"


def test_counter_format_is_xtables_print_num() -> None:
    assert human(0) == "    0" and human(99999) == "99999" and human(100000) == " 100K"
    assert human(1_499_499) == "1499K" and human(9_999_500) == "  10M"


def _rulesets() -> list[Path]:
    out = [ROOT / "rulesets" / n for n in ("web-server.yaml", "home-router.yaml", "two-uplink.yaml", "real-router.yaml")]
    if CORPUS.is_dir():
        out += sorted(CORPUS.glob("*.iptables-save"))
    return out


def _text(path: Path) -> str:
    if path.suffix == ".yaml":
        from pathtrace.host.loader import load_host
        return load_host(str(path)).iptables_text or ""
    return path.read_text()


def test_listing_is_iptables_L_v_n() -> None:
    if os.environ.get("PATHTRACE_LIVE") != "1" and os.environ.get("CI") != "true":
        pytest.skip("live checks run with PATHTRACE_LIVE=1 or CI=true")
    if os.geteuid() != 0 or not shutil.which("iptables-restore"):
        pytest.skip("needs root and iptables")
    from pathtrace.errors import PathtraceError
    from pathtrace.net.netfilter.core import Netfilter
    from pathtrace.render.iptables_list import format_table
    ns = f"ptipl{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    compared, differences = 0, []
    try:
        for path in _rulesets():
            text = _text(path)
            for table in ("filter", "nat", "mangle", "raw", "security"):
                subprocess.run(["ip", "netns", "exec", ns, "iptables", "-t", table, "-F"], capture_output=True)
                subprocess.run(["ip", "netns", "exec", ns, "iptables", "-t", table, "-X"], capture_output=True)
            if subprocess.run(["ip", "netns", "exec", ns, "iptables-restore"], input=text, text=True,
                              capture_output=True).returncode:
                continue            # e.g. an ipset the namespace does not have
            try:
                nf = Netfilter.from_text(text)
            except PathtraceError:
                continue            # refused by name (physdev, ...)
            for name, table in nf.tables.items():
                real = subprocess.run(["ip", "netns", "exec", ns, "iptables", "-t", name, "-L", "-v", "-n"],
                                      capture_output=True, text=True).stdout
                mine = format_table(table)
                for a, b in zip(real.splitlines(), mine.splitlines()):
                    compared += 1
                    if a.rstrip() != b.rstrip():
                        differences.append(f"{path.name} {name}:\n  iptables:  {a.rstrip()}\n  pathtrace: {b.rstrip()}")
                if len(real.splitlines()) != len(mine.splitlines()):
                    differences.append(f"{path.name} {name}: {len(real.splitlines())} lines vs {len(mine.splitlines())}")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert compared > 50
    assert not differences, "\n".join(differences[:10])
