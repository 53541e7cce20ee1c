"""Every iptables dump of the shared corpus loads, or fails naming the feature and the line."""
from __future__ import annotations

import glob
import os
import re

import pytest

from pathtrace.errors import HostFileError
from pathtrace.net.netfilter import Netfilter

CORPUS = "/work/shared/corpus/rulesets"
FILES = sorted(glob.glob(f"{CORPUS}/*.iptables-save") + glob.glob(f"{CORPUS}/*.iptables-S")
               + glob.glob(f"{CORPUS}/*.v4"))


@pytest.mark.skipif(not os.path.isdir(CORPUS), reason="corpus folder absent")
@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(f) for f in FILES])
def test_loads_or_precise_error(path: str) -> None:
    text = open(path, encoding="utf-8", errors="replace").read()
    try:
        nf = Netfilter.from_text(text, path=path)
    except HostFileError as e:
        assert e.file == path and e.line is not None and e.line >= 1
        assert re.search(r"[a-zA-Z]{4,}", e.message)
        return
    assert nf.tables
    assert list(nf.rule_counters())


@pytest.mark.skipif(not os.path.isdir(CORPUS), reason="corpus folder absent")
def test_corpus_counts(capsys) -> None:
    loaded, refused = 0, []
    for path in FILES:
        try:
            Netfilter.from_text(open(path, encoding="utf-8", errors="replace").read(), path=path)
            loaded += 1
        except HostFileError as e:
            refused.append(f"{os.path.basename(path)}:{e.line}: {e.message}")
    with capsys.disabled():
        print(f"\nnetfilter corpus: {loaded}/{len(FILES)} loaded, {len(refused)} refused")
        for r in refused:
            print("  refused", r)
    assert loaded >= 20
