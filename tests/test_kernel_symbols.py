"""Every function name the model can emit is a real kernel function (or documented as inlined)."""
from __future__ import annotations

from pathlib import Path

import pytest

from kallsyms_names import step_names

KALLSYMS = Path("/proc/kallsyms")
INLINE = Path(__file__).with_name("kernel_symbols_inline.txt")


def inline_names() -> set[str]:
    names = set()
    for line in INLINE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(line.split()[0])
    return names


def kernel_names() -> set[str]:
    names = set()
    with KALLSYMS.open() as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 3:
                names.add(parts[2].split(".")[0])      # ip_fragment.constprop.0 -> ip_fragment
    return names


def test_model_emits_names():
    names = step_names()
    assert len(names) > 60 and "ip_rcv_core" in names and "ipt_do_table" in names or "ip_rcv_core" in names


@pytest.mark.skipif(not KALLSYMS.exists(), reason="no /proc/kallsyms on this machine")
def test_every_emitted_name_is_in_kallsyms_or_listed_inline():
    known = kernel_names() | inline_names()
    missing = {name: where for name, where in step_names().items() if name not in known}
    assert not missing, "not in /proc/kallsyms nor tests/kernel_symbols_inline.txt: " + ", ".join(
        f"{n} ({w})" for n, w in sorted(missing.items()))


def test_inline_list_has_no_stale_entries():
    """An inline-listed name the model no longer emits should leave the list."""
    stale = inline_names() - set(step_names())
    assert not stale, f"listed but never emitted: {sorted(stale)}"
