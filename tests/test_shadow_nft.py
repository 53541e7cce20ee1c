"""lint on nftables rulesets: an earlier terminal rule with no match, or with exactly the same match
clauses, shadows a later rule of its chain; stateful rules (limit, quota, set updates) never cover
and are never reported."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from pathtrace.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _host(tmp_path: Path, rules: str) -> str:
    text = (ROOT / "rulesets/web-server-nft.yaml").read_text()
    path = tmp_path / "h.yaml"
    path.write_text(text.replace('iifname "lo" accept', 'iifname "lo" accept\n' + rules))
    return str(path)


def test_duplicate_and_unconditional_rules_shadow(tmp_path: Path) -> None:
    host = _host(tmp_path, "        tcp dport 2222 accept\n        tcp dport 2222 accept\n"
                           "        tcp dport 2223 limit rate 1/second accept\n        tcp dport 2223 limit rate 1/second accept\n")
    res = CliRunner().invoke(main, ["lint", host])
    assert res.exit_code == 1
    assert res.output.count("can never match") == 1 and "shadowed by: tcp dport 2222 accept" in res.output
    assert "2223" not in res.output


def test_shipped_nft_hosts_are_clean() -> None:
    for name in ("web-server-nft.yaml", "home-router-nft.yaml"):
        res = CliRunner().invoke(main, ["lint", str(ROOT / "rulesets" / name)])
        assert res.exit_code == 0, res.output
