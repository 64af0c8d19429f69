"""MkDocs hook: lay the package out as it is installed, for mkdocstrings.

setup.cfg installs ``converters/`` as ``h5feed.convert`` and ``benchmarks/``
as ``h5feed.benchmarks`` (``package_dir``). griffe, which mkdocstrings uses to
read the docstrings, finds modules by their folder names and knows nothing of
``package_dir``. So at the start of every build this hook copies the sources
into ``build/docs-api/h5feed/`` as they are installed: ``h5feed/``, with
``converters/`` as ``convert`` and ``benchmarks/`` as ``benchmarks``. (Copies,
not symbolic links: griffe follows a link to the real folder and would look
for ``convert`` there.)
``mkdocs.yml`` points mkdocstrings' ``paths`` there. griffe reads the source
statically: building the docs imports neither h5feed nor TensorFlow or torch.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

STAGE = Path("build", "docs-api")
# Installed name inside the package -> folder in the repository (setup.cfg).
EXTRA = {"convert": "converters", "benchmarks": "benchmarks"}


_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def stage(root: Path) -> Path:
    """Build ``root/build/docs-api/h5feed`` and return ``root/build/docs-api``."""
    top = root / STAGE
    pkg = top / "h5feed"
    if top.is_symlink() or top.is_file():
        top.unlink()
    elif top.exists():
        shutil.rmtree(top)
    shutil.copytree(root / "h5feed", pkg, ignore=_IGNORE)
    for name, folder in EXTRA.items():
        shutil.copytree(root / folder, pkg / name, ignore=_IGNORE)
    return top


# mkdocstrings resolves its `paths` in its own on_config, before this hook's
# on_config runs, and silently falls back to the repository root (whose
# h5feed/ has no convert/) when a path does not exist yet. So the folder is
# made at start-up, before any on_config, and made again for every build, so
# that `mkdocs serve` picks up edits to the code.
ROOT = Path(__file__).resolve().parents[2]  # docs/_hooks/ -> the repository


def on_startup(**kwargs: Any) -> None:
    stage(ROOT)


def on_config(config: Any, **kwargs: Any) -> Any:
    stage(Path(os.path.dirname(os.path.abspath(config.config_file_path))))
    return config
