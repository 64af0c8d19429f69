"""The CI rule of framework_skips.py, run on small test files in a separate
pytest where torch and torchdata are missing and jax is installed (stubs in
sys.modules, whatever this environment has)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))

CONFTEST = """
import importlib.machinery, sys, types

sys.modules["torch"] = None  # find_spec says missing, import fails
sys.modules["torchdata"] = None
jax = types.ModuleType("jax")  # installed, as far as find_spec can tell
jax.__spec__ = importlib.machinery.ModuleSpec("jax", None)
sys.modules["jax"] = jax
"""

CASES = """
import pytest

def test_importorskip_torch():
    pytest.importorskip("torch")

def test_skip_naming_pytorch():
    pytest.skip("the DDP recipe needs PyTorch")

@pytest.mark.skipif(True, reason="resuming needs torchdata")
def test_skipif_naming_torchdata():
    pass

@pytest.mark.xfail(strict=True, reason="a known bug")
def test_xfail_importorskip_torchdata():
    pytest.importorskip("torchdata")
    assert False

def test_skip_naming_an_installed_framework():
    pytest.skip("needs jax with two devices")

def test_skip_for_another_reason():
    pytest.skip("needs os.fork")

def test_passes():
    pass
"""

MODULE_SKIP = """
import pytest

pytest.importorskip("torch", reason="h5feed.torch needs PyTorch")

def test_never_collected():
    pass
"""

NEED_TORCH = [
    "test_cases.py::test_importorskip_torch",
    "test_cases.py::test_skip_naming_pytorch",
    "test_cases.py::test_skipif_naming_torchdata",
    "test_cases.py::test_xfail_importorskip_torchdata",
]
OTHER_SKIPS = ["test_cases.py::test_skip_naming_an_installed_framework", "test_cases.py::test_skip_for_another_reason"]


@pytest.fixture
def run(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_cases.py").write_text(textwrap.dedent(CASES))
    (tmp_path / "test_module_skip.py").write_text(textwrap.dedent(MODULE_SKIP))

    def run(**env_vars):
        env = {k: v for k, v in os.environ.items() if k not in ("CI", "H5FEED_CI_DEFER")}
        env.update(env_vars, PYTHONPATH=os.pathsep.join(filter(None, [TESTS, env.get("PYTHONPATH")])))
        report = tmp_path / "report.xml"
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "framework_skips", "-p", "no:cacheprovider",
             "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), "--junitxml", str(report),
             "--continue-on-collection-errors", "-rA"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )
        return proc, _outcomes(report)

    return run


def _outcomes(report):
    """{node ID: (outcome, message and text)} from a JUnit XML report."""
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        module = case.get("classname").replace(".", "/")
        nodeid = f"{module}.py::{case.get('name')}" if module else f"{case.get('name')}.py"
        outcome, text = "passed", ""
        for kind in ("failure", "error", "skipped"):
            child = case.find(kind)
            if child is not None:
                outcome, text = kind, f"{child.get('message', '')}\n{child.text or ''}"
        outcomes[nodeid] = (outcome, text)
    return outcomes


def test_without_ci_a_missing_framework_is_a_skip(run):
    proc, outcomes = run()
    assert proc.returncode == 0, proc.stdout[-3000:]
    for nodeid in NEED_TORCH + OTHER_SKIPS:
        assert outcomes[nodeid][0] == "skipped", nodeid
    assert outcomes["test_module_skip.py"][0] == "skipped"
    assert outcomes["test_cases.py::test_passes"][0] == "passed"


@pytest.mark.parametrize("value", ["true", "1"])
def test_in_ci_a_skip_for_a_missing_framework_fails_saying_what_to_install(run, value):
    proc, outcomes = run(CI=value)
    assert proc.returncode == 1, proc.stdout[-3000:]
    for nodeid in NEED_TORCH:
        outcome, text = outcomes[nodeid]
        assert outcome in ("failure", "error"), nodeid  # error: the skipif fails in setup
        assert "in CI (CI=true) a test that needs it must run, not skip" in text
    assert "torch is not installed" in outcomes["test_cases.py::test_importorskip_torch"][1]
    assert "Install a CPU build of torch" in outcomes["test_cases.py::test_skip_naming_pytorch"][1]
    assert "Install torchdata" in outcomes["test_cases.py::test_xfail_importorskip_torchdata"][1]
    # The module skipped at collection is a collection error, with the same message.
    outcome, text = outcomes["test_module_skip.py"]
    assert outcome == "error" and "torch is not installed" in text
    assert "torch is not installed" in proc.stdout and "h5feed.torch needs PyTorch" in proc.stdout
    # A skip for another reason, or naming a framework that is installed, stays a skip.
    for nodeid in OTHER_SKIPS:
        assert outcomes[nodeid][0] == "skipped", nodeid
    assert outcomes["test_cases.py::test_passes"][0] == "passed"


def test_in_ci_with_a_defer_file_the_skips_are_written_there(run, tmp_path):
    deferred = tmp_path / "deferred.txt"
    proc, outcomes = run(CI="true", H5FEED_CI_DEFER=str(deferred))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert sorted(deferred.read_text().splitlines()) == sorted(NEED_TORCH + ["test_module_skip.py"])
    for nodeid in NEED_TORCH + ["test_module_skip.py"]:
        outcome, text = outcomes[nodeid]
        assert outcome == "skipped" and "deferred until .ci/run installs torch" in text, nodeid
    for nodeid in OTHER_SKIPS:
        assert outcomes[nodeid][0] == "skipped" and "deferred" not in outcomes[nodeid][1]
    assert f"written to {deferred}" in proc.stdout
