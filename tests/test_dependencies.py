"""Dependencies point one way: converters and benchmarks sit on top of the
core package and reach into it only through public names and
``h5feed._shared``; the core package never imports them."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
ON_TOP = sorted([*ROOT.glob("converters/*.py"), *ROOT.glob("benchmarks/*.py")])


def _h5feed_imports(path: pathlib.Path) -> list[str]:
    """Every h5feed module ``path`` imports, at any depth of its code."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "h5feed"]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return [name for name in found if name == "h5feed" or name.startswith("h5feed.")]


@pytest.mark.parametrize("path", ON_TOP, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_converters_and_benchmarks_use_public_names_or_the_shared_module(path):
    private = [
        name for name in _h5feed_imports(path)
        if any(part.startswith("_") for part in name.split(".")[1:]) and name != "h5feed._shared"
    ]
    assert private == [], f"{path.name} imports h5feed internals {private}; add them to h5feed/_shared.py"


def test_the_core_package_does_not_import_the_converters():
    modules = sorted(
        f"h5feed.{p.stem}" for p in (ROOT / "h5feed").glob("*.py")
        if p.stem not in ("__init__", "__main__", "cli", "demo", "sequence", "tf_data", "torch", "_keras")
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('h5feed.convert', 'h5feed.benchmarks'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT / "tests")
    assert out.stdout.strip() == "[]"
