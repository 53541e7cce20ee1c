"""README examples are the tool's own output: each fenced block after a marker

    <!-- example: ARGS | SELECTOR -->

is what `pathtrace ARGS` prints, cut by SELECTOR: `all`, `block N` (the text record that
starts with `#N `), `line N` (the Nth line, 0-based) or `tail N` (the last N lines).  A block whose first line starts
with `$ ` shows the command first.  `python tests/readme_examples.py --write` rewrites the
blocks from the tool; tests/test_readme.py fails while any block differs.
"""
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"^<!-- example: (?P<args>.+?) \| (?P<sel>all|block \d+|line \d+|tail \d+) -->\n```[a-z]*\n", re.M)


def run(args: str) -> str:
    import os
    from click.testing import CliRunner
    from pathtrace.cli import main
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        result = CliRunner().invoke(main, shlex.split(args), catch_exceptions=False)
    finally:
        os.chdir(cwd)
    return result.stdout            # what lands in a file or a pipe; notes on stderr are not shown


def select(output: str, selector: str) -> str:
    kind, _, n = selector.partition(" ")
    if kind == "all":
        return output
    if kind == "line":
        return output.splitlines(keepends=True)[int(n)]
    if kind == "tail":
        return "".join(output.splitlines(keepends=True)[-int(n):])
    start = re.search(rf"^#{n} ", output, re.M)
    if start is None:
        raise AssertionError(f"no record #{n} in the output")
    end = re.search(r"^#\d+ ", output[start.end():], re.M)
    block = output[start.start():start.end() + end.start()] if end else output[start.start():]
    return block.rstrip("\n") + "\n"


def examples(text: str) -> list[tuple[re.Match, int, str]]:
    """(marker, end of the block's body, body) for every example in text."""
    out = []
    for m in MARKER.finditer(text):
        end = text.index("```", m.end())
        out.append((m, end, text[m.end():end]))
    return out


def expected(m: re.Match, body: str) -> str:
    out = select(run(m["args"]), m["sel"])
    if body.startswith("$ "):
        out = body.splitlines(keepends=True)[0] + out
    return out


def main(argv: list[str]) -> int:
    text = README.read_text()
    new, last = [], 0
    for m, end, body in examples(text):
        new.append(text[last:m.end()] + expected(m, body))
        last = end
    new.append(text[last:])
    if "--write" in argv:
        README.write_text("".join(new))
        return 0
    return 0 if "".join(new) == text else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
