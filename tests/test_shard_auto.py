"""--shard auto / shard="auto": the part comes from a Slurm array job."""

from __future__ import annotations

import numpy as np
import pytest

import h5feed
from h5feed._args import check_shard, shard_from_environment
from h5feed.cli import main
from h5feed.convert import from_arrays


@pytest.mark.parametrize("env, part", [
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"}, (0, 4)),
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}, (3, 4)),
    ({"SLURM_ARRAY_TASK_ID": "14", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "0",
      "SLURM_ARRAY_TASK_STEP": "2"}, (7, 8)),
], ids=["from-0", "from-1", "step-2"])
def test_the_part_is_the_task_counted_from_the_first(env, part):
    assert shard_from_environment(env) == part


@pytest.mark.parametrize("env, match", [
    ({}, "SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT is not set"),
    ({"SLURM_ARRAY_TASK_ID": "2"}, "SLURM_ARRAY_TASK_COUNT is not set"),
    ({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "3"}, "is not part 0..2; use --array=MIN-MAX"),
    ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "3"}, "not integers"),
], ids=["unset", "no-count", "scattered-ids", "not-a-number"])
def test_outside_an_array_job_auto_is_a_clear_error(env, match):
    with pytest.raises(ValueError, match=match):
        shard_from_environment(env)


def test_converters_take_auto_from_the_api_and_the_command_line(tmp_path, monkeypatch, capsys):
    ids = [f"s{i}" for i in range(10)]
    np.save(tmp_path / "X.npy", np.arange(10, dtype=np.float32)[:, None])
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert check_shard("auto") == (1, 2)
    api = from_arrays(tmp_path / "X.npy", None, tmp_path / "api.h5", ids=ids, shard="auto")
    explicit = from_arrays(tmp_path / "X.npy", None, tmp_path / "one.h5", ids=ids, shard=(1, 2))
    assert main(["convert", "arrays", str(tmp_path / "X.npy"), "--no-labels", "--ids", str(tmp_path / "ids.txt"),
                 "-o", str(tmp_path / "cli.h5"), "--shard", "auto", "-q"]) == 0
    rows = {p: h5feed.open_file(p).n_rows for p in (api.path, explicit.path, tmp_path / "cli.h5")}
    assert set(rows.values()) == {5}
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    assert main(["convert", "arrays", str(tmp_path / "X.npy"), "--no-labels", "-o", str(tmp_path / "x.h5"),
                 "--shard", "auto"]) == 2
    assert "SLURM_ARRAY_TASK_ID is not set" in capsys.readouterr().err
