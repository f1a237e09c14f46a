import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from mlrpl_train.metrics import (Metric, average_precision, coverage, evaluate_scores, exact_match, format_metrics,
                                 get_metric, hamming_loss, jaccard, one_error, ranking_loss, register,
                                 threshold_metrics, topk_metrics, voc_average_precision)


def test_plain_ap_equals_sklearn_with_and_without_ties():
    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(5, 60))
        y = np.where(rng.random(n) < 0.3, 1, -1)
        y[0] = 1
        s = rng.random(n)
        if trial % 2:
            s = np.round(s, 1)  # many ties
        assert average_precision(s, y) == pytest.approx(average_precision_score(y > 0, s))


def test_hand_computed_cases():
    # ranking: +, -, +  -> P@1 = 1, P@3 = 2/3 -> AP = (1 + 2/3) / 2
    s, y = np.array([0.9, 0.8, 0.7]), np.array([1, -1, 1])
    assert average_precision(s, y) == pytest.approx((1 + 2 / 3) / 2)
    assert voc_average_precision(s, y) == pytest.approx((1 + 2 / 3) / 2)
    # interpolation lifts precision: -, +, +  -> plain (1/2 + 2/3)/2, VOC envelope 2/3 for both
    s, y = np.array([0.9, 0.8, 0.7]), np.array([-1, 1, 1])
    assert average_precision(s, y) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert voc_average_precision(s, y) == pytest.approx(2 / 3)


def test_ties_are_deterministic_and_ignored_entries_skipped():
    s = np.array([0.5, 0.5, 0.5, 0.1])
    y = np.array([1, -1, 1, -1])
    assert voc_average_precision(s, y) == voc_average_precision(s.copy(), y.copy())
    y0 = np.array([1, 0, 1, -1])  # the 0 entry is not counted as a negative
    assert average_precision(s, y0) == pytest.approx(1.0)


def test_map_skips_classes_without_positive_and_f1():
    targets = np.array([[1, -1, -1], [-1, 1, -1], [1, 1, -1]])
    scores = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.2], [0.7, 0.6, 0.4]])
    m = evaluate_scores(scores, targets, ["a", "b", "c"])
    assert m["classes_evaluated"] == 2 and m["mAP"] == pytest.approx(1.0) and m["per_class_ap"]["c"] is None
    assert m["OP"] == 1.0 and m["OR"] == 1.0 and m["OF1"] == 1.0 and m["CF1"] == 1.0
    t = threshold_metrics(np.array([[0.9, 0.9]]), np.array([[1, -1]]))
    assert t["OP"] == 0.5 and t["OR"] == 1.0 and t["OF1"] == pytest.approx(2 / 3)
    k = topk_metrics(np.array([[0.9, 0.8, 0.1, 0.0]]), np.array([[1, -1, 1, -1]]), k=2)
    assert k["OP"] == 0.5 and k["OR"] == 0.5


# ---- the partial-label metrics (mlcpl's), each on a hand-worked case -------------------------------------------------
# 3 images x 3 classes; 0 = unknown. Known entries, by image (score, label):
#   img0: c0 (.9, +)  c1 (.1, -)             [c2 .85 unknown]
#   img1: c0 (.7, -)  c1 (.45, +)  c2 (.3, -)
#   img2: c0 (.25, +)              c2 (.5, +) [c1 .95 unknown]
# No score sits on a 1/15 bin edge (ECE). WRONG = the same labels with every unknown taken as a negative: each
# metric must give its own number on TARGETS and a different one on WRONG.
TARGETS = np.array([[1, -1, 0], [-1, 1, -1], [1, 0, 1]])
WRONG = np.where(TARGETS == 0, -1, TARGETS)
SCORES = np.array([[0.9, 0.1, 0.85], [0.7, 0.45, 0.3], [0.25, 0.95, 0.5]])

HAND = {
    # per-class AUC: c0 pos {.9, .25} vs neg {.7}: 1 of 2 pairs right = 1/2; c1 .45 > .1: 1; c2 .5 > .3: 1
    "auroc": (5 / 6, 1 / 2),  # WRONG: c1 .45 vs {.1, .95} 1/2, c2 .5 vs {.3, .85} 1/2
    # pooled known ranking .9+ .7- .5+ .45+ .3- .25+ .1-: precision at each positive 1, 2/3, 3/4, 4/6
    "micro_ap": (37 / 48, (1 / 2 + 2 / 5 + 3 / 6 + 4 / 8) / 4),
    # per-class AP c0 (1 + 2/3)/2 = 5/6, c1 1, c2 1; weights = known positives 2, 1, 1
    "weighted_ap": ((2 * 5 / 6 + 1 + 1) / 4, (2 * 5 / 6 + 1 / 2 + 1 / 2) / 4),
    # img0 0 of 1 pair wrong, img1 1 of 2 (.7- above .45+), img2 no known negative: left out
    "ranking_loss": (1 / 4, (0 + 1 / 2 + 1) / 3),
    # known labels at or above the lowest known positive: img0 1, img1 2 (.7, .45), img2 2
    "coverage": (5 / 3, (1 + 2 + 3) / 3),
    # top known label a negative: img0 no (.9+), img1 yes (.7-); img2 has no known negative: left out
    "one_error": (1 / 2, 2 / 3),
    # predicted at >= .5: wrong are img1 c0, img1 c1, img2 c0 (img2 c2 at exactly .5 is predicted: right) of 7
    "hamming_loss": (3 / 7, 5 / 9),
    # every known label right: img0 only
    "exact_match": (1 / 3, 0.0),
    # per class TP/(TP+FP+FN): c0 1/3 (TP img0, FP img1, FN img2), c1 0/1 (FN img1), c2 1/1
    "jaccard": ((1 / 3 + 0 + 1) / 3, (1 / 3 + 0 + 1 / 2) / 3),
    # per class, one entry per bin: c0 (|1-.9| + |0-.7| + |1-.25|)/3, c1 (.1 + .55)/2, c2 (.3 + .5)/2
    "ece": ((1.55 / 3 + 0.65 / 2 + 0.8 / 2) / 3, (1.55 / 3 + 1.6 / 3 + 1.65 / 3) / 3),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_each_new_metric_on_the_hand_worked_case_counts_no_unknown(name):
    fn = get_metric(name).fn
    right, wrong = HAND[name]
    assert fn(SCORES, TARGETS) == pytest.approx(right, abs=1e-7)  # torchmetrics' counts divide in float32
    assert fn(SCORES, WRONG) == pytest.approx(wrong, abs=1e-7)
    assert abs(right - wrong) > 0.05  # counting the unknowns as negatives would show


def test_the_hand_worked_case_in_the_report_and_the_table():
    m = evaluate_scores(SCORES, TARGETS, ["a", "b", "c"])
    assert m["mAP"] == pytest.approx((5 / 6 + 1 + 1) / 3) and m["weighted_ap"] == pytest.approx(11 / 12)
    assert {k: m[k] for k in HAND} == pytest.approx({k: v[0] for k, v in HAND.items()})
    text = format_metrics(m)
    assert "ranking loss                                 25.00" in text
    assert "coverage (labels)                             1.67" in text  # a count, not x 100


def test_what_the_known_labels_cannot_judge_is_none():
    only_pos = np.array([[1, 0], [1, 1]])  # no known negative anywhere
    s = np.array([[0.2, 0.9], [0.6, 0.4]])
    for name in ("auroc", "micro_ap", "weighted_ap", "ranking_loss", "one_error"):
        assert get_metric(name).fn(s, only_pos) is None, name
    assert coverage(s, only_pos) == pytest.approx((1 + 2) / 2)  # a positive is all coverage needs
    unknown = np.zeros((2, 2), dtype=int)
    for name in HAND:
        assert get_metric(name).fn(s, unknown) is None, name
    json.dumps(evaluate_scores(s, unknown), allow_nan=False)


def test_ties_count_against_the_ranking_as_scikit_learn_counts_them():
    from sklearn.metrics import coverage_error, label_ranking_loss

    rng = np.random.default_rng(1)
    y = np.where(rng.random((40, 6)) < 0.4, 1, -1)
    y[:, 0], y[:, 1] = 1, -1  # every image has a positive and a negative: no image left out
    s = np.round(rng.random((40, 6)), 1)  # many ties
    assert ranking_loss(s, y) == pytest.approx(label_ranking_loss(y > 0, s))
    assert coverage(s, y) == pytest.approx(coverage_error(y > 0, s))
    assert one_error(np.array([[0.5, 0.5]]), np.array([[1, -1]])) == 1.0  # a tie at the top is an error


def test_thresholded_metrics_equal_scikit_learn_on_full_labels():
    from sklearn.metrics import accuracy_score, hamming_loss as sk_hamming, jaccard_score

    rng = np.random.default_rng(2)
    y = np.where(rng.random((50, 5)) < 0.4, 1, -1)
    y[0] = 1
    s = rng.random((50, 5))
    pred = s >= 0.5
    assert hamming_loss(s, y) == pytest.approx(sk_hamming(y > 0, pred))
    assert exact_match(s, y) == pytest.approx(accuracy_score(y > 0, pred))
    assert jaccard(s, y) == pytest.approx(jaccard_score(y > 0, pred, average="macro"))


def test_agrees_with_mlcpl_on_random_scores_with_unknowns():
    pytest.importorskip("mlcpl.metrics", reason="mlcpl (the peer toolkit) is not installed: pip install mlcpl")
    import torch
    from mlcpl.metrics import functional as F

    rng = np.random.default_rng(3)
    t = rng.choice([-1, 0, 1], size=(300, 7), p=[0.5, 0.2, 0.3])
    s = rng.random((300, 7))
    # mlcpl: unknown = NaN, negative = 0; its scores are logits (it applies the sigmoid itself)
    target = torch.from_numpy(np.where(t == 0, np.nan, (t == 1).astype(float)))
    logits = torch.from_numpy(np.log(s / (1 - s)))
    m = evaluate_scores(s, t)
    theirs = {"mAP": F.partial_multilabel_average_precision(logits, target, average="macro"),
              "auroc": F.partial_multilabel_auroc(logits, target, average="macro"),
              "micro_ap": F.partial_multilabel_average_precision(logits, target, average="micro"),
              "weighted_ap": F.partial_multilabel_average_precision(logits, target, average="weighted"),
              "hamming_loss": F.partial_multilabel_hamming_distance(logits, target, average="micro"),
              "exact_match": F.partial_multilabel_exact_match(logits, target),
              "jaccard": F.partial_multilabel_jaccard_index(logits, target, average="macro"),
              "ece": F.partial_multilabel_expected_calibration_error(logits, target, n_bins=15, average="macro")}
    for k, v in theirs.items():
        assert m[k] == pytest.approx(float(v), abs=1e-6), k
    # ranking loss: mlcpl (like scikit-learn) counts an image without a (known positive, known negative) pair as 0
    pairs = ((t == 1).any(axis=1) & (t == -1).any(axis=1)).sum()
    assert pairs < len(t)  # the difference is exercised
    assert m["ranking_loss"] * pairs / len(t) == pytest.approx(float(F.partial_multilabel_ranking_loss(logits, target)),
                                                               abs=1e-6)


# ---- the registry: one entry reaches evaluate's report, metrics.csv, TensorBoard and sweep -----------------------------

def test_a_registered_metric_reaches_the_report_metrics_csv_and_the_tables(tmp_path, monkeypatch):
    import csv

    from mlrpl_train import metrics, runlog
    from mlrpl_train.engine import train
    from mlrpl_train.reports import evaluate_checkpoint
    from mlrpl_train.options import TrainConfig
    from mlrpl_train.sweep import final_metrics

    from trainkit import tiny_training_set

    toy = Metric("test_images", lambda s, t: float(len(s)), False, "test images (toy)", "how many test images",
                 "a test", percent=False)
    monkeypatch.setattr(metrics, "METRICS", [*metrics.METRICS])
    register(toy)
    with pytest.raises(ValueError, match="'TEST_images': a metric of that name is already registered"):
        register(Metric("TEST_images", toy.fn, True, "", "", ""))
    data = tiny_training_set(tmp_path, n_train=16, n_test=12)
    run = train(TrainConfig(method="pbce", dataset=str(data), masks="uniform-p0.50-s0", out=str(tmp_path / "pbce-p0.50-s0"),
                            backbone="tiny", weights="none", freeze="none", epochs=1, batch_size=4, image_size=32,
                            workers=0, progress=False, shuffle_buffer=8, val_fraction=0.0))
    with open(run / "metrics.csv", newline="") as f:
        header, row = next(csv.reader(f)), next(csv.DictReader(open(run / "metrics.csv", newline="")))
    new = [m.name for m in metrics.per_epoch_metrics() if m.name not in runlog.METRIC_COLUMNS]
    assert header == runlog.METRIC_COLUMNS + new and new[-1] == "test_images"  # appended: old columns keep places
    assert new[:3] == ["auroc", "micro_ap", "weighted_ap"] and float(row["test_images"]) == 12.0
    assert float(row["ranking_loss"]) >= 0 and row["mAP"]
    assert final_metrics(run)["test_images_best_on_test"] == 12.0  # lower is better: the min over epochs
    m = evaluate_checkpoint(run, str(data), tmp_path / "report", workers=0)
    assert m["test_images"] == 12.0
    assert json.loads((tmp_path / "report" / "eval_metrics.json").read_text())["test_images"] == 12.0
    assert f"{'test images (toy)':<42}{'12.00':>8}" in format_metrics(m)


def test_sweep_best_epoch_follows_each_metrics_direction_and_old_runs_still_read(tmp_path):
    import csv

    from mlrpl_train.runlog import METRIC_COLUMNS
    from mlrpl_train.sweep import final_metrics, write_table

    run = tmp_path / "pbce-p0.50-s0"
    run.mkdir()
    cols = METRIC_COLUMNS + ["ranking_loss", "auroc"]
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for epoch, (mAP, rl, auc) in enumerate([(0.6, 0.1, 0.9), (0.5, 0.3, 0.7)], 1):
            w.writerow({k: "" for k in cols} | {"epoch": epoch, "mAP": mAP, "mAP_voc": mAP, "OF1": 0.4, "CF1": 0.3,
                                                 "ranking_loss": rl, "auroc": auc})
    f = final_metrics(run)
    assert f["ranking_loss"] == 0.3 and f["ranking_loss_best_on_test"] == 0.1  # min: lower is better
    assert f["auroc"] == 0.7 and f["auroc_best_on_test"] == 0.9 and f["mAP_best_on_test"] == 0.6
    assert "coverage" not in f  # a run without that column (an older mlrpl) simply lacks it
    t = write_table(tmp_path, metric="ranking_loss", best_on_test=True)
    assert "| pbce | 30.0 | 30.0 | 40.0 | 30.0 | 10.0 |" in t["markdown"]
    assert "ranking_loss: mis-ranked (positive, negative) pairs per image (lower is better)." in t["markdown"]
    with open(tmp_path / "table.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert float(row["avg_ranking_loss_best_on_test"]) == 0.1 and "avg_coverage" not in row


@pytest.mark.parametrize("name", ["", "a,b", "2x", "lr", "epoch", "images", "checkpoint", "val_mAP", "IMAGES",
                                  "mAP_best_on_test", "mAP"])
def test_register_refuses_a_name_that_would_overwrite_a_report_key_or_a_csv_column(name):
    from mlrpl_train.metrics import Metric, registered, register

    before = [m.name for m in registered()]
    with pytest.raises(ValueError, match=repr(name)):
        register(Metric(name, lambda s, t: 0.5, True, "", "", ""))
    assert [m.name for m in registered()] == before


def test_reserved_names_cover_every_bookkeeping_column_of_metrics_csv():
    from mlrpl_train.metrics import RESERVED_NAMES, registered
    from mlrpl_train.runlog import METRIC_COLUMNS

    metric_names = {m.name for m in registered()}
    assert set(METRIC_COLUMNS) - metric_names <= RESERVED_NAMES
    assert not RESERVED_NAMES & metric_names
