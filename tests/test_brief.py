"""--format brief (one line per packet), tcpdump's -t time stamps and --color (render/brief.py)."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from pathtrace.cli import main

ROOT = Path(__file__).resolve().parent.parent
HOST, CAP = str(ROOT / "rulesets/web-server.yaml"), str(ROOT / "samples/web-server.pcap")


def _run(*args: str) -> list[str]:
    res = CliRunner().invoke(main, ["replay", HOST, CAP, *args])
    assert res.exit_code == 0, res.output
    return [ln for ln in res.stdout.splitlines() if ln.strip()]


def test_one_line_per_record_with_the_jsonl_facts() -> None:
    brief = _run("--format", "brief")
    records = [json.loads(ln) for ln in _run("--format", "jsonl")]
    assert len(brief) == len(records)
    for line, rec in zip(brief, records):
        assert line.startswith(f"#{rec['index']} {rec['time']:.6f} ")
        verdict = rec["verdict"] + (f" ({rec['reason']})" if rec.get("reason") else "")
        assert f"=> {verdict}" in line
        if rec.get("egress"):
            assert line.endswith(f"-> {rec['egress']}")
        dropping = [r for r in rec["rules"] if r["verdict"] in ("DROP", "REJECT")]
        if rec["verdict"] == "DROP" and dropping:
            r = dropping[-1]
            where = f"{r['table']}/{r['chain']}"
            assert (f"{where} policy" if r["rule"] == 0 else f"{where} #{r['rule']}") in line


def test_tcpdump_time_stamp_styles() -> None:
    epoch = [ln.split()[1] for ln in _run("--format", "brief")]
    assert [ln.split()[1] for ln in _run("--format", "brief", "-tt")] == epoch
    none = _run("--format", "brief", "-t")
    assert none[2].split()[1] == "eth0"
    delta = [float(ln.split()[1]) for ln in _run("--format", "brief", "-ttt")]
    assert delta[0] == 0.0 and abs(delta[2] - (float(epoch[2]) - float(epoch[1]))) < 1e-6
    dated = _run("--format", "brief", "-tttt")[0].split()
    assert dated[1] == "2024-03-14" and dated[2].startswith("09:26:53")
    first = [float(ln.split()[1]) for ln in _run("--format", "brief", "-ttttt")]
    assert abs(first[-1] - (float(epoch[-1]) - float(epoch[0]))) < 1e-6
    text = _run("--format", "text", "-ttt")
    assert text[0].startswith("#0 0.000000 eth0")


def test_colour_only_when_asked_or_on_a_terminal() -> None:
    assert not any("\033[" in ln for ln in _run("--format", "brief"))       # not a terminal: auto is off
    coloured = _run("--format", "brief", "--color", "always")
    assert any("\033[32mLOCAL_DELIVER\033[0m" in ln for ln in coloured)
    assert any("\033[" in ln for ln in _run("--format", "text", "--color", "always"))


def test_version_says_whether_the_accelerator_is_in_use(monkeypatch) -> None:
    out = CliRunner().invoke(main, ["--version"]).output
    assert out.startswith("pathtrace ") and "C accelerator: " in out
    try:
        from pathtrace import _fastpath  # noqa: F401
        built = True
    except ImportError:
        built = False
    assert ("built, in use" in out) == built
    monkeypatch.setenv("PATHTRACE_PURE_PYTHON", "1")
    off = CliRunner().invoke(main, ["--version"]).output
    assert ("PATHTRACE_PURE_PYTHON=1" in off) == built


def test_progress_line_has_share_and_time_left(tmp_path, capsys) -> None:
    from pathtrace.cli import _Progress
    from pathtrace.capture import read_frames
    src = read_frames(CAP)
    it = iter(src)
    next(it)
    p = _Progress(True, src, Path(CAP).stat().st_size)
    p.enabled = True                       # stderr is not a terminal under pytest
    p.last -= 1.0
    p.tick(1024)
    err = capsys.readouterr().err
    assert "1024 packets" in err and "%" in err and "left" in err
    assert 0 < p.fraction() <= 1
