"""The answering core and the registry are pure: none of their modules imports an I/O or clock module.

Each file under resolver/core and resolver/registry is parsed with `ast`; every `import X`, `import X.Y`,
`from X import Y` and `from X.Y import Z` (at any depth, including inside functions and `if` blocks) is
checked against the forbidden list. A call to `__import__` or `importlib.import_module` is refused too,
so the rule cannot be side-stepped.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "resolver"
PURE_PACKAGES = ("core", "registry")
FORBIDDEN = frozenset({"socket", "asyncio", "os", "time", "pyroute2", "subprocess", "threading"})
MODULES = sorted(path for package in PURE_PACKAGES for path in (ROOT / package).rglob("*.py"))


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in `tree`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def dynamic_imports(tree: ast.AST) -> list[int]:
    """Lines that call `__import__(...)` or `importlib.import_module(...)`."""
    lines: list[int] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Name) and func.id == "__import__") or (
                isinstance(func, ast.Attribute) and func.attr == "import_module"
            ):
                lines.append(node.lineno)
    return lines


def test_there_are_modules_to_check() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in MODULES}
    assert {
        "core/answer.py",
        "core/local.py",
        "core/wire.py",
        "registry/registry.py",
        "registry/view.py",
    } <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_module_is_pure(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = [f"line {line}: {module}" for line, module in imported_modules(tree) if module in FORBIDDEN]
    assert not bad, f"{path.name} imports I/O or clock modules: {bad}"
    assert not dynamic_imports(tree), f"{path.name} imports dynamically"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import os", ["os"]),
        ("import os.path", ["os"]),
        ("from os import path", ["os"]),
        ("from os.path import join", ["os"]),
        ("import json, socket as s", ["json", "socket"]),
        ("def f():\n    import time\n", ["time"]),
        ("if True:\n    from asyncio import sleep\n", ["asyncio"]),
        ("try:\n    import pyroute2\nexcept ImportError:\n    pass\n", ["pyroute2"]),
        ("from . import os", []),
        ("from .time import x", []),
    ],
)
def test_import_finder(source: str, expected: list[str]) -> None:
    assert [module for _, module in imported_modules(ast.parse(source))] == expected


def test_dynamic_import_finder() -> None:
    tree = ast.parse("x = __import__('os')\nimport importlib\ny = importlib.import_module('time')\n")
    assert dynamic_imports(tree) == [1, 3]
