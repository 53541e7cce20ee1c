"""Collect every kernel function name the model can put in a path (used by test_kernel_symbols)."""
from __future__ import annotations

import ast
from pathlib import Path

from pathtrace.drivers.net import DRIVERS

PACKAGE = Path(__file__).resolve().parents[1] / "pathtrace"


def step_names() -> dict[str, str]:
    """name -> file:line of its first use, from every `X.step("name", ...)` call in the package."""
    names: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "step" \
                    and node.args:
                for value in _string_constants(node.args[0]):
                    names.setdefault(value, f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    for name, ops in DRIVERS.items():
        for fn in (*ops.rx, ops.xmit):
            names.setdefault(fn, f"pathtrace/drivers/net.py ({name})")
    return names


def _string_constants(node: ast.AST) -> list[str]:
    """Literal names, including both arms of `"a" if cond else "b"`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _string_constants(node.body) + _string_constants(node.orelse)
    return []
