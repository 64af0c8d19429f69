"""In CI, a test skipped because torch, torchdata or jax is missing fails.

Outside CI nothing changes: a plain ``pytest`` without PyTorch or JAX skips
the tests that need them. With ``CI=true`` (or ``1``, ``yes``), a skip whose
reason names a framework that is not installed becomes a failure that says
what to install: a test's skip (``pytest.skip``, ``skipif``,
``pytest.importorskip`` inside it) and a whole module's skip at collection
(``pytest.importorskip`` at module level), which is then a collection error.
A skip counts when its reason names the framework as a word ("torch",
"PyTorch", "torchdata", "jax"); ``pytest.importorskip`` without a reason
names the module itself, so name the framework in any reason you write.

``.ci/run`` runs the README's ``pytest`` before it installs the frameworks,
with ``H5FEED_CI_DEFER`` set to a file: such a skip then stays a skip and
its node ID is appended to that file; ``.ci/run`` installs the frameworks
and runs exactly those node IDs with the variable unset, where a skip for a
missing framework fails. So every such test either runs in CI or fails it.

Loaded by ``tests/conftest.py``; ``tests/test_framework_skips.py`` runs it
on small test files in a separate pytest.
"""

from __future__ import annotations

import importlib.util
import os
import re

import pytest

# framework -> (a word in a skip reason that means it, what to install)
FRAMEWORKS = {
    "torch": (re.compile(r"\b(py)?torch\b", re.IGNORECASE), "a CPU build of torch"),
    "torchdata": (re.compile(r"\btorchdata\b", re.IGNORECASE), "torchdata"),
    "jax": (re.compile(r"\bjax\b", re.IGNORECASE), "jax[cpu]"),
}
DEFER_VARIABLE = "H5FEED_CI_DEFER"
_deferred_key = pytest.StashKey[list]()


def in_ci() -> bool:
    """Whether ``CI`` says this run is CI (``true``, ``1`` or ``yes``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):  # a broken install is not a missing one
        return False


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        reason = str(longrepr[2])
        return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason
    return str(longrepr)


def missing_frameworks_named(reason: str) -> list[str]:
    """The frameworks that ``reason`` names and that are not installed."""
    return [name for name, (word, _) in FRAMEWORKS.items() if word.search(reason) and _missing(name)]


def _failure_message(names: list[str], reason: str) -> str:
    them = "it" if len(names) == 1 else "them"
    return (
        f"{' and '.join(names)} {'is' if len(names) == 1 else 'are'} not installed, and in CI (CI=true) "
        f"a test that needs {them} must run, not skip. Install {', '.join(FRAMEWORKS[n][1] for n in names)} "
        f"(.ci/run installs the versions it pins), or run .ci/run, which runs these tests after "
        f"installing them. The skip's reason: {reason}"
    )


def _judge(config: pytest.Config, report) -> None:
    """Turn a skip for a missing framework into a failure, or defer it."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    names = missing_frameworks_named(reason)
    if not names:
        return
    if os.environ.get(DEFER_VARIABLE):
        config.stash[_deferred_key].append(report.nodeid)
        if isinstance(report.longrepr, tuple):
            path, line, _ = report.longrepr
            report.longrepr = (path, line, f"Skipped: deferred until .ci/run installs {' and '.join(names)}: {reason}")
    elif in_ci():
        report.outcome = "failed"
        report.longrepr = _failure_message(names, reason)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_deferred_key] = []


# tryfirst: the outermost wrapper, so this sees the report after pytest's own
# xfail handling, which would otherwise pass off the failure as an xfail.
@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call):  # noqa: ARG001
    outcome = yield
    _judge(item.config, outcome.get_result())


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    _judge(collector.config, outcome.get_result())


def pytest_sessionfinish(session: pytest.Session) -> None:
    deferred = session.config.stash.get(_deferred_key, [])
    path = os.environ.get(DEFER_VARIABLE)
    if path and deferred:
        with open(path, "a", encoding="utf-8") as f:
            f.writelines(f"{nodeid}\n" for nodeid in deferred)


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:  # noqa: ARG001
    deferred = config.stash.get(_deferred_key, [])
    path = os.environ.get(DEFER_VARIABLE)
    if not deferred and path and os.path.exists(path):
        # Under pytest-xdist the workers judge the reports and write the file.
        with open(path, encoding="utf-8") as f:
            deferred = sorted(set(filter(None, f.read().splitlines())))  # node IDs may hold spaces
    if deferred:
        terminalreporter.write_line(
            f"{len(deferred)} test(s) or module(s) need a framework that is not installed; "
            f"written to {os.environ.get(DEFER_VARIABLE)} for .ci/run to run once it is installed"
        )
