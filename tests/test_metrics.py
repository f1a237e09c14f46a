import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from mlrpl_train.metrics import (average_precision, evaluate_scores, threshold_metrics, topk_metrics,
                                 voc_average_precision)


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
