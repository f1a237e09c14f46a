"""SIGTERM (Slurm's time limit, `docker stop`) is Ctrl-C: one line, exit 143, what the command made
removed (no temporary left), and the printed hint continues the work."""

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
from mlrpl_data.folder import write_manifest
from mlrpl_data.masks import MaskConfig, make_masks
from mlrpl_data.shards import ShardConfig, write_shards

from conftest import Loopback, make_coco

REPO = Path(__file__).resolve().parents[1]


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "mlrpl.cli", *map(str, args)]


def temporaries(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob(".*") if any(t in p.name for t in (".tmp-", ".building-", ".old-"))]


def term_when(cmd: list[str], ready, timeout: float = 120, env=None, group: bool = False) -> subprocess.CompletedProcess:
    """Start `cmd`, send SIGTERM as soon as `ready()` holds (the command is mid-way), return its result;
    `group`: to every process of the command, as Slurm does (docker stop signals the main one only)."""
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, start_new_session=group)
    deadline = time.time() + timeout
    while p.poll() is None and not ready() and time.time() < deadline:
        time.sleep(0.01)
    assert p.poll() is None, "the command ended before the signal: make it longer"
    os.killpg(p.pid, signal.SIGTERM) if group else p.send_signal(signal.SIGTERM)
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


@pytest.mark.fuzzclass("signals")
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
    done = len([t for t in shards.glob("*.tar") if (shards / ".records" / f"{t.name}.json").exists()])
    assert 1 <= done < 46  # a shard renamed but not yet recorded when the pool was ended is written again
    again = subprocess.run(cli("write-shards", d, "--max-samples", "2", "--workers", "2", "--resize", "48",
                               "--no-progress"), cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"{done} kept" in again.stdout and "46 shards" in again.stdout


@pytest.mark.fuzzclass("signals")
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


def sharded(tmp_path: Path) -> Path:
    """48 training images with a 50% mask in shards of 8: enough steps to be stopped mid-run."""
    d = dataset(tmp_path, n_train=48, size=(40, 30))
    make_masks(d, MaskConfig(proportions=[0.5]))
    write_shards(d, ShardConfig(max_samples=8, shard_size=None, progress=False))
    return d


@pytest.mark.fuzzclass("signals")
def test_sigterm_mid_training_prints_the_resume_command_that_works(tmp_path):
    d = sharded(tmp_path)
    run = tmp_path / "run"
    args = ["train", "pbce", d, "--masks", "uniform-p0.50-s0", "--backbone", "tiny", "--weights", "none", "--epochs", "40",
            "--batch-size", "4", "--image-size", "32", "--workers", "2", "--no-progress", "--checkpoint-every", "2",
            "--out", run]
    r = term_when(cli(*args), lambda: (run / "last.pt").exists(), group=True)  # its loader workers get it too
    assert r.returncode == 143, r.stderr[-2000:]
    assert [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("epoch ", "note: "))] == [only_line(r.stderr)]
    line = only_line(r.stderr)
    assert line == (f"interrupted (SIGTERM): finished work is kept, temporary files removed; continue from the last "
                    f"checkpoint with: mlrpl train pbce {d} --resume {run}")
    assert temporaries(run) == []
    assert subprocess.run(cli(*args), cwd=REPO, capture_output=True).returncode == 1  # the same command refuses
    hint = line.split("with: mlrpl ", 1)[1].split() + ["--epochs", "1"]
    r2 = subprocess.run(cli(*hint), cwd=REPO, capture_output=True, text=True)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from mlrpl_train.engine import train
    from mlrpl_train.options import TrainConfig

    from trainkit import tiny_training_set

    root = tmp_path_factory.mktemp("sigworld")
    d = tiny_training_set(root, n_train=16, n_test=6, max_samples=6)
    run = train(TrainConfig(method="pbce", dataset=str(d), masks="uniform-p0.50-s0", out=str(root / "run"),
                            backbone="tiny", weights="none", epochs=1, batch_size=4, image_size=16, workers=0,
                            progress=False, val_fraction=0.0))
    return root, d, run


def sigterm_on_call(monkeypatch, owner, name, nth: int = 1):
    """`owner.name` sends this process SIGTERM on its `nth` call (the command is then mid-way)."""
    real, calls = getattr(owner, name), [0]

    def hooked(*a, **k):
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(owner, name, hooked)


@pytest.mark.parametrize("command", ["build-coco", "make-masks", "export", "predict", "sweep", "train"])
@pytest.mark.fuzzclass("signals")
def test_sigterm_in_every_command_is_one_line_and_leaves_nothing(trained, tmp_path, monkeypatch, command):
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from mlrpl.cli import app
    from mlrpl_data import errors
    from mlrpl_data.errors import raise_on_sigterm
    from mlrpl_train import engine

    root, d, run = trained
    o = tmp_path / "o"
    tiny = ["--backbone", "tiny", "--weights", "none", "--epochs", "2", "--batch-size", "4", "--image-size", "16",
            "--workers", "0", "--no-progress"]
    args, hint = {
        "build-coco": (["build-coco", "--root", root / "raw", "--out", o], "re-run the same command to continue"),
        "make-masks": (["make-masks", d, "--proportion", "0.2"], "re-run the same command to continue"),
        "export": (["export", run, "--out", o / "m.pt"], "re-run the same command to continue"),
        "predict": (["predict", run, d, "--out", o / "p.parquet", "--device", "cpu", "--no-progress"],
                    "re-run the same command to continue"),
        "sweep": (["sweep", "pbce", d, "--proportions", "0.5", "--out", o, *tiny], "re-run the same command to continue"),
        "train": (["train", "pbce", d, "--masks", "uniform-p0.50-s0", "--out", o, *tiny],
                  "no checkpoint was written yet: re-run the same command to start again"),
    }[command]
    if command == "export":
        sigterm_on_call(monkeypatch, torch, "save")
    elif command in ("sweep", "train"):
        sigterm_on_call(monkeypatch, engine, "train_step", nth=2)
    else:
        sigterm_on_call(monkeypatch, pq, "write_table")
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    old = signal.getsignal(signal.SIGTERM)
    raise_on_sigterm()
    try:
        r = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        signal.signal(signal.SIGTERM, old)
        errors._PENDING[0] = 0  # this pytest process goes on: no interrupt pending for the next test
    assert r.exit_code == 143, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip() and not ln.startswith(("epoch ", "note: ", f"{o}"))]
    assert lines == [f"interrupted (SIGTERM): finished work is kept, temporary files removed; {hint}"], r.output
    assert temporaries(tmp_path) == [] and temporaries(d) == []
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before  # no input changed
    if command != "sweep":  # a sweep keeps its folder and finished runs for the re-run
        assert not o.exists() or list(o.iterdir()) == [], sorted(o.rglob("*"))


@pytest.mark.fuzzclass("signals")
def test_sigterm_to_a_multi_process_run_reaches_every_rank_and_names_the_resume(tmp_path):
    d = sharded(tmp_path)
    run = tmp_path / "run"
    r = term_when(cli("train", "pbce", d, "--masks", "uniform-p0.50-s0", "--backbone", "tiny", "--weights", "none",
                      "--epochs", "40", "--batch-size", "4", "--image-size", "32", "--workers", "1", "--no-progress",
                      "--checkpoint-every", "2", "--out", run, "--nproc", "2"), lambda: (run / "last.pt").exists())
    assert r.returncode == 143, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("epoch ", "note: "))]
    hint = (f"interrupted (SIGTERM): finished work is kept, temporary files removed; continue from the last checkpoint "
            f"with: mlrpl train pbce {d} --resume {run} --nproc 2")
    peer = "error: another training process (rank) stopped first, so this one cannot go on: its own message says why"
    # one line from each rank (a rank whose peer ended a moment before its own signal says so), no orphan left
    assert "Traceback" not in r.stderr and len(lines) == 2 and hint in lines and set(lines) <= {hint, peer}, r.stderr
