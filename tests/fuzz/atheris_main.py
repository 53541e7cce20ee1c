"""Coverage-guided fuzzing of one target with atheris (optional: `pip install atheris`; the
Hypothesis tests and mutate.py need nothing more than the test extra).

    python tests/fuzz/atheris_main.py host -atheris_runs=20000 tests/data/fuzz/host/
    python tests/fuzz/atheris_main.py capture -max_total_time=600

The first argument names the target (tests/fuzz/targets.py); the rest are libFuzzer's options
and corpus directories.  A crash (targets.Crash, or any exception escaping a target) is written by
libFuzzer as crash-<sha1>; move it to tests/data/fuzz/<target>/ to keep it as a regression input.
"""
from __future__ import annotations

import sys
from pathlib import Path

try:
    import atheris
except ImportError:                          # optional
    sys.exit("atheris is not installed (pip install atheris); use tests/fuzz/mutate.py instead")

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["pathtrace"]):
    import pathtrace.capture  # noqa: F401
    import pathtrace.commands.check  # noqa: F401
    import pathtrace.host.loader  # noqa: F401
    import pathtrace.inputs  # noqa: F401
    import pathtrace.net.netfilter.iptables_restore  # noqa: F401

from targets import TARGETS  # noqa: E402


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer options] [corpus dirs]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
