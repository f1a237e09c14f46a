"""Faults: kill -9 at random points of build, make-masks, write-shards and train, then the same command
again gives the same bytes (the same weights for train); a full disk (ENOSPC, injected) stops a
command with one line, leaves no temporary file, and the re-run finishes the job."""

import errno
import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mlrpl.cli import app

from conftest import make_coco

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "mlrpl.cli", *map(str, args)]


def run_killed(cmd: list[str], after: float) -> int | None:
    """Start `cmd`, SIGKILL it after `after` seconds (None if it finished first: its exit code)."""
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return p.wait(timeout=after)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return None


def tree_hashes(folder: Path, skip=("tb",)) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not set(p.relative_to(folder).parts) & set(skip)}


def temporaries(folder: Path) -> list[str]:
    return [str(p) for p in folder.parent.rglob(".*") if ".tmp-" in p.name or ".building-" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """A COCO-format raw set big enough that each command takes a moment (120 train, 30 val images)."""
    root = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(0)
    splits = {"train": [(i, [1 + 2 * (i % 2)] if i % 3 else [1, 7]) for i in range(1, 121)],
              "val": [(1000 + i, [3, 7][: 1 + i % 2]) for i in range(30)]}
    r = make_coco(root / "raw", splits=splits)
    for p in sorted(r.rglob("*.jpg")):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(p, quality=90)
    return r


def timed(cmd) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - t


def test_kill_9_then_rerun_gives_identical_bytes(raw, tmp_path):
    ref, d = tmp_path / "ref", tmp_path / "d"
    steps = [("build-coco", "--root", raw, "--out", "{D}", "--no-progress"),
             ("make-masks", "{D}", "--proportion", "0.1:0.9:0.1"),
             ("write-shards", "{D}", "--max-samples", "10", "--resize", "64", "--no-progress")]
    rng = random.Random(0)
    for step in steps:
        duration = timed(cli(*[str(a).replace("{D}", str(ref)) for a in step]))
        cmd = cli(*[str(a).replace("{D}", str(d)) for a in step])
        for _ in range(3):  # three kills at random points of the command's run time
            run_killed(cmd, rng.uniform(0.2, 1.0) * duration)
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)  # the re-run
        assert tree_hashes(d) == tree_hashes(ref), step[0]
        assert temporaries(d) == [], step[0]


def test_kill_9_mid_training_then_resume_gives_the_same_weights(raw, tmp_path):
    d = tmp_path / "d"
    for step in (("build-coco", "--root", raw, "--out", d, "--no-progress"), ("make-masks", d, "--proportion", "0.5"),
                 ("write-shards", d, "--max-samples", "10", "--no-progress")):
        subprocess.run(cli(*step), cwd=REPO, check=True, capture_output=True)
    args = ["train", "pbce", d, "--masks", "uniform-p0.50-s0", "--backbone", "tiny", "--weights", "none", "--epochs", "3",
            "--batch-size", "8", "--image-size", "32", "--workers", "0", "--no-progress", "--checkpoint-every", "2"]
    duration = timed(cli(*args, "--out", tmp_path / "ref"))
    rng = random.Random(1)
    resume = cli("train", "pbce", d, "--resume", tmp_path / "run", "--no-progress")
    run_killed(cli(*args, "--out", tmp_path / "run"), rng.uniform(0.5, 0.9) * duration)  # the first kill
    if not (tmp_path / "run" / "config.json").exists():  # killed before the run began: start it again
        run_killed(cli(*args, "--out", tmp_path / "run"), rng.uniform(0.5, 0.9) * duration)
    run_killed(resume, rng.uniform(0.3, 0.7) * duration)  # killed again while resuming
    r = subprocess.run(resume, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    a = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert temporaries(tmp_path / "run") == []


def enospc(path="x"):
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_full_disk_while_writing_shards(raw, tmp_path, monkeypatch):
    from mlrpl_data import tar as tar_mod

    d = tmp_path / "d"
    assert runner.invoke(app, ["build-coco", "--root", str(raw), "--out", str(d), "--no-progress"]).exit_code == 0
    ref = tmp_path / "ref"
    assert runner.invoke(app, ["build-coco", "--root", str(raw), "--out", str(ref), "--no-progress"]).exit_code == 0
    assert runner.invoke(app, ["write-shards", str(ref), "--max-samples", "10", "--no-progress"]).exit_code == 0
    real, calls = tar_mod.TarWriter.add, {"n": 0}

    def full(self, name, data):
        calls["n"] += 1
        if calls["n"] == 90:  # in the fifth shard
            raise enospc(name)
        return real(self, name, data)

    monkeypatch.setattr(tar_mod.TarWriter, "add", full)
    r = runner.invoke(app, ["write-shards", str(d), "--max-samples", "10", "--no-progress"])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1].startswith("error: no space left on the device")
    assert "Traceback" not in r.output and temporaries(d / "shards") == []
    assert len(list((d / "shards").glob("*.tar"))) == 4  # the finished shards are kept
    monkeypatch.setattr(tar_mod.TarWriter, "add", real)
    r = runner.invoke(app, ["write-shards", str(d), "--max-samples", "10", "--no-progress"])
    assert r.exit_code == 0 and "4 kept" in r.output
    assert tree_hashes(d / "shards") == tree_hashes(ref / "shards")


def test_full_disk_while_making_masks_and_building(raw, tmp_path, monkeypatch):
    from mlrpl_data import folder, fsutil

    d = tmp_path / "d"
    real_table = folder.table_bytes
    monkeypatch.setattr(folder, "table_bytes", lambda t: (_ for _ in ()).throw(enospc("images.parquet")))
    r = runner.invoke(app, ["build-coco", "--root", str(raw), "--out", str(d), "--no-progress"])
    assert r.exit_code == 1 and "no space left" in r.output and not d.exists() and temporaries(d) == []
    monkeypatch.setattr(folder, "table_bytes", real_table)
    assert runner.invoke(app, ["build-coco", "--root", str(raw), "--out", str(d), "--no-progress"]).exit_code == 0
    real_fsync, calls = fsutil.os.fsync, {"n": 0}

    def full(fd):
        calls["n"] += 1
        if calls["n"] == 2:  # the sidecar of the first mask
            raise enospc()
        return real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", full)
    r = runner.invoke(app, ["make-masks", str(d), "--proportion", "0.3"])
    assert r.exit_code == 1 and "no space left" in r.output and temporaries(d / "masks") == []
    monkeypatch.setattr(fsutil.os, "fsync", real_fsync)
    r = runner.invoke(app, ["make-masks", str(d), "--proportion", "0.3", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)[0]["state"] == "repaired"  # the orphan parquet is rewritten


def test_full_disk_while_checkpointing(raw, tmp_path, monkeypatch):
    from mlrpl_train import checkpoint

    d = tmp_path / "d"
    for args in (["build-coco", "--root", str(raw), "--out", str(d), "--no-progress"],
                 ["make-masks", str(d), "--proportion", "0.5"], ["write-shards", str(d), "--max-samples", "20", "--no-progress"]):
        assert runner.invoke(app, args).exit_code == 0
    real, calls = checkpoint.torch.save, {"n": 0}

    def full(obj, f):  # torch.save writes to the temporary's file object
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"partial")  # a half-written temporary, as a full disk leaves it
            raise enospc(f.name)
        return real(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", full)
    run = tmp_path / "run"
    args = ["train", "pbce", str(d), "--masks", "uniform-p0.50-s0", "--backbone", "tiny", "--weights", "none",
            "--epochs", "2", "--batch-size", "8", "--image-size", "32", "--workers", "0", "--no-progress", "--out", str(run)]
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and "no space left" in r.output
    assert checkpoint.load_checkpoint(run / "last.pt")["epoch"] == 1 and temporaries(run) == []
    monkeypatch.setattr(checkpoint.torch, "save", real)
    r = runner.invoke(app, ["train", "pbce", str(d), "--resume", str(run), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert checkpoint.load_checkpoint(run / "last.pt")["epoch"] == 2
