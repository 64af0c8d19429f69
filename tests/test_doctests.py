"""The examples in the docstrings run, so they stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "h5feed._args", "h5feed._ids", "h5feed._plan", "h5feed._progress", "h5feed._record", "h5feed._select",
    "h5feed.writer", "h5feed.convert._common",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
