"""write-shards --part: counted from 1, a 0 refused in words that name Slurm, and a Slurm array task's part
read from SLURM_ARRAY_TASK_* when --part is left out (task IDs count from 0)."""

import json

import pytest
from typer.testing import CliRunner

from mlrpl.cli import app
from mlrpl_data.errors import BadInputError
from mlrpl_data.shards import parse_part, slurm_part

from test_shards import dataset

runner = CliRunner()


def test_slurm_task_ids_map_to_parts_counted_from_1():
    assert slurm_part({}) is None
    assert slurm_part({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "16"}) == (1, 16)
    assert slurm_part({"SLURM_ARRAY_TASK_ID": "15", "SLURM_ARRAY_TASK_COUNT": "16"}) == (16, 16)
    # --array=1-16 and --array=0-30:2: the ID's place in the array, not the ID
    assert slurm_part({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "16"}) == (1, 16)
    assert slurm_part({"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "30",
                       "SLURM_ARRAY_TASK_STEP": "2"}) == (4, 16)
    with pytest.raises(BadInputError, match="needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT"):
        slurm_part({"SLURM_ARRAY_TASK_ID": "3"})
    with pytest.raises(BadInputError, match="task 16 is not one of 16 tasks from 0 in steps of 1"):
        slurm_part({"SLURM_ARRAY_TASK_ID": "16", "SLURM_ARRAY_TASK_COUNT": "16"})


def test_part_counts_from_1_and_a_0_is_refused_never_shifted():
    assert parse_part("1/8") == (1, 8) and parse_part("8/8") == (8, 8) and parse_part(None) is None
    with pytest.raises(BadInputError, match=r"--part 0/8: parts count from 1 \(1/8 .. 8/8\); a Slurm array task ID "
                                            r"counts from 0"):
        parse_part("0/8")
    with pytest.raises(BadInputError, match="--part 9/8: i must be between 1 and n"):
        parse_part("9/8")


def test_write_shards_in_a_slurm_array_writes_its_tasks_part(tmp_path):
    """7 shards (23 train + 7 test images, 5 a shard) in 3 parts: task 1 (the second) writes shards 2 and 5."""
    base = ["--max-samples", "5", "--no-progress", "--json"]
    d = dataset(tmp_path, name="slurm")
    r = runner.invoke(app, ["write-shards", str(d), *base],
                      env={"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3"})
    assert r.exit_code == 0, r.output
    assert "part 2/3 (Slurm array task SLURM_ARRAY_TASK_ID=1; pass --part 1/1 for every shard)" in r.output
    doc = json.loads(r.output[r.output.index("{"):])
    assert doc["written"] == ["train-000001.tar", "train-000004.tar"] and not doc["complete"]
    e = dataset(tmp_path, name="flag")
    r = runner.invoke(app, ["write-shards", str(e), *base, "--part", "2/3"])
    assert json.loads(r.output)["written"] == doc["written"]
    r = runner.invoke(app, ["write-shards", str(e), *base, "--part", "1/1"],  # the flag wins over the array
                      env={"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3"})
    assert json.loads(r.output)["complete"] and len(json.loads(r.output)["written"]) == 5
