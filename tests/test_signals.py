"""SIGTERM (Slurm's time limit, `docker stop`) is Ctrl-C: one line, exit 143, what the command made
removed (no temporary left), and the printed hint continues the work."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlrpl_data.coco import CocoConfig, build_coco
from mlrpl_data.manifest import write_manifest
from mlrpl_data.masks import MaskConfig, make_masks
from mlrpl_data.shards import ShardConfig, write_shards

from conftest import Loopback, make_coco

REPO = Path(__file__).resolve().parents[1]


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "mlrpl.cli", *map(str, args)]


def temporaries(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob(".*") if any(t in p.name for t in (".tmp-", ".building-", ".old-"))]


def term_when(cmd: list[str], ready, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
    """Start `cmd`, send SIGTERM as soon as `ready()` holds (the command is mid-way), return its result."""
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    deadline = time.time() + timeout
    while p.poll() is None and not ready() and time.time() < deadline:
        time.sleep(0.01)
    assert p.poll() is None, "the command ended before the signal: make it longer"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def dataset(tmp: Path, n_train: int = 60, n_test: int = 12, size=(160, 120)) -> Path:
    rng = np.random.default_rng(0)
    raw = make_coco(tmp / "raw", splits={"train": [(i, [1 + 2 * (i % 2)]) for i in range(1, n_train + 1)],
                                         "val": [(1000 + i, [3]) for i in range(n_test)]})
    for p in sorted(raw.rglob("*.jpg")):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(p, quality=90)
    d = tmp / "dataset"
    write_manifest(build_coco(CocoConfig(root=raw)), d)
    return d


def only_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err[-2000:]
    return lines[-1]


def test_sigterm_mid_write_shards_with_a_writer_pool(tmp_path):
    d = dataset(tmp_path, n_train=80, size=(320, 240))
    shards = d / "shards"
    r = term_when(cli("write-shards", d, "--max-samples", "2", "--workers", "2", "--resize", "48", "--no-progress"),
                  lambda: len(list(shards.glob("*.tar"))) >= 2)
    assert r.returncode == 143, r.stderr[-2000:]
    assert only_line(r.stderr).startswith("interrupted (SIGTERM): finished work is kept, temporary files removed; "
                                          "re-run the same command")
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1
    assert temporaries(d) == []  # the pool's half-written shards went with it
    assert not (shards / "index.json").exists()
    done = len(list(shards.glob("*.tar")))
    assert 2 <= done < 46
    again = subprocess.run(cli("write-shards", d, "--max-samples", "2", "--workers", "2", "--resize", "48",
                               "--no-progress"), cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"{done} kept" in again.stdout and "46 shards" in again.stdout


def test_sigterm_mid_pull_from_a_slow_server(tmp_path):
    d = dataset(tmp_path, n_train=30)
    make_masks(d, MaskConfig(proportions=[0.5]))
    write_shards(d, ShardConfig(max_samples=2, shard_size=None, progress=False))
    out = tmp_path / "mirror"
    with Loopback(d.parent, delay=0.2) as srv:
        url = f"{srv.url}/{d.name}"
        r = term_when(cli("pull", url, out, "--jobs", "2", "--no-progress"),
                      lambda: len(list((out / "shards").glob("*.tar"))) >= 2)
        assert r.returncode == 143, r.stderr[-2000:]
        assert only_line(r.stderr).startswith("interrupted (SIGTERM): finished work is kept, temporary files removed")
        assert len(r.stderr.strip().splitlines()) == 1
        assert temporaries(out) == []
        assert not (out / "dataset.json").exists()  # a half-pulled folder never reads as a dataset
        again = subprocess.run(cli("pull", url, out, "--no-progress"), cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert (out / "dataset.json").read_bytes() == (d / "dataset.json").read_bytes()


def test_sigterm_mid_training_prints_the_resume_command_that_works(tmp_path):
    d = dataset(tmp_path, n_train=48, size=(40, 30))
    make_masks(d, MaskConfig(proportions=[0.5]))
    write_shards(d, ShardConfig(max_samples=8, shard_size=None, progress=False))
    run = tmp_path / "run"
    args = ["train", "pbce", d, "--masks", "uniform-p0.50-s0", "--backbone", "tiny", "--weights", "none", "--epochs", "40",
            "--batch-size", "4", "--image-size", "32", "--workers", "0", "--no-progress", "--checkpoint-every", "2",
            "--out", run]
    r = term_when(cli(*args), lambda: (run / "last.pt").exists())
    assert r.returncode == 143, r.stderr[-2000:]
    line = only_line(r.stderr)
    assert line == (f"interrupted (SIGTERM): finished work is kept, temporary files removed; continue from the last "
                    f"checkpoint with: mlrpl train pbce {d} --resume {run}")
    assert temporaries(run) == []
    assert subprocess.run(cli(*args), cwd=REPO, capture_output=True).returncode == 1  # the same command refuses
    hint = line.split("with: mlrpl ", 1)[1].split() + ["--epochs", "1"]
    r2 = subprocess.run(cli(*hint), cwd=REPO, capture_output=True, text=True)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
