"""The documentation keeps up with the code.

Every public name has a place in the API reference (``docs/api/*.md``, one
``::: identifier`` block each, which mkdocstrings renders from the
docstring), every ``docs/....md`` that the code points at exists, and the
README keeps the two commands a new user runs. ``mkdocs build --strict`` (in
``.ci/run``) checks the rest: links, anchors, and that each identifier
resolves.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import h5feed
import h5feed.errors

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API = DOCS / "api"

# Public names outside h5feed.__all__ and h5feed.errors.__all__ that have API pages.
# h5feed.torch and h5feed.convert are read from their source: importing them
# needs torch, and converters/ is importable only once installed.
MODULE_SOURCES = {
    "h5feed.torch": ROOT / "h5feed" / "torch.py",
    "h5feed.convert": ROOT / "converters" / "__init__.py",
}
OTHER_PUBLIC = [
    "h5feed.merge.merge_files",
    "h5feed.inspection.describe",
    "h5feed.inspection.verify",
    "h5feed.inspection.VerifyReport",
    "h5feed.splits.SplitReport",
    "h5feed.writer.RowBlock",
    "h5feed.writer.run_isolated",
]


def _documented() -> set[str]:
    """Every identifier of a ``::: identifier`` block in the API pages."""
    found = set()
    for page in API.glob("*.md"):
        for line in page.read_text(encoding="utf-8").splitlines():
            match = re.match(r"^:::\s+([\w.]+)\s*$", line)
            if match:
                found.add(match.group(1))
    return found


def _all_of(source: Path) -> list[str]:
    """The module's ``__all__``, read without importing it."""
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"{source}: no __all__")


def _public_names() -> list[str]:
    names = [f"h5feed.{name}" for name in h5feed.__all__]
    names += [f"h5feed.errors.{name}" for name in h5feed.errors.__all__]
    for module, source in MODULE_SOURCES.items():
        names += [f"{module}.{name}" for name in _all_of(source)]
    return sorted(set(names + OTHER_PUBLIC))


def _covered(name: str, documented: set[str]) -> bool:
    if name in documented:
        return True
    module, short = name.rsplit(".", 1)
    if module == "h5feed":  # re-exported: may be documented where it lives
        return any(d.startswith("h5feed.") and d.rsplit(".", 1)[-1] == short for d in documented)
    if module == "h5feed.errors":  # ... or an error class at the top level
        return f"h5feed.{short}" in documented
    return False


@pytest.mark.parametrize("name", _public_names())
def test_public_name_has_an_api_page(name):
    assert _covered(name, _documented()), (
        f"{name} is public but no page of docs/api/ documents it: add a line "
        f"'::: {name}' to the page of docs/api/ where it belongs"
    )


def test_every_api_block_names_a_public_name():
    public = set(_public_names())
    extra = {d for d in _documented() if d not in public}
    # Modules documented as a whole (their docstring) are allowed.
    extra -= {"h5feed.errors", "h5feed.inspection", "h5feed.convert", "h5feed.torch"}
    assert not extra, f"docs/api/ documents names that are not public: {sorted(extra)}"


def _source_files():
    for folder in ("h5feed", "converters", "benchmarks"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_docs_pages_named_in_the_code_exist():
    missing = []
    for path in _source_files():
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"docs/[\w./-]+?\.md", text):
            if not (ROOT / match.group(0)).is_file():
                line = text.count("\n", 0, match.start()) + 1
                missing.append(f"{path.relative_to(ROOT)}:{line}: {match.group(0)}")
    assert not missing, "the code points at docs pages that do not exist:\n" + "\n".join(missing)


def test_every_docs_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(
        str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if not p.relative_to(DOCS).parts[0].startswith("_")
    )
    assert [p for p in pages if p not in nav] == []


def test_readme_keeps_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install . && h5feed demo" in readme
    assert 'pip install ".[test]" && pytest -n auto' in readme
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install ".[test]" && pytest -n auto ||' in ci, ".ci/run runs exactly the README's test command"
    assert len(readme.splitlines()) <= 200, "the README is the door: keep it to 200 lines, the rest goes in docs/"


def test_readme_links_point_at_files():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    broken = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert targets and not broken, f"README.md links to missing files: {broken}"
