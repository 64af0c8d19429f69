"""griffe extension: make h5feed's docstrings read well as Markdown.

The docstrings are Google style, with Sphinx roles for names
(``:class:`~h5feed.errors.WorkerError```), which Markdown would show as
typed. This extension rewrites, in the docstrings mkdocstrings renders:

- a Sphinx role into a code span of the name (the last component with ``~``);
- a pointer to a design note, ``docs/design/<name>.md``, into a link to that
  page through its anchor ``design-<name>`` (mkdocs-autorefs). A pointer to
  a note that does not exist is then a broken reference, which fails
  ``mkdocs build --strict``.

Registered in ``mkdocs.yml`` (mkdocstrings' ``extensions``). Only the
rendered text changes; the source is left alone.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj|const):`(~?)([^`<]+?)(?:\s*<([^>`]+)>)?`")
_DESIGN = re.compile(r"``?docs/design/([a-z0-9-]+)\.md``?|(?<![\w/`\[])docs/design/([a-z0-9-]+)\.md")


def _role(match: re.Match[str]) -> str:
    tilde, text, target = match.groups()
    name = (target or text).strip()
    if target:  # :role:`text <target>`
        return f"`{text.strip()}`"
    return f"`{name.rsplit('.', 1)[-1] if tilde else name}`"


def _design(match: re.Match[str]) -> str:
    name = match.group(1) or match.group(2)
    return f"[`docs/design/{name}.md`][design-{name}]"


def rewrite(text: str) -> str:
    """The docstring ``text`` with roles and design-note pointers rewritten.

    Example:
        >>> rewrite("see :func:`~h5feed.convert.from_npy_dir` and ``docs/design/late-binding.md``.")
        'see `from_npy_dir` and [`docs/design/late-binding.md`][design-late-binding].'
    """
    return _DESIGN.sub(_design, _ROLE.sub(_role, text))


class Docstrings(griffe.Extension):
    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        doc = getattr(obj, "docstring", None)
        if doc is not None and doc.value:
            doc.value = rewrite(doc.value)
