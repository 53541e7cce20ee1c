"""The README's example outputs are what the tool prints (tests/readme_examples.py)."""
from __future__ import annotations

import pytest

from readme_examples import README, examples, expected

EXAMPLES = examples(README.read_text())


def test_readme_has_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("example", EXAMPLES, ids=[m["args"] + " | " + m["sel"] for m, _, _ in EXAMPLES])
def test_readme_example_is_the_tools_output(example):
    m, _, body = example
    assert body == expected(m, body), f"README example differs; run: python tests/readme_examples.py --write"
