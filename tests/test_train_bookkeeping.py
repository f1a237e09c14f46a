"""Training bookkeeping: every figure and file a run reports is true (resume, selection, mAP scope, batching)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mlrpl.cli import app
from mlrpl_data.errors import BadInputError
from mlrpl_train import engine, runlog
from mlrpl_train.data import validation_keys
from mlrpl_train.checkpoint import RunCheckpoints, load_checkpoint, load_run_config, resume_config
from mlrpl_train.engine import train
from mlrpl_train.metrics import evaluate_scores, format_metrics
from mlrpl_train.options import TrainConfig

from trainkit import tiny_training_set

runner = CliRunner()
WALL_CLOCK = ("images_per_s", "seconds", "peak_memory_mb")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_training_set(tmp_path_factory.mktemp("bookkeeping"), n_train=40, n_test=12)


def config(data, out, **kw) -> TrainConfig:
    base = dict(method="pbce", dataset=str(data), masks="uniform-p0.50-s0", out=str(out), backbone="tiny", weights="none",
                freeze="none", epochs=2, batch_size=4, lr=3e-3, image_size=32, workers=0, progress=False, shuffle_buffer=8,
                val_fraction=0.0, checkpoint_every=3)
    base.update(kw)
    return TrainConfig(**base)


def metric_rows(run: Path) -> list[dict[str, str]]:
    """metrics.csv as printed, without the wall-clock columns."""
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in csv.DictReader(f)]


def tensorboard_steps(run: Path) -> dict[str, list[int]]:
    """The steps TensorBoard shows per tag: events read in file order, and a session START at step s
    (SummaryWriter's purge_step) drops every earlier event at step >= s, as TensorBoard does."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps: dict[str, list[int]] = {}
    # TensorBoard orders files by name, which starts with the writer's second; a resume in the same second and
    # process (only here, in-process) can sort before the original (uid .10 < .9), so order by the first event
    files = [list(EventFileLoader(str(p)).Load()) for p in (run / "tb").glob("events.out.tfevents.*")]
    for events in sorted(files, key=lambda evs: evs[0].wall_time if evs else 0.0):
        for ev in events:
            if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START:
                steps = {t: [s for s in v if s < ev.step] for t, v in steps.items()}
            for value in ev.summary.value:
                steps.setdefault(value.tag, []).append(ev.step)
    return steps


# ---- item 10: a run interrupted and resumed logs what an uninterrupted run logs --------------------------------

@pytest.mark.parametrize("where", ["mid-epoch", "between the epoch's log and its checkpoint"])
@pytest.mark.fuzzclass("reported figures")
def test_interrupted_then_resumed_run_logs_exactly_the_uninterrupted_run(data, tmp_path, monkeypatch, where):
    ref = train(config(data, tmp_path / "ref"))
    real_step, real_ckpt = engine.train_step, RunCheckpoints.checkpoint
    calls = {"n": 0}

    def dying_step(*a, **k):  # 10 batches per epoch: killed at epoch 2's step 6, three steps after its checkpoint
        calls["n"] += 1
        if calls["n"] == 16:
            raise KeyboardInterrupt
        return real_step(*a, **k)

    def dying_ckpt(self, epoch, step, best=False):  # killed after epoch 1's row was written, before its checkpoint
        if (epoch, step) == (1, 0):
            raise KeyboardInterrupt
        return real_ckpt(self, epoch, step, best)

    if where == "mid-epoch":
        monkeypatch.setattr(engine, "train_step", dying_step)
    else:
        monkeypatch.setattr(RunCheckpoints, "checkpoint", dying_ckpt)
    with pytest.raises(KeyboardInterrupt):
        train(config(data, tmp_path / "run"))
    monkeypatch.setattr(engine, "train_step", real_step)
    monkeypatch.setattr(RunCheckpoints, "checkpoint", real_ckpt)
    run = tmp_path / "run"
    mid = load_checkpoint(run / "last.pt")
    assert (mid["epoch"], mid["step"]) == ((1, 3) if where == "mid-epoch" else (0, 9))
    assert len(mid["epoch_losses"]) == mid["step"]  # the epoch's losses so far travel with the checkpoint
    train(load_run_config(run), resume=True)

    want, got = metric_rows(ref), metric_rows(run)
    assert [r["epoch"] for r in got] == ["1", "2"]  # a row logged after the checkpoint is dropped, then written again
    assert got == want  # train_loss included, to the printed digit (was 0.6311 vs 0.6434)
    ref_tb, run_tb = tensorboard_steps(ref), tensorboard_steps(run)
    assert run_tb["train/loss"] == list(range(1, 21))  # each step once, though steps were logged twice
    assert {t: sorted(v) for t, v in run_tb.items() if t.startswith(("train/", "epoch/"))} == \
        {t: sorted(v) for t, v in ref_tb.items() if t.startswith(("train/", "epoch/"))}


# ---- item 12: a resume trains on what the checkpoint was trained with ---------------------------------------------

@pytest.mark.fuzzclass("run tampering")
def test_resume_refuses_a_hand_edited_config_json_naming_the_option(data, tmp_path):
    run = train(config(data, tmp_path / "run", epochs=1))
    doc = json.loads((run / "config.json").read_text())
    doc["config"]["lr"] = 0.5
    doc["config"]["masks"] = "uniform-p0.90-s0"
    (run / "config.json").write_text(json.dumps(doc))
    with pytest.raises(BadInputError) as e:
        resume_config(run, config(data, run, epochs=2), {"epochs"})
    msg = str(e.value)
    assert "config.json was edited" in msg and "lr 0.5 (the checkpoint has 0.003)" in msg
    assert "masks uniform-p0.90-s0 (the checkpoint has uniform-p0.50-s0)" in msg
    # a changeable option edited by hand is taken
    doc["config"].update(lr=0.003, masks="uniform-p0.50-s0", workers=1)
    (run / "config.json").write_text(json.dumps(doc))
    cfg, changed = resume_config(run, config(data, run, epochs=2), {"epochs"})
    assert (cfg.lr, cfg.masks, cfg.workers, cfg.epochs, changed) == (0.003, "uniform-p0.50-s0", 1, 2, ["--epochs 2 (was 1)"])


@pytest.mark.fuzzclass("run tampering")
def test_resume_holds_the_engine_to_the_checkpoint_config(data, tmp_path):
    """Any caller (a sweep re-run, the API) resuming with a fixed option changed is refused by the engine."""
    run = train(config(data, tmp_path / "run", epochs=1))
    with pytest.raises(BadInputError, match=r"--lr 0.5 \(the checkpoint has 0.003\)"):
        train(config(data, run, epochs=2, lr=0.5), resume=True)
    train(config(data, run, epochs=2, workers=1), resume=True)  # changeable: applied
    assert load_checkpoint(run / "last.pt")["config"]["epochs"] == 2


@pytest.mark.fuzzclass("run tampering")
def test_resume_maps_loss_baseline_options_back_and_refuses_a_change(data, tmp_path):
    run = str(tmp_path / "run")
    base = ["train", "llr", str(data), "--masks", "uniform-p0.50-s0", "--backbone", "tiny", "--weights", "none",
            "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--workers", "0", "--out", run, "--no-progress",
            "--val-fraction", "0"]
    assert runner.invoke(app, base).exit_code == 0
    r = runner.invoke(app, ["train", "llr", str(data), "--resume", run, "--variant", "cp", "--delta-rel", "0.3"])
    assert r.exit_code == 1 and "--variant cp (the run has r)" in r.output and "--delta-rel 0.3 (the run has 0.2)" in r.output
    assert load_checkpoint(Path(run) / "last.pt")["epoch"] == 1  # nothing trained


# ---- item 9: a validation split that cannot choose best.pt says so ------------------------------------------------

def one_image_fraction(data) -> float:
    """A --val-fraction that holds out exactly one training image: no class can have a known positive and negative."""
    from mlrpl_data.masks import read_mask

    keys = read_mask(str(data), "uniform-p0.50-s0").keys
    for f in np.arange(0.005, 0.5, 0.005):
        if len(validation_keys(keys, float(f))) == 1:
            return float(f)
    raise AssertionError("no fraction holds out one image")


@pytest.mark.fuzzclass("reported figures")
def test_validation_without_a_defined_map_warns_writes_no_best_and_says_why(data, tmp_path):
    f = one_image_fraction(data)
    run = tmp_path / "run"
    args = ["train", "pbce", str(data), "--masks", "uniform-p0.50-s0", "--backbone", "tiny", "--weights", "none",
            "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--workers", "0", "--out", str(run),
            "--no-progress", "--val-fraction", f"{f:g}"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert f"warning: --val-fraction {f:g} holds out 1 training image(s)" in r.output
    assert "val mAP undefined" in r.output
    assert not (run / "best.pt").exists()
    last = [ln for ln in r.output.splitlines() if ln.startswith(str(run))][-1]
    assert last.startswith(f"{run}: config.json, metrics.csv, metrics_last.json, tb/, last.pt (no best.pt: --val-fraction {f:g}: no evaluated")
    row = list(csv.DictReader(open(run / "metrics.csv")))[0]
    assert row["val_mAP"] == "" and row["best"] == "0"
    r = runner.invoke(app, ["evaluate", str(run), str(data), "--checkpoint", "best", "--workers", "0"])
    assert r.exit_code == 1 and "--val-fraction 0)" not in r.output
    assert f"has no best.pt (--val-fraction {f:g}: no evaluated epoch had a defined validation mAP" in r.output


# ---- item 6: mAP only over classes whose AP means something on the known labels --------------------------------

@pytest.mark.fuzzclass("reported figures")
def test_map_leaves_out_trivial_and_undefined_classes_and_says_so():
    # a: known 1, -1, 1, ranked 0.9(+) 0.8(-) 0.1(+): AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    # b: no known negative (a 0/1 export): AP would be 1 for any scores; c: no known positive
    targets = np.array([[1, 1, 0], [-1, 1, -1], [1, 0, -1]])
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.2, 0.5], [0.1, 0.3, 0.5]])
    m = evaluate_scores(scores, targets, ["a", "b", "c"])
    assert m["mAP"] == pytest.approx(5 / 6)  # including b would make it (5/6 + 1) / 2 = 0.9167
    assert m["classes_evaluated"] == 1 and m["classes"] == 3
    assert m["left_out"] == {"no_known_positive": ["c"], "no_known_negative": ["b"]}
    assert m["per_class_ap"] == {"a": pytest.approx(5 / 6), "b": None, "c": None}
    text = format_metrics(m)
    assert "83.33" in text and "91.67" not in text
    assert ("mAP over 1 of 3 classes; left out: 1 without a known positive (AP undefined) (c); "
            "1 without a known negative (AP trivially 1) (b)") in text


@pytest.mark.fuzzclass("reported figures")
def test_no_class_with_a_known_negative_prints_no_map_figure():
    """A lab CSV exported as 0/1 (no -1): an untrained model scored 100.00 before."""
    targets = np.array([[1, 0], [0, 1], [1, 1]])
    m = evaluate_scores(np.random.default_rng(0).random((3, 2)), targets, ["cat", "dog"])
    assert m["mAP"] is None and m["mAP_voc"] is None and m["classes_evaluated"] == 0
    text = format_metrics(m)
    assert "mAP, plain AP" not in text and "100.00" not in text.split("OP")[0]
    assert "no mAP: none of the 2 classes has both a known positive and a known negative test label" in text
    assert "2 without a known negative (AP trivially 1) (cat, dog)" in text
    json.dumps(m, allow_nan=False)  # eval_metrics.json stays valid JSON


@pytest.mark.fuzzclass("reported figures")
def test_sweep_table_says_over_how_many_classes(tmp_path):
    from mlrpl_train.sweep import write_table

    cols = runlog.METRIC_COLUMNS
    for name, (mAP, scope) in {"pbce-p0.30-s0": (0.5, "2/3"), "pbce-p0.50-s0": ("", "0/3")}.items():
        (tmp_path / name).mkdir()
        with open(tmp_path / name / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerow({k: "" for k in cols} | {"epoch": 1, "mAP": mAP, "mAP_voc": mAP, "OF1": 0.4, "CF1": 0.3,
                                                 "mAP_classes": scope})
    t = write_table(tmp_path)
    text = t["markdown"]
    assert t["files"] == ["table.md", "table.csv", "map_vs_proportion.png", "table.json"]
    assert "| pbce | 50.0 | 50.0 | 40.0 | 30.0 |" in text and "50%" not in text  # the run without a mAP: a note
    assert "pbce-p0.30-s0: mAP over 2 of 3 classes" in text
    assert "pbce-p0.50-s0: no mAP (no class has both a known positive and a known negative test label)" in text


# ---- item 21: no training batch of one, no loader worker without images -----------------------------------------

@pytest.mark.fuzzclass("ranks, workers and batches")
def test_more_workers_than_batches_are_capped_and_every_batch_is_full(tmp_path, monkeypatch, capsys):
    d = tiny_training_set(tmp_path, n_train=14, n_test=4, max_samples=14)
    sizes = []
    real_step = engine.train_step

    def recording(model, batch, *a, **k):
        sizes.append(len(batch["keys"]))
        return real_step(model, batch, *a, **k)

    real_loader, started = engine.make_loader, []

    def loader(sc, workers):
        started.append(("train" if sc.train else "test", workers))
        return real_loader(sc, workers)

    monkeypatch.setattr(engine, "train_step", recording)
    monkeypatch.setattr(engine, "make_loader", loader)
    train(config(d, tmp_path / "run", epochs=1, workers=64, checkpoint_every=0))
    assert sizes == [4, 4, 4]  # 14 images: 3 batches of 4, never a short one
    assert started == [("train", 3), ("test", 1)]  # one process per batch: 4 test images are one batch
    assert "note: --workers 64 lowered to 3 for training" in capsys.readouterr().err


@pytest.mark.fuzzclass("ranks, workers and batches")
def test_batch_of_one_is_refused_before_training(data, tmp_path):
    with pytest.raises(BadInputError, match="--batch-size 1: a training batch of one image"):
        train(config(data, tmp_path / "run", batch_size=1))
    assert not (tmp_path / "run").exists()


@pytest.mark.fuzzclass("ranks, workers and batches")
def test_a_loader_worker_with_no_image_is_an_error_not_a_shorter_epoch(data):
    from mlrpl_data.shards import read_index, shard_urls
    from mlrpl_train.loader import ShardStream, StreamConfig

    from mlrpl_data.masks import read_mask

    urls = shard_urls(str(data), "train", read_index(str(data)))
    every_key = frozenset(read_mask(str(data), "uniform-p0.50-s0").keys)  # all held out: the share is empty
    sc = StreamConfig(urls=urls[:1], num_classes=3, train=True, image_size=16, batch_size=2, exclude=every_key)
    with pytest.raises(BadInputError, match="worker 0 of rank 0 has no image to train on"):
        next(iter(ShardStream(sc)))


@pytest.mark.fuzzclass("reported figures")
def test_evaluate_on_a_lab_csv_exported_as_0_1_prints_no_map(tmp_path):
    """A 0/1 export read with its 0 as unknown (`--zero-means unknown`; the build refuses to guess) has no known
    negative test entry: evaluate printed mAP 100.00 for any model."""
    from conftest import write_jpeg
    from mlrpl_data.csvlabels import CsvConfig, build_csv
    from mlrpl_data.folder import write_manifest
    from mlrpl_data.masks import MaskConfig, make_masks
    from mlrpl_data.shards import ShardConfig, write_shards

    lab = tmp_path / "lab"
    rows = ["path,split,cat,dog"] + [f"img/a{i}.jpg,{'test' if i >= 6 else 'train'},{i % 2},{(i + 1) % 2 if i % 3 else 1}"
                                     for i in range(9)]
    for i in range(9):
        write_jpeg(lab / "img" / f"a{i}.jpg", color=(20 * i, 200 - 20 * i, 90))
    (lab / "labels.csv").write_text("\n".join(rows) + "\n")
    d = tmp_path / "dataset"
    write_manifest(build_csv(CsvConfig(labels=lab / "labels.csv", images=lab, zero_means="unknown", progress=False)), d)
    [(mask, _)] = make_masks(d, MaskConfig(proportions=[0.9]))
    write_shards(d, ShardConfig(max_samples=3, shard_size=None, progress=False))
    run = train(TrainConfig(method="pbce", dataset=str(d), masks=mask.name, out=str(tmp_path / "run"), backbone="tiny",
                            weights="none", epochs=1, batch_size=2, image_size=16, workers=0, progress=False,
                            val_fraction=0.0))
    r = runner.invoke(app, ["evaluate", str(run), str(d), "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert "mAP, plain AP" not in r.output and "mAP, VOC" not in r.output
    assert ("no mAP: none of the 2 classes has both a known positive and a known negative test label; left out: "
            "2 without a known negative (AP trivially 1) (cat, dog)") in r.output
    m = json.loads((run / "eval_metrics.json").read_text())
    assert m["mAP"] is None and m["classes_evaluated"] == 0 and m["per_class_ap"] == {"cat": None, "dog": None}
    row = list(csv.DictReader(open(run / "metrics.csv")))[0]
    assert row["mAP"] == "" and row["mAP_classes"] == "0/2"


@pytest.mark.fuzzclass("reported figures")
def test_a_run_begun_by_an_older_mlrpl_keeps_its_metrics_columns(tmp_path):
    old = [c for c in runlog.METRIC_COLUMNS if c != "mAP_classes"]
    (tmp_path / "metrics.csv").write_text(",".join(old) + "\n")
    m = evaluate_scores(np.array([[0.9], [0.2]]), np.array([[1], [-1]]), ["a"])
    runlog.log_epoch(tmp_path, None, 2, 0.5, 1e-3, 0, 1.0, 1.0, m)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert list(rows[0]) == old and rows[0]["epoch"] == "2" and rows[0]["mAP"] == "1.0" and rows[0]["selection"]
