"""Progress: a tqdm bar on a terminal or in a notebook, a plain line now and
then anywhere else (cluster logs)."""

from __future__ import annotations

import io
import sys
import types

import pytest

from h5feed import _progress
from h5feed._progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_it_prints_plain_lines_every_interval_and_a_final_one():
    log = io.StringIO()
    with Progress(10, "converting", stream=log, interval=0.0) as bar:
        bar.update(4)
        bar.update(6)
    lines = log.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in log.getvalue()
    assert lines[0].startswith("converting [#########---------------] 4/10 rows  40%")
    assert lines[-1].startswith("converting [########################] 10/10 rows 100%")
    assert all("rows/s" in line for line in lines)


def test_off_a_terminal_short_work_prints_its_final_line_only_once():
    log = io.StringIO()
    bar = Progress(None, "merging", unit="files", stream=log)  # interval 5 s
    bar.update(3)
    bar.close()
    bar.close()
    assert log.getvalue().count("\n") == 1
    assert log.getvalue().startswith("merging 3 files") and "elapsed" in log.getvalue()


def test_a_failure_off_a_terminal_prints_no_final_line():
    log = io.StringIO()
    with pytest.raises(RuntimeError):
        with Progress(10, "converting", stream=log) as bar:
            bar.update(2)
            raise RuntimeError("boom")
    bar.close()
    assert log.getvalue() == ""


def test_disabled_prints_nothing():
    log = Terminal()
    with Progress(5, "verifying", stream=log, enabled=False) as bar:
        bar.update(5)
    assert log.getvalue() == "" and bar.done == 5


def test_on_a_terminal_it_is_a_tqdm_bar():
    from tqdm.auto import tqdm

    term = Terminal()
    with Progress(5, "verifying", stream=term) as bar:
        assert isinstance(bar._bar, tqdm)
        bar.update(2)
        bar.update(3)
    out = term.getvalue()
    assert "\rverifying" in out and "5/5" in out and "rows/s" in out and out.endswith("\n")
    assert bar.done == 5


def test_in_a_notebook_stderr_gets_a_tqdm_bar(monkeypatch):
    from tqdm.auto import tqdm

    shell = types.SimpleNamespace(config={"IPKernelApp": {}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert _progress._in_notebook()
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a kernel's stderr is no terminal
    with Progress(2, "converting") as bar:
        assert isinstance(bar._bar, tqdm)
        bar.update(2)
    assert "2/2" in sys.stderr.getvalue()


def test_outside_a_notebook_ipython_alone_is_no_notebook(monkeypatch):
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert not _progress._in_notebook()
    monkeypatch.delitem(sys.modules, "IPython")
    assert not _progress._in_notebook()
