"""The loss baselines (ASL, Large Loss Matters) against cases worked out by hand, and on the engine."""

import json
import math

import pytest
import torch

from mlrpl_train.losses import asymmetric_loss, large_loss


def test_asl_by_hand():
    # known positive at p = 0.5 and 0.8 (gamma+ = 0: plain -log p); known negative at p = 0.5: the shifted
    # 1 - p_m = 0.55 weighted by 0.45^4; at p = 0.2: 0.85 weighted by 0.15^4; unknown entries: nothing
    logits = torch.tensor([[0.0, 0.0, 5.0], [math.log(4), math.log(0.25), -3.0]], requires_grad=True)
    targets = torch.tensor([[1, -1, 0], [1, -1, 0]], dtype=torch.int8)
    loss = asymmetric_loss(logits, targets)
    want = 0.6931471806 + 0.45**4 * -math.log(0.55) + 0.2231435513 + 0.15**4 * -math.log(0.85)
    assert float(loss.detach()) == pytest.approx(0.9408880606, abs=1e-7) == pytest.approx(want, abs=1e-9)
    loss.backward()
    # the focusing weights carry no gradient: d/dx = w * p(1-p)/(1-p_m) for a negative, -(1-p) for a positive
    assert float(logits.grad[0, 0]) == pytest.approx(-0.5, abs=1e-6)
    assert float(logits.grad[0, 1]) == pytest.approx(0.45**4 * 0.25 / 0.55, abs=1e-7)  # 0.0186392
    assert float(logits.grad[0, 2]) == 0.0 and float(logits.grad[1, 2]) == 0.0
    # an easy negative (p below the clip) gives exactly nothing
    assert float(asymmetric_loss(torch.tensor([[-4.0]]), torch.tensor([[-1]]))) == 0.0


LOGITS = torch.tensor([[2.0, 3.0, -1.0], [0.5, 0.0, 1.0]])
TARGETS = torch.tensor([[1, 0, 0], [0, -1, 0]], dtype=torch.int8)


def test_large_loss_rejection_and_correction_by_hand():
    # epoch 0: the mean of BCE with every unknown as a negative
    loss, chosen = large_loss(LOGITS, TARGETS, epoch=0, delta_rel=0.2)
    assert float(loss) == pytest.approx(1.0782104837, abs=1e-7) and not chosen.any()
    # epoch 1: k = ceil(6 * 0.2) = 2 largest UNKNOWN losses, (0, 1) = 3.049 and (1, 2) = 1.313; the known
    # negative (1, 1) = 0.693 is larger than (0, 2) but never a candidate
    loss, chosen = large_loss(LOGITS, TARGETS, epoch=1, delta_rel=0.2, variant="r")
    assert chosen.tolist() == [[False, True, False], [False, False, True]]
    assert float(loss) == pytest.approx(0.3512356439, abs=1e-7)
    loss, _ = large_loss(LOGITS, TARGETS, epoch=1, delta_rel=0.2, variant="ct")  # those two as positives
    assert float(loss) == pytest.approx(0.4115438171, abs=1e-7)


def test_permanent_correction_is_remembered_and_checkpointed():
    from mlrpl_train.model.pbce import Corrections

    c = Corrections()
    _, chosen = large_loss(LOGITS, TARGETS, epoch=1, delta_rel=0.2, variant="cp")  # cp: k = ceil(6 * 0.2) at any epoch
    c.record(["a", "b"], chosen)
    assert c.table == {"a": [1], "b": [2]}
    moved = c.apply(["b", "x", "a"], torch.zeros(3, 3, dtype=torch.int8))
    assert moved.tolist() == [[0, 0, 1], [0, 0, 0], [0, 1, 0]]
    d = Corrections()
    d.load_state_dict(c.state_dict())
    assert d.table == c.table


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from trainkit import tiny_training_set

    return tiny_training_set(tmp_path_factory.mktemp("baselines"), n_train=32, n_test=8)


@pytest.mark.parametrize("method,extra", [("asl", {}), ("llr", {"variant": "ct"}), ("llr", {"variant": "cp"})])
def test_baselines_train(data, tmp_path, method, extra):
    from mlrpl_train.checkpoint import load_checkpoint
    from mlrpl_train.engine import train
    from mlrpl_train.options import BaselineOptions, TrainConfig

    cfg = TrainConfig(method=method, dataset=str(data), masks="uniform-p0.50-s0", out=str(tmp_path / "run"),
                      backbone="tiny", weights="none", freeze="none", epochs=3, batch_size=4, lr=3e-3, image_size=32,
                      workers=0, progress=False, shuffle_buffer=8, val_fraction=0.0,
                      baselines=BaselineOptions(delta_rel=5.0, **extra))
    run = train(cfg)
    ckpt = load_checkpoint(run / "last.pt")
    if extra.get("variant") == "cp":  # 5% of 4 x 3 entries per batch made positive for good, from epoch 2
        table = ckpt["model"]["corrections._extra_state"]
        assert 8 <= sum(len(v) for v in table.values()) <= 16  # 8 batches x 1 entry, minus repeats
    import csv

    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 3 and all(float(r["train_loss"]) == float(r["train_loss"]) for r in rows)
    assert float(rows[-1]["mAP"]) > 0.6  # it learns (chance is about 0.45)


def test_sweep_runs_a_baseline(data, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    r = CliRunner().invoke(app, ["sweep", "llr", str(data), "--proportions", "0.5", "--seeds", "0", "--out",
                                 str(tmp_path / "sw"), "--backbone", "tiny", "--weights", "none", "--epochs", "2",
                                 "--batch-size", "4", "--image-size", "32", "--workers", "0", "--no-progress",
                                 "--variant", "ct", "--delta-rel", "1"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "sw" / "llr-p0.50-s0" / "config.json").read_text())["config"]
    assert cfg["baselines"]["variant"] == "ct" and cfg["baselines"]["delta_rel"] == 1.0
    assert "| llr |" in (tmp_path / "sw" / "table.md").read_text()
