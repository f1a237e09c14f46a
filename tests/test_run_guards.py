"""What a new user hit after the real-files work: a resume beside a running train, --epochs below what a run
has trained, a finished run resumed, a mask without a known label, an image too small for DSRB's map, a
write that fails leaving an empty folder, one summary line per run."""

import errno
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlrpl.cli import app
from mlrpl_data.errors import BadInputError
from mlrpl_data.fsutil import atomic_write_with
from mlrpl_data.masks import MaskConfig, make_masks
from mlrpl_data.ownership import claim, releasing
from mlrpl_train.engine import train
from mlrpl_train.options import TrainConfig

from trainkit import tiny_training_set

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tiny_training_set(tmp_path_factory.mktemp("guards"), n_train=16, n_test=6)
    make_masks(d, MaskConfig(proportions=[0.000001]))  # 16 x C entries: every one unknown
    return d


def config(data, out, **kw) -> TrainConfig:
    base = dict(method="pbce", dataset=str(data), masks="uniform-p0.50-s0", out=str(out), backbone="tiny",
                weights="none", epochs=1, batch_size=4, image_size=16, workers=0, progress=False, val_fraction=0.0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.fuzzclass("concurrency and exit")
def test_a_resume_beside_a_running_train_is_refused(data, tmp_path):
    run = train(config(data, tmp_path / "run"))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    @releasing
    def hold_and_resume():
        assert claim(run, "run", "--out") is None  # the folder is mlrpl's: this process now holds its lock
        return subprocess.run([sys.executable, "-m", "mlrpl.cli", "train", "pbce", str(data), "--resume", str(run),
                               "--epochs", "2", "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=300)

    r = hold_and_resume()
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"error: {run}: another mlrpl command is writing it now; wait for it to end"
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # it trained nothing


@pytest.mark.fuzzclass("run tampering")
def test_epochs_below_what_was_trained_and_a_finished_run(data, tmp_path, capsys):
    run = train(config(data, tmp_path / "run", epochs=2))
    with pytest.raises(BadInputError, match=r"--epochs 1 is below the 2 epoch\(s\) already trained"):
        train(config(data, run, epochs=1), resume=True)
    capsys.readouterr()
    train(config(data, run, epochs=2), resume=True)
    assert f"note: {run} had already finished its 2 epoch(s): nothing trained" in capsys.readouterr().err
    assert len((run / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs, nothing added


@pytest.mark.fuzzclass("reported figures")
def test_a_mask_without_a_known_label_is_refused(data, tmp_path):
    with pytest.raises(BadInputError, match="uniform-p0.000001-s0: holds no known label"):
        train(config(data, tmp_path / "run", masks="uniform-p0.000001-s0"))
    assert not (tmp_path / "run").exists()


@pytest.mark.fuzzclass("reported figures")
@pytest.mark.parametrize("method", ["dsrb", "ssgrl"])
def test_an_image_too_small_for_the_feature_map_is_one_line(data, tmp_path, method):
    cfg = config(data, tmp_path / "run", method=method)
    with pytest.raises(BadInputError, match=rf"--image-size 16: {method} with the tiny backbone and the 2x2 pool "
                                            r"needs at least 17 px"):
        train(cfg)
    assert not (tmp_path / "run").exists()
    cfg17 = config(data, tmp_path / "run17", method=method, image_size=17)
    assert train(cfg17).is_dir()  # one more pixel: a 2x2 map, and the run trains


@pytest.mark.fuzzclass("ENOSPC")
def test_a_failed_write_leaves_no_folder_it_made(tmp_path):
    def full(f):
        f.write(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "kept").mkdir()
    with pytest.raises(OSError) as e:
        atomic_write_with(tmp_path / "kept" / "masks" / "deep" / "m.parquet", full)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "kept" / "masks" / "deep" / "m.parquet")
    assert [p.name for p in tmp_path.rglob("*")] == ["kept"]  # masks/ and deep/ went, the folder that was there stays


@pytest.mark.fuzzclass("ENOSPC")
def test_a_claim_that_cannot_write_its_marker_leaves_no_folder(tmp_path, monkeypatch):
    import mlrpl_data.ownership as ownership

    def no_space(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ownership, "_mark_first", no_space)
    with pytest.raises(OSError):
        releasing(claim)(tmp_path / "a" / "run", "run", "--out")
    assert list(tmp_path.iterdir()) == []  # the run folder and the parent it made are gone


def test_exported_archive_written_through_the_sink_warns_nothing(data, tmp_path, capfd):
    from mlrpl_train.inference import export_run

    run = train(config(data, tmp_path / "run"))
    capfd.readouterr()
    export_run(run, tmp_path / "m.pt2", "exported", "last")
    # torch's own stderr handler (torch.export does not propagate to logging's root) printed it for every export
    assert "Expect archive file" not in capfd.readouterr().err


def test_only_the_first_process_prints_the_run_summary(data, tmp_path, monkeypatch):
    args = ["train", "pbce", str(data), "--masks", "uniform-p0.50-s0", "--backbone", "tiny", "--weights", "none",
            "--epochs", "1", "--batch-size", "4", "--image-size", "16", "--workers", "0", "--no-progress",
            "--val-fraction", "0"]
    first = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert first.exit_code == 0 and f"{tmp_path / 'a'}: config.json, metrics.csv, metrics_last.json, tb/, last.pt" \
        in first.output
    monkeypatch.setenv("RANK", "1")  # what torchrun sets in the second process (it trains alone here)
    second = runner.invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert second.exit_code == 0 and f"{tmp_path / 'b'}:" not in second.output


@pytest.mark.fuzzclass("output/input overlap")
def test_export_never_replaces_another_runs_checkpoint(data, tmp_path):
    """Another run's last.pt is sealed like an export: it was replaced as if it were one."""
    from mlrpl_train.inference import export_run

    a, b = train(config(data, tmp_path / "a")), train(config(data, tmp_path / "b"))
    before = (b / "last.pt").read_bytes()
    with pytest.raises(BadInputError, match=rf"--out {b / 'last.pt'}.*the run's last\.pt"):
        export_run(a, b / "last.pt", "weights", "last")
    assert (b / "last.pt").read_bytes() == before
    export_run(a, b / "a-model.pt", "weights", "last")  # a new file beside another run's files is fine


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_finished_run_resumed_on_the_command_line_says_so_and_exits_0(data, tmp_path):
    run = train(config(data, tmp_path / "run", epochs=2))
    before = _files(run)
    r = runner.invoke(app, ["train", "pbce", str(data), "--resume", str(run), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines() == [
        f"note: {run} had already finished its 2 epoch(s): nothing trained (finished at epoch 2 of 2; to train "
        f"longer, resume it with a larger --epochs, e.g. --resume {run} --epochs 4)"]
    assert _files(run) == before  # no model built, no file touched
    args = ["train", "pbce", str(data), "--resume", str(run), "--no-progress", "--workers", "1"]
    first, other = runner.invoke(app, args), runner.invoke(app, args, env={"RANK": "1"})
    assert [ln.split(":")[0] for ln in first.output.strip().splitlines()] == ["resume", "note"], first.output
    assert (other.exit_code, other.output) == (0, "")  # under --nproc, every rank runs this: rank 0 speaks for them


def test_a_resume_with_another_number_of_processes_is_refused(data, tmp_path):
    from mlrpl_train.checkpoint import load_checkpoint, save_checkpoint

    run = train(config(data, tmp_path / "run", epochs=2, checkpoint_every=1))
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["world"] == 1  # the number of processes that trained it
    ckpt["world"] = 2  # as torchrun --nproc 2 writes it
    save_checkpoint(run / "last.pt", ckpt)
    before = _files(run)
    r = runner.invoke(app, ["train", "pbce", str(data), "--resume", str(run), "--epochs", "3", "--no-progress"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1] == (
        f"error: {run / 'last.pt'}: trained by 2 processes (an effective batch of 2 x 4 = 8), resumed by 1 process "
        f"(an effective batch of 1 x 4 = 4): resume it with --nproc 2, so that its batches and sample order "
        f"continue exactly; to train on with another number of processes, start a new run")
    assert _files(run) == before
