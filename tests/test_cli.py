"""The command line, called through main(argv)."""

from __future__ import annotations

import subprocess
import sys

import h5py
import pytest

import h5feed
from h5feed.cli import main


def test_import_h5feed_does_not_import_tensorflow_or_keras():
    code = "import sys, h5feed; print(sorted(m for m in ('tensorflow', 'keras', 'torch', 'jax') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "usage: h5feed" in capsys.readouterr().err


def test_unknown_option_is_a_usage_error(capsys):
    assert main(["demo", "--no-such-option"]) == 2
    assert "usage:" in capsys.readouterr().err


def test_version(capsys):
    assert main(["--version"]) == 0
    assert h5feed.__version__ in capsys.readouterr().out


@pytest.mark.slow
def test_demo_writes_a_valid_file_and_reports_the_rate(tmp_path, capsys):
    out = tmp_path / "demo.h5"
    assert main(["demo", "-o", str(out), "--samples", "200", "--shape", "8,8,1", "--classes", "3"]) == 0
    stdout = capsys.readouterr().out
    assert f"wrote {out} (200 rows)" in stdout
    assert "samples/s" in stdout
    info = h5feed.open_file(out)
    assert info.n_rows == 200 and info.n_classes == 3
    assert dict(info.splits) == {"train": 160, "validation": 40}
    with h5py.File(out) as f:
        assert f["ids"].asstr()[0] == "id-1"


def test_demo_refuses_to_overwrite_without_flag(tmp_path, small_file, capsys):
    before = small_file.read_bytes()
    assert main(["demo", "-o", str(small_file), "--samples", "10", "--shape", "2"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert small_file.read_bytes() == before


def test_a_command_whose_module_cannot_import_says_why(monkeypatch, capsys):
    from h5feed import cli

    monkeypatch.setattr(cli, "_OPTIONAL", {"h5feed.no_such_module": ("frobnicate",)})
    monkeypatch.setattr(cli, "COMMANDS", list(cli.COMMANDS))
    assert main(["frobnicate", "anything", "--at-all"]) == 1
    err = capsys.readouterr().err
    assert "cannot import h5feed.no_such_module" in err and "pip install" in err


def test_stdout_closed_early_ends_quietly_with_141(small_file, monkeypatch, capsys):
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["info", str(small_file)]) == 141
    assert capsys.readouterr().err == ""


def test_results_go_to_stdout_and_errors_to_stderr(small_file, tmp_path):
    command = [sys.executable, "-m", "h5feed", "info", str(small_file)]
    ok = subprocess.run(command, capture_output=True, text=True)
    assert ok.returncode == 0 and "100 rows" in ok.stdout and ok.stderr == ""
    bad = subprocess.run([*command[:-1], str(tmp_path / "missing.h5")], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stdout == "" and "no such file" in bad.stderr
    usage = subprocess.run([*command[:3], "--no-such-command"], capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stdout == "" and "usage:" in usage.stderr
