import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mlrpl_data.errors import AlreadyExistsError, BadInputError
from mlrpl_train import engine
from mlrpl_train.options import TrainConfig
from mlrpl_train.checkpoint import load_checkpoint, load_run_config
from mlrpl_train.engine import TrainingDivergedError, train
from mlrpl_train.reports import evaluate_checkpoint
from mlrpl_train.model.backbone import WeightsError, build_backbone, imagenet_weights_path

from trainkit import tiny_training_set

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_training_set(tmp_path_factory.mktemp("engine"), n_train=40, n_test=12)


def config(data, out, **kw) -> TrainConfig:
    base = dict(method="pbce", dataset=str(data), masks="uniform-p0.50-s0", out=str(out), backbone="tiny", weights="none",
                freeze="none", epochs=2, batch_size=4, lr=3e-3, image_size=32, workers=0, progress=False, shuffle_buffer=8,
                val_fraction=0.0)
    base.update(kw)
    return TrainConfig(**base)


def test_run_directory_holds_everything(data, tmp_path):
    run = train(config(data, tmp_path / "run", epochs=3, lr_step=2))
    for name in ("config.json", "metrics.csv", "last.pt"):
        assert (run / name).exists(), name
    assert not (run / "best.pt").exists()  # no validation split: no best.pt, the last epoch is the result
    assert list((run / "tb").glob("events.out.tfevents.*"))
    doc = json.loads((run / "config.json").read_text())
    assert doc["manifest_fingerprint"] and doc["mask"] == "uniform-p0.50-s0" and doc["config"]["epochs"] == 3
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert float(rows[2]["lr"]) == pytest.approx(3e-4)  # step decay /10 after lr_step epochs
    ckpt = load_checkpoint(run / "last.pt")  # weights_only=True
    assert ckpt["epoch"] == 3 and ckpt["step"] == 0
    # learned something: well above the positive rate
    assert max(float(r["mAP"]) for r in rows) > 0.6


def test_existing_run_needs_resume_or_force(data, tmp_path):
    train(config(data, tmp_path / "run", epochs=1))
    with pytest.raises(AlreadyExistsError, match="--resume"):
        train(config(data, tmp_path / "run", epochs=1))
    train(config(data, tmp_path / "run", epochs=1), force=True)


def test_killed_run_resumes_to_the_same_weights(data, tmp_path, monkeypatch):
    ref = train(config(data, tmp_path / "ref", checkpoint_every=3))
    real_step = engine.train_step
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 14:  # 10 batches per epoch: the 4th step of epoch 2, after its step-3 checkpoint
            raise KeyboardInterrupt
        return real_step(*a, **k)

    monkeypatch.setattr(engine, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        train(config(data, tmp_path / "killed", checkpoint_every=3))
    monkeypatch.setattr(engine, "train_step", real_step)
    mid = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert (mid["epoch"], mid["step"]) == (1, 3)  # the kill came mid-epoch
    train(load_run_config(tmp_path / "killed"), resume=True)
    a, b = load_checkpoint(ref / "last.pt")["model"], load_checkpoint(tmp_path / "killed" / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resuming_a_finished_run_is_a_no_op(data, tmp_path):
    run = train(config(data, tmp_path / "run", epochs=1))
    before = load_checkpoint(run / "last.pt")["model"]
    train(load_run_config(run), resume=True)  # was: UnboundLocalError 'metrics' (a kill after the last save)
    after = load_checkpoint(run / "last.pt")["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(list(csv.DictReader(open(run / "metrics.csv")))) == 1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    real_step = engine.train_step
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        loss, logs = real_step(*a, **k)
        return (float("nan"), logs) if calls["n"] == 13 else (loss, logs)

    monkeypatch.setattr(engine, "train_step", poisoned)
    with pytest.raises(TrainingDivergedError, match="loss is nan at epoch 2, step 3"):
        train(config(data, tmp_path / "run"))
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_evaluate_writes_table_json_png_and_scores(data, tmp_path):
    import pyarrow.parquet as pq

    run = train(config(data, tmp_path / "run", epochs=1))
    m = evaluate_checkpoint(run, str(data), tmp_path / "report", workers=0, scores=tmp_path / "scores.parquet")
    assert m["keys_evaluated"] == 12 and m["checkpoint"]["selection"] == "none: the last epoch"
    t = pq.read_table(tmp_path / "scores.parquet").to_pydict()
    assert len(t["key"]) == 12 and len(t["scores"][0]) == 3 and set(t["labels"][0]) <= {-1, 1}
    from mlrpl_train.metrics import evaluate_scores

    again = evaluate_scores(np.array(t["scores"]), np.array(t["labels"]))  # any metric, without the model
    assert again["mAP"] == pytest.approx(m["mAP"]) and again["mAP_voc"] == pytest.approx(m["mAP_voc"])
    with pytest.raises(BadInputError, match="has no best.pt"):
        evaluate_checkpoint(run, str(data), tmp_path / "report", workers=0, checkpoint="best")
    assert json.loads((tmp_path / "report/per_class_ap.json").read_text()).keys() == {"person", "car", "train"}
    assert (tmp_path / "report/per_class_ap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_imagenet_weights_come_from_the_local_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.hub.set_dir(str(tmp_path / "torch" / "hub"))
    try:
        with pytest.raises(WeightsError, match="not in the local torch cache"):
            build_backbone("resnet18", "imagenet")
        path, url = imagenet_weights_path("resnet18")
        import torchvision

        ref = torchvision.models.resnet18(weights=None)
        path.parent.mkdir(parents=True)
        torch.save(ref.state_dict(), path)
        net = build_backbone("resnet18", "imagenet")
        assert torch.equal(net.layer4[0].conv1.weight, ref.layer4[0].conv1.weight)
        torch.save({"something": torch.zeros(1)}, tmp_path / "bad.pth")
        with pytest.raises(WeightsError, match="does not fit"):
            build_backbone("resnet18", str(tmp_path / "bad.pth"))
    finally:
        torch.hub.set_dir(str(Path.home() / ".cache" / "torch" / "hub"))


def test_frozen_layers_keep_batchnorm_in_eval(data, tmp_path):
    from mlrpl_train.data import resolve_data
    from mlrpl_train.model.factory import build_model

    spec = resolve_data(str(data), "uniform-p0.50-s0")
    model = build_model(config(data, tmp_path, freeze="layer3"), spec).train()
    assert not model.backbone.layer3[1].training and model.backbone.layer4[1].training
    assert not any(p.requires_grad for p in model.backbone.layer3.parameters())


@pytest.mark.parametrize("method", ["pbce", "dsrb"])
def test_two_process_ddp_with_gloo(data, tmp_path, method):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    extra = ["--feat-dim", "16", "--blend-start", "1", "--prototype-every", "1"] if method == "dsrb" else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mlrpl.cli", "train", method,
           str(data), "--masks", "uniform-p0.50-s0", "--backbone", "tiny", "--weights", "none", "--freeze", "none",
           "--epochs", "2", "--batch-size", "4", "--image-size", "32", "--workers", "1", "--out", str(out), "--no-progress",
           *extra]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((out / "metrics_last.json").read_text())
    assert metrics["keys_evaluated"] == 12  # every test image once across the two ranks
    assert len(list(csv.DictReader(open(out / "metrics.csv")))) == 2


def test_validation_keys_are_a_stable_hash_of_the_key_alone():
    from mlrpl_train.data import validation_keys

    keys = [f"coco2014_train_{i:012d}" for i in range(20000)]
    val = validation_keys(keys, 0.1)
    assert abs(len(val) / len(keys) - 0.1) < 0.01
    assert validation_keys(list(reversed(keys)), 0.1) == val  # order does not matter
    assert validation_keys(keys[:5000], 0.1) == {k for k in val if k in set(keys[:5000])}  # nor other images
    assert validation_keys(keys, 0.05) < val  # nested across fractions
    assert validation_keys(keys, 0.0) == frozenset()


def test_training_never_sees_the_validation_images_and_validation_sees_each_once(data):
    from mlrpl_train import dist as D
    from mlrpl_train.data import resolve_data
    from mlrpl_train.engine import stream_config
    from mlrpl_train.loader import make_loader

    spec = resolve_data(str(data), "uniform-p0.50-s0", val_fraction=0.25)
    assert 0 < len(spec.val_keys) < spec.train_samples and spec.fit_samples == spec.train_samples - len(spec.val_keys)
    cfg = config(data, "x", val_fraction=0.25)
    seen = set()
    for batch in zip(range(30), make_loader(stream_config(cfg, spec, D.DistInfo(), "train"), 0)):
        seen |= set(batch[1]["keys"])
    assert seen and not (seen & spec.val_keys)
    val_keys, partial_rows = [], []
    for batch in make_loader(stream_config(cfg, spec, D.DistInfo(), "val"), 0):
        val_keys += batch["keys"]
        partial_rows += [tuple(r) for r in batch["partial"].tolist()]
    assert sorted(val_keys) == sorted(spec.val_keys)  # each once
    assert partial_rows == [tuple(spec.partial[k].tolist()) for k in val_keys]  # judged on the mask's labels


@pytest.mark.parametrize("select", ["val", "test-as-published"])
def test_best_pt_follows_the_selection_rule_and_nothing_else(data, tmp_path, monkeypatch, select):
    """Test scores are made to peak at epoch 2 and validation scores at epoch 3: best.pt must follow
    validation unless the published practice is asked for by name."""
    real = engine.evaluate_model

    def rigged(core, cfg, spec, info, device, progress=False, role="test", scores_out=None):
        m = real(core, cfg, spec, info, device, progress, role, scores_out)
        epoch = rigged.calls[role] = rigged.calls.get(role, 0) + 1
        m["mAP"] = {"test": [0.5, 0.9, 0.6], "val": [0.4, 0.5, 0.7]}[role][epoch - 1]
        return m

    rigged.calls = {}
    monkeypatch.setattr(engine, "evaluate_model", rigged)
    run = train(config(data, tmp_path / "run", epochs=3, val_fraction=0.25, select=select))
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    best_epoch = max(int(r["epoch"]) for r in rows if r["best"] == "1")
    ckpt = load_checkpoint(run / "best.pt")
    if select == "val":
        assert best_epoch == 3 and ckpt["epoch"] == 3 and ckpt["selection"].startswith("best validation mAP")
        assert [float(r["val_mAP"]) for r in rows] == [0.4, 0.5, 0.7]
    else:
        assert best_epoch == 2 and ckpt["epoch"] == 2 and "selected on the test set" in ckpt["selection"]
        assert all("selected on the test set" in r["selection"] for r in rows)  # every output says so
    monkeypatch.setattr(engine, "evaluate_model", real)
    m = evaluate_checkpoint(run, str(data), tmp_path / "rep", workers=0, checkpoint="best")
    assert m["checkpoint"]["epoch"] == best_epoch and m["checkpoint"]["selection"] == ckpt["selection"]
    from mlrpl_train.metrics import format_metrics

    table = format_metrics(m)
    assert f"epoch {best_epoch} of 3" in table and ckpt["selection"] in table
    assert "mAP, plain AP (= scikit-learn)" in table and "mAP, VOC-interpolated (published code)" in table


@pytest.mark.fuzzclass("ranks, workers and batches")
def test_held_out_keys_per_shard_come_from_the_index_and_match_the_shards(data):
    import tarfile

    from mlrpl_train.data import resolve_data

    spec = resolve_data(str(data), "uniform-p0.50-s0", val_fraction=0.3)
    truth = []
    for url in spec.train_urls:
        with tarfile.open(url) as t:
            truth.append(sum(m.name[:-5] in spec.val_keys for m in t.getmembers() if m.name.endswith(".json")))
    assert spec.train_held == truth and sum(truth) == len(spec.val_keys) > 0
    assert spec.fit_counts() == ([c - h for c, h in zip(spec.train_counts, truth)], 0)


@pytest.fixture(scope="module")
def empty_shard_data(tmp_path_factory):
    """41 training images in shards of 40: the second shard's one image is corrupt and skipped, so
    train-000001.tar holds no sample (the layout that left a rank with nothing to train on)."""
    from mlrpl_data.shards import ShardConfig, read_index, write_shards

    d = tiny_training_set(tmp_path_factory.mktemp("empty"), n_train=41, n_test=12, max_samples=40)
    index = read_index(str(d))
    lone = next(s["first_key"] for s in index["shards"] if s["name"] == "train-000001.tar")
    (d.parent / "raw" / "train2014" / f"COCO_train2014_{int(lone.rsplit('_', 1)[1]):012d}.jpg").write_bytes(b"not a jpeg")
    write_shards(d, ShardConfig(split="all", shard_size=None, max_samples=40, progress=False, on_bad_image="skip"))
    assert [s["samples"] for s in read_index(str(d))["shards"] if s["split"] == "train"] == [40, 0]
    return d


@pytest.mark.fuzzclass("ranks, workers and batches")
def test_two_processes_with_an_empty_shard_train_on_equal_shares(empty_shard_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mlrpl.cli", "train",
           "pbce", str(empty_shard_data), "--masks", "uniform-p0.50-s0", "--backbone", "tiny", "--weights", "none",
           "--freeze", "none", "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--workers", "1",
           "--val-fraction", "0", "--out", str(out), "--no-progress"]
    r = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "metrics_last.json").read_text())["keys_evaluated"] == 12
    assert load_checkpoint(out / "last.pt")["global_step"] == 5  # 40 samples // (2 ranks x 4): 5 batches on each rank
