"""Files a command writes: model files sealed with their sha256 and checked on every read; no output
onto an input; a folder claimed atomically (a loser deletes nothing); a full disk (a real tmpfs)
stops a command in one line and leaves nothing partial; a refusal never aborts at exit."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from mlrpl_data.errors import BadInputError
from mlrpl_data.fsutil import SEAL_LEN, atomic_copy, is_sealed
from mlrpl_data.ownership import MARKER, claim, releasing
from mlrpl_train.checkpoint import load_checkpoint, save_checkpoint
from mlrpl_train.engine import train
from mlrpl_train.runlog import log_epoch
from mlrpl_train.inference import export_run, load_predictor
from mlrpl_train.options import TrainConfig

from conftest import write_jpeg
from trainkit import tiny_training_set

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "mlrpl.cli", *map(str, args)]


def last_line(r) -> str:
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A tiny run with last.pt and best.pt (a validation split), its three exports, and a photo."""
    home = tmp_path_factory.mktemp("files")
    d = tiny_training_set(home / "lab", n_train=16, n_test=6, max_samples=6)
    run = train(TrainConfig(method="pbce", dataset=str(d), masks="uniform-p0.50-s0", out=str(home / "run"),
                            backbone="tiny", weights="none", epochs=1, batch_size=4, image_size=16, workers=0,
                            progress=False, val_fraction=0.25))
    exports = {}
    for fmt, name in (("weights", "m.pt"), ("torchscript", "m.ts"), ("exported", "m.pt2")):
        export_run(run, home / name, fmt)
        exports[fmt] = home / name
    photo = home / "photos" / "street.jpg"
    photo.parent.mkdir()
    write_jpeg(photo, (40, 30), (200, 30, 40))
    return home, d, run, exports, photo


# ---- 13: a digest written into every model file and checked on every read ---------------------------------

def flipped_copies(src: Path, dst_dir: Path):
    """Copies of `src` with one byte flipped: at the start, in the data, in the zip directory, in the seal."""
    data = src.read_bytes()
    n = len(data)
    for pos in (0, 64, n // 3, n // 2, n - SEAL_LEN - 30, n - SEAL_LEN - 2, n - 20, n - 1):
        b = bytearray(data)
        b[pos] ^= 0x10
        dst = dst_dir / f"flip{pos}{src.suffix}"
        dst.write_bytes(bytes(b))
        yield pos, dst


@pytest.mark.filterwarnings("ignore:.*torch.jit:FutureWarning")
@pytest.mark.fuzzclass("run tampering")
def test_every_model_file_is_sealed_and_still_loads_with_torch_alone(lab):
    home, d, run, exports, photo = lab
    for p in (run / "last.pt", run / "best.pt", *exports.values()):
        assert is_sealed(p), p
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1  # the seal is the zip comment
    assert torch.jit.load(str(exports["torchscript"]))(torch.zeros(1, 16, 16, 3, dtype=torch.uint8)).shape == (1, 3)
    ref = load_predictor(run, device="cpu").predict([photo])
    for path in exports.values():
        np.testing.assert_allclose(load_predictor(path, device="cpu").predict([photo]), ref, atol=1e-5)


@pytest.mark.fuzzclass("run tampering")
def test_one_flipped_byte_anywhere_is_refused_by_every_reader(lab, tmp_path):
    home, d, run, exports, photo = lab
    for src in (run / "last.pt", run / "best.pt", *exports.values()):
        for pos, bad in flipped_copies(src, tmp_path):
            with pytest.raises(BadInputError) as e:
                load_predictor(bad, device="cpu") if src.parent != run else load_checkpoint(bad)
            assert str(e.value).startswith(f"{bad}: "), (src.name, pos, str(e.value))
            assert "corrupt" in str(e.value), (src.name, pos, str(e.value))


@pytest.mark.fuzzclass("run tampering")
def test_flipped_checkpoint_in_a_run_fails_predict_evaluate_export_and_resume(lab, tmp_path):
    home, d, run, exports, photo = lab
    r2 = tmp_path / "run"
    shutil.copytree(run, r2)
    data = bytearray((r2 / "last.pt").read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the weights: torch alone would load it
    (r2 / "last.pt").write_bytes(bytes(data))
    before = tree(r2)
    want = f"error: {r2 / 'last.pt'}: checkpoint is corrupt"
    for args in (["evaluate", str(r2), str(d), "--workers", "0", "--no-progress"],
                 ["export", str(r2), "--out", str(tmp_path / "m.pt")],
                 ["train", "pbce", str(d), "--resume", str(r2), "--epochs", "2", "--no-progress"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 1 and last_line(r).startswith(want), (args[0], r.output)
    r = runner.invoke(app, ["predict", str(r2), str(photo), "--device", "cpu", "--no-progress"])
    assert r.exit_code == 1 and last_line(r).startswith(f"error: {r2 / 'last.pt'}: model file is corrupt"), r.output
    assert tree(r2) == before and not (tmp_path / "m.pt").exists()
    r = runner.invoke(app, ["evaluate", str(r2), str(d), "--checkpoint", "best", "--workers", "0", "--no-progress",
                            "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output  # the run's other checkpoint, as the message says


@pytest.mark.fuzzclass("run tampering")
def test_resume_refuses_a_damaged_best_pt(lab, tmp_path):
    home, d, run, exports, photo = lab
    r2 = shutil.copytree(run, tmp_path / "run")
    data = (r2 / "best.pt").read_bytes()
    (r2 / "best.pt").write_bytes(data[: len(data) // 2])  # as a plain copy cut by a full disk left it
    before = tree(r2)
    r = runner.invoke(app, ["train", "pbce", str(d), "--resume", str(r2), "--epochs", "2", "--no-progress"])
    assert r.exit_code == 1 and last_line(r).startswith(f"error: {r2 / 'best.pt'}: checkpoint is corrupt"), r.output
    assert "delete it to resume" in last_line(r) and tree(r2) == before


# ---- 14: no output onto an input ------------------------------------------------------------------------

@pytest.mark.fuzzclass("output/input overlap")
def test_outputs_onto_inputs_are_refused_and_inputs_unchanged(lab, tmp_path):
    home, d, run, exports, photo = lab
    (tmp_path / "link.jpg").symlink_to(photo)
    os.link(photo, tmp_path / "hard.jpg")
    (tmp_path / "sub").mkdir()
    ev = ["evaluate", run, d, "--workers", "0", "--no-progress"]
    table = [
        (["predict", run, photo, "--out", photo], "is the input"),
        (["predict", run, photo, "--out", tmp_path / "link.jpg"], "is the input"),
        (["predict", run, photo, "--out", tmp_path / "hard.jpg"], "is the input"),
        (["predict", run, photo, "--out", tmp_path / "sub" / ".." / ".." / tmp_path.name / "hard.jpg"], "is the input"),
        (["predict", run, photo.parent, "--out", photo.parent / "preds.parquet"], "is inside the input"),
        (["predict", run, photo, "--out", run / "last.pt"], "is the run's last.pt"),
        (["predict", run / "best.pt", photo, "--out", run / "config.json"], "is the run's config.json"),
        (["predict", exports["weights"], photo, "--out", exports["weights"]], "is the model"),
        (["export", run, "--out", run / "last.pt"], "is the run's last.pt"),
        (["export", run, "--out", run / "best.pt", "--format", "torchscript"], "is the run's best.pt"),
        (["export", run / "last.pt", "--out", run / "last.pt", "--format", "exported"], "is the model"),
        (["export", run, "--out", run / "metrics.csv"], "is the run's metrics.csv"),
        ([*ev, "--scores", d / "images.parquet"], "is inside the dataset"),
        ([*ev, "--scores", run / "last.pt"], "is the run's last.pt"),
        ([*ev, "--out", d], "is inside the dataset"),
        (["train", "pbce", d, "--masks", "uniform-p0.50-s0", "--out", d / "runs", "--backbone", "tiny", "--weights",
          "none", "--workers", "0", "--no-progress"], "is inside the dataset"),
    ]
    inputs = {p: sha(p) for p in [*Path(d).rglob("*"), *run.rglob("*"), *exports.values(), photo] if p.is_file()}
    for args, relation in table:
        args = [str(a) for a in args]
        out = args[args.index("--scores") + 1] if "--scores" in args else args[args.index("--out") + 1]
        r = runner.invoke(app, args)
        line = last_line(r)
        assert r.exit_code == 1 and line.startswith("error: --") and f" {relation}" in line, (args, r.output)
        assert out in line and "must be apart from its inputs" in line, (args, line)
        assert {p: sha(p) for p in inputs} == inputs, args
    assert (tmp_path / "link.jpg").is_symlink() and sha(tmp_path / "hard.jpg") == inputs[photo]


@pytest.mark.fuzzclass("output/input overlap")
def test_an_output_file_replaces_only_what_mlrpl_wrote_there(lab, tmp_path):
    home, d, run, exports, photo = lab
    other = tmp_path / "other.jpg"
    write_jpeg(other, (8, 8), (1, 2, 3))
    kept = sha(other)
    for args, kind in ((["predict", run, photo, "--out", other, "--device", "cpu", "--no-progress"], "a predictions file"),
                       (["export", run, "--out", other], "a model file"),
                       (["evaluate", run, d, "--scores", other, "--workers", "0", "--no-progress"], "a scores file")):
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 1 and last_line(r) == (
            f"error: --{'scores' if 'evaluate' in args else 'out'} {other}: exists and is not {kind} mlrpl wrote: "
            f"mlrpl will not replace it; choose another --{'scores' if 'evaluate' in args else 'out'} (or remove the "
            f"file yourself)"), r.output
    assert sha(other) == kept
    # a killed export's temporary (its process is gone) is swept by the next export there
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / f".m.tmp-{gone.pid}.ts").write_bytes(b"half an export")
    # its own earlier outputs are replaced; a new file inside the run is no input
    for _ in range(2):
        assert runner.invoke(app, ["predict", str(run), str(photo), "--out", str(run / "preds.parquet"),
                                   "--device", "cpu", "--no-progress"]).exit_code == 0
        assert runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "m.ts"), "--format",
                                   "torchscript"]).exit_code == 0
    (run / "preds.parquet").unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ts", "other.jpg"]


# ---- 15: a folder is claimed atomically; the loser removes nothing ------------------------------------------

@pytest.mark.fuzzclass("concurrency and exit")
def test_a_command_on_a_folder_another_one_is_writing_is_refused_and_removes_nothing(lab, tmp_path):
    home, d, run, exports, photo = lab
    busy = tmp_path / "busy"

    @releasing
    def hold_and_run(cmd):
        assert claim(busy, "run", "--out") == "folder"  # this process is the first trainer
        (busy / "config.json").write_text('{"the": "first run"}\n')
        before = tree(busy)
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        return r, before

    r, before = hold_and_run(cli("train", "pbce", d, "--masks", "uniform-p0.50-s0", "--out", busy, "--backbone",
                                 "tiny", "--weights", "none", "--workers", "0", "--no-progress", "--force"))
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (f"error: {busy}: another mlrpl command is writing it now; wait for "
                                                f"it to end, or choose another --out")
    assert tree(busy) == before and (busy / MARKER).exists()  # the loser deleted neither config.json nor the marker
    # the lock goes with its command: the folder is free again
    assert releasing(claim)(busy, "run", "--out") is None


@pytest.mark.fuzzclass("concurrency and exit")
def test_two_trainings_started_together_one_wins_and_its_run_is_whole(lab, tmp_path):
    home, d, run, exports, photo = lab
    out = tmp_path / "r"
    cmd = cli("train", "pbce", d, "--masks", "uniform-p0.50-s0", "--out", out, "--backbone", "tiny", "--weights", "none",
              "--epochs", "1", "--batch-size", "4", "--image-size", "16", "--workers", "0", "--no-progress")
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 1], results
    loser = next(err for c, err in results if c == 1).strip().splitlines()[-1]
    assert loser in (f"error: {out}: another mlrpl command is writing it now; wait for it to end, or choose another --out",
                     f"error: {out}: already holds a run; pass --resume {out} to continue it or --force to replace it")
    assert load_checkpoint(out / "last.pt")["epoch"] == 1 and (out / "config.json").exists() and (out / MARKER).exists()


@pytest.mark.fuzzclass("concurrency and exit")
def test_a_build_beside_a_running_build_is_refused(lab, tmp_path):
    home, d, run, exports, photo = lab
    out = tmp_path / "ds"

    @releasing
    def hold_and_run():
        claim(out, "dataset", "--out")
        before = tree(out)
        r = subprocess.run(cli("build-coco", "--root", home / "lab" / "raw", "--out", out, "--no-progress"), cwd=REPO,
                           capture_output=True, text=True, timeout=300)
        return r, before

    r, before = hold_and_run()
    assert r.returncode == 1 and "another mlrpl command is writing it now" in r.stderr.strip().splitlines()[-1]
    assert tree(out) == before


# ---- 16: a full disk (a real tmpfs) ---------------------------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path):
    """A mount of `size` bytes (root only)."""
    mounted = []

    def make(size: int) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        p = tmp_path / f"tmpfs{len(mounted)}"
        p.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(p)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(p)
        return p

    yield make
    for p in mounted:
        subprocess.run(["umount", "-l", str(p)], capture_output=True)


def no_space_line(r, path: Path) -> bool:
    line = last_line(r)
    return r.exit_code == 1 and line.startswith(f"error: no space left on the device ({path}") and "Traceback" not in r.output


@pytest.mark.parametrize("fmt", ["weights", "torchscript", "exported"])
@pytest.mark.fuzzclass("ENOSPC")
def test_export_onto_a_full_disk_is_one_line_and_leaves_nothing(lab, tmpfs, fmt):
    home, d, run, exports, photo = lab
    disk = tmpfs(64 * 1024)  # the model is larger
    out = disk / "m.pt2" if fmt == "exported" else disk / "m.pt"
    r = runner.invoke(app, ["export", str(run), "--out", str(out), "--format", fmt])
    assert no_space_line(r, out), r.output
    assert list(disk.iterdir()) == []


@pytest.mark.fuzzclass("ENOSPC")
def test_training_onto_a_full_disk_is_one_line_and_leaves_nothing(lab, tmpfs):
    home, d, run, exports, photo = lab
    disk = tmpfs(256 * 1024)  # config.json fits, the first checkpoint does not
    out = disk / "run"
    r = runner.invoke(app, ["train", "pbce", str(d), "--masks", "uniform-p0.50-s0", "--out", str(out), "--backbone",
                            "tiny", "--weights", "none", "--epochs", "1", "--batch-size", "4", "--image-size", "16",
                            "--workers", "0", "--no-progress"])
    assert no_space_line(r, out / "last.pt"), r.output
    assert list(disk.iterdir()) == []  # the failed new run removed what it made


@pytest.mark.fuzzclass("ENOSPC")
def test_a_full_disk_keeps_the_previous_checkpoint_best_and_metrics_whole(lab, tmpfs):
    home, d, run, exports, photo = lab
    size = (run / "last.pt").stat().st_size
    disk = tmpfs(3 * size + 64 * 1024)
    payload = torch.load(run / "last.pt", weights_only=True)
    save_checkpoint(disk / "last.pt", payload)
    atomic_copy(disk / "last.pt", disk / "best.pt")
    log_epoch(disk, None, 1, 0.5, 0.1, 0, 10.0, 1.0, {"mAP": 0.5, "mAP_voc": 0.5, "OF1": 0.1, "CF1": 0.1,
                                                      "OF1_top3": 0.1, "CF1_top3": 0.1,
                                                          "classes_evaluated": 2, "classes": 2})
    before = tree(disk)
    (disk / "filler").write_bytes(b"\0" * (size // 2))  # what is left cannot hold a second copy
    with pytest.raises(OSError) as e:
        save_checkpoint(disk / "last.pt", {**payload, "epoch": 2})
    assert e.value.errno == 28 and not isinstance(e.value, RuntimeError)
    with pytest.raises(OSError):
        atomic_copy(disk / "last.pt", disk / "best.pt")
    with open(disk / "fill2", "wb", buffering=0) as f:  # now fill it to the last byte
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:
            pass
    with pytest.raises(OSError):
        log_epoch(disk, None, 2, 0.4, 0.1, 0, 10.0, 1.0, None)
    (disk / "filler").unlink()
    (disk / "fill2").unlink()
    assert tree(disk) == before  # last.pt, best.pt and metrics.csv as they were, no temporary
    assert load_checkpoint(disk / "best.pt")["epoch"] == 1
    assert (disk / "metrics.csv").read_text().count("\n") == 2  # the header and epoch 1, whole


@pytest.mark.fuzzclass("ENOSPC")
def test_predict_and_scores_onto_a_full_disk(lab, tmpfs):
    home, d, run, exports, photo = lab
    disk = tmpfs(4096)
    (disk / "filler").write_bytes(b"\0" * 4096)
    r = runner.invoke(app, ["predict", str(run), str(photo), "--out", str(disk / "p.parquet"), "--device", "cpu",
                            "--no-progress"])
    assert no_space_line(r, disk / "p.parquet"), r.output
    r = runner.invoke(app, ["evaluate", str(run), str(d), "--out", str(disk), "--workers", "0", "--no-progress"])
    assert r.exit_code == 1 and last_line(r).startswith("error: no space left on the device"), r.output
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


# ---- 19: a refusal never aborts at exit ------------------------------------------------------------------------

@pytest.mark.fuzzclass("concurrency and exit")
def test_refusing_an_existing_run_exits_1_every_time(lab):
    """Arrow used to release a reader over Python bytes in its own thread at exit: 5 in 20 aborted (134)."""
    home, d, run, exports, photo = lab
    before = tree(run)
    cmd = cli("train", "pbce", d, "--masks", "uniform-p0.50-s0", "--out", run, "--backbone", "tiny", "--weights", "none",
              "--workers", "0", "--no-progress")
    results = [subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300) for _ in range(20)]
    # one after the other: run side by side, they slow each other and the old abort hid (0 in 20)
    assert [r.returncode for r in results] == [1] * 20, [(r.returncode, r.stderr[-300:]) for r in results]
    want = f"error: {run}: already holds a run; pass --resume {run} to continue it or --force to replace it"
    assert all(r.stderr.strip().splitlines() == [want] for r in results), results[0].stderr
    assert tree(run) == before
