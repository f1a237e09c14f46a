"""Multi-label metrics over the KNOWN test labels, each declared once in the registry (METRICS).

`targets` are (N, C) in {-1, 0, 1}: 1 a known positive, -1 a known negative, 0 unknown and never
counted (neither as a negative nor as a positive). `scores` are (N, C) probabilities, the sigmoid
of the logits as evaluation gives them (any monotone score for AP); a label is predicted present at
probability >= THRESHOLD (0.5), the rule of OP/OR/OF1 and CP/CR/CF1.

Each metric leaves out what the known labels cannot judge, as mAP does: mAP averages over the
classes with a known positive (else AP is undefined) and a known negative (else AP is 1 whatever
the scores) and names the others as left out; the other metrics' descriptions say what they skip.

A new metric is one `register(Metric(...))`, or one entry of METRICS below: `mlrpl evaluate`'s
report and table, metrics.csv's columns and TensorBoard, and `sweep --metric` read the registry.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

THRESHOLD = 0.5  # probability at or above which a label is predicted present
ECE_BINS = 15


def _ranked(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by descending score; ties keep input order (deterministic)."""
    order = np.argsort(-scores, kind="stable")
    return scores[order], labels[order]


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Plain AP = sum_n (R_n - R_{n-1}) P_n over distinct thresholds: equals sklearn's average_precision_score."""
    keep = labels != 0
    s, y = _ranked(scores[keep].astype(np.float64), labels[keep] > 0)
    if y.sum() == 0:
        return float("nan")
    tp = np.cumsum(y)
    # one operating point per distinct score: the last index of each tie group
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp_at, n_at = tp[last], last + 1
    precision = tp_at / n_at
    recall = tp_at / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def voc_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """VOC-style AP as the published SSGRL/HCP code reports it: interpolated precision envelope,
    area under it over the ranked list (ties broken by input order)."""
    keep = labels != 0
    _, y = _ranked(scores[keep].astype(np.float64), labels[keep] > 0)
    npos = y.sum()
    if npos == 0:
        return float("nan")
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    mrec = np.r_[0.0, rec, 1.0]
    mpre = np.r_[0.0, prec, 0.0]
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def per_class_ap(scores: np.ndarray, targets: np.ndarray, voc: bool = False) -> np.ndarray:
    fn = voc_average_precision if voc else average_precision
    return np.array([fn(scores[:, c], targets[:, c]) for c in range(targets.shape[1])])


def _prf(tp: np.ndarray, pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Overall and per-class precision/recall/F1 from per-class counts (eq. 17-19)."""
    op = tp.sum() / max(pred.sum(), 1)
    orr = tp.sum() / max(gt.sum(), 1)
    valid = gt > 0
    cp = np.mean(np.where(pred[valid] > 0, tp[valid] / np.maximum(pred[valid], 1), 0.0)) if valid.any() else 0.0
    cr = np.mean(tp[valid] / gt[valid]) if valid.any() else 0.0
    f1 = lambda p, r: 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"OP": float(op), "OR": float(orr), "OF1": float(f1(op, orr)),
            "CP": float(cp), "CR": float(cr), "CF1": float(f1(cp, cr))}


def threshold_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float = THRESHOLD) -> dict[str, float]:
    known = targets != 0
    pred = (scores >= threshold) & known
    gt = (targets == 1)
    tp = (pred & gt).sum(axis=0)
    return _prf(tp, pred.sum(axis=0), gt.sum(axis=0))


def topk_metrics(scores: np.ndarray, targets: np.ndarray, k: int = 3) -> dict[str, float]:
    """The top-k variants: an image predicts its k highest-scoring classes (ignored entries excluded)."""
    s = np.where(targets != 0, scores, -np.inf)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    pred = np.zeros_like(targets, dtype=bool)
    np.put_along_axis(pred, top, True, axis=1)
    pred &= targets != 0
    gt = targets == 1
    tp = (pred & gt).sum(axis=0)
    return _prf(tp, pred.sum(axis=0), gt.sum(axis=0))


def ap_classes(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counted, no known positive, no known negative) per class: AP is undefined without a known
    positive and 1 for any scores without a known negative (a 0/1 export whose 0 meant absent)."""
    pos, neg = (targets == 1).sum(axis=0), (targets == -1).sum(axis=0)
    return (pos > 0) & (neg > 0), pos == 0, (pos > 0) & (neg == 0)


# ---- the metrics labs report for partial labels (mlcpl's), over the known entries --------------------------------

def _tm():
    """torchmetrics' functional classification module, imported on first use (2-3 s: not at every CLI start)."""
    import torchmetrics.functional.classification as tmf

    return tmf


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """torchmetrics' calls here are many and small (one per class): on one thread they take a twentieth of
    the time they take contending for every core (AUROC on (5000, 80): 0.06 s against 1.2 s on a busy
    2-core machine). The process's setting is restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_MEMO: contextvars.ContextVar[dict | None] = contextvars.ContextVar("mlrpl_metrics_memo", default=None)


def _shared(fn: Callable) -> Callable:
    """`fn` computed once per evaluate_scores call for the same arguments: several metrics take the same
    per-class AP, F1 family, top-k family or label tensors (unshared, evaluation took 4x as long). Keyed by
    the arrays' identity, which holds while evaluate_scores keeps them; outside it, `fn` as is."""
    @functools.wraps(fn)
    def once(*args):
        memo = _MEMO.get()
        if memo is None:
            return fn(*args)
        key = (fn.__name__, *(id(a) if isinstance(a, np.ndarray) else a for a in args))
        if key not in memo:
            memo[key] = fn(*args)
        return memo[key]
    return once


@_shared
def _known01(targets: np.ndarray):
    """(N, C) int64 tensor: 1 known positive, 0 known negative, -1 unknown (torchmetrics' ignore_index)."""
    import torch

    return torch.from_numpy(np.where(targets == 1, 1, np.where(targets == -1, 0, -1)).astype(np.int64))


@_shared
def _predicted(scores: np.ndarray):
    """(N, C) int64 tensor of the thresholded scores: torchmetrics takes it as labels, and never re-thresholds
    (its own rule is > 0.5, after a sigmoid when a score is outside [0, 1]; ours is >= THRESHOLD)."""
    import torch

    return torch.from_numpy((scores >= THRESHOLD).astype(np.int64))


_per_class_ap, _ap_classes = _shared(per_class_ap), _shared(ap_classes)
_threshold_metrics, _topk_metrics = _shared(threshold_metrics), _shared(topk_metrics)


def _mean_ap(scores: np.ndarray, targets: np.ndarray, voc: bool = False) -> float | None:
    ap, valid = _per_class_ap(scores, targets, voc), _ap_classes(targets)[0]
    return float(np.mean(ap[valid])) if valid.any() else None


def macro_auroc(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """Area under the ROC curve per class on its known entries, averaged over the classes with a known
    positive and a known negative (mAP's classes); None when there is none. torchmetrics binary_auroc;
    = mlcpl partial_multilabel_auroc (macro)."""
    import torch

    valid, y = _ap_classes(targets)[0], _known01(targets)
    if not valid.any():
        return None
    s = torch.from_numpy(scores)
    return float(np.mean([_tm().binary_auroc(s[:, c], y[:, c], ignore_index=-1, validate_args=False).item()
                          for c in np.flatnonzero(valid)]))


def micro_ap(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """AP of all known (image, class) entries pooled into one ranking; None without a known positive and a
    known negative. torchmetrics binary_average_precision (= scikit-learn's AP); = mlcpl's (micro)."""
    import torch

    known = targets != 0
    y = targets[known] == 1
    if y.all() or not y.any():
        return None
    return float(_tm().binary_average_precision(torch.from_numpy(scores[known]), torch.from_numpy(y.astype(np.int64)),
                                                validate_args=False))


def weighted_ap(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """mAP's per-class AP (plain, = scikit-learn = torchmetrics binary_average_precision) over mAP's classes,
    weighted by each class's known positives; = mlcpl's AP (weighted). Our AP rather than torchmetrics' so
    that equal weights give mAP exactly."""
    ap, valid = _per_class_ap(scores, targets, False), _ap_classes(targets)[0]
    if not valid.any():
        return None
    w = (targets == 1).sum(axis=0)[valid]
    return float(np.sum(ap[valid] * w) / w.sum())


@_shared
def _ranked_known(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each image's labels by descending score, a known negative before a positive on a tie (a tie counts
    against the ranking, as scikit-learn's ranking loss and coverage count it): (sorted targets, known
    positives per image, known negatives per image)."""
    order = np.lexsort((targets == 1, -scores), axis=-1)
    ts = np.take_along_axis(targets, order, axis=1)
    return ts, (targets == 1).sum(axis=1), (targets == -1).sum(axis=1)


# Ranking loss, coverage and one-error are ours: torchmetrics' multilabel_ranking_loss and
# multilabel_coverage_error take ignore_index only by giving those entries the lowest score and keeping them
# in the label count, so an unknown label would count as a (perfectly ranked) negative; it has no one-error.

def ranking_loss(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """Per image, the fraction of its (known positive, known negative) pairs ranked wrong (negative scored
    >= positive), averaged over the images with a known positive and a known negative (the others have no
    pair); None when there is none. Per image on its known labels, as mlcpl's; mlcpl and scikit-learn
    count an image without a pair as 0 instead (so theirs = ours x images with a pair / all images)."""
    ts, pos, neg = _ranked_known(scores, targets)
    ok = (pos > 0) & (neg > 0)
    if not ok.any():
        return None
    wrong = np.where(ts == 1, np.cumsum(ts == -1, axis=1), 0).sum(axis=1)  # negatives ranked at or above each positive
    return float(np.mean(wrong[ok] / (pos[ok] * neg[ok])))


def coverage(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """Per image, how many of its known labels are scored at or above its lowest-scored known positive (how
    far down the ranking one goes to cover every known positive; best = its known positives), averaged over
    the images with a known positive; None when there is none. scikit-learn's coverage_error on the known
    labels (it counts an image without a positive as 0); a count of labels, not a fraction."""
    ts, pos, _ = _ranked_known(scores, targets)
    if not (pos > 0).any():
        return None
    depth = np.where(ts == 1, np.cumsum(ts != 0, axis=1), 0).max(axis=1)
    return float(np.mean(depth[pos > 0]))


def one_error(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """The fraction of images whose top-scored known label is a known negative (a tie at the top counts as
    an error), over the images with a known positive and a known negative (with no negative it is 0 for any
    scores); None when there is none. The standard one-error on the known labels."""
    ts, pos, neg = _ranked_known(scores, targets)
    ok = (pos > 0) & (neg > 0)
    if not ok.any():
        return None
    top = np.take_along_axis(ts, np.argmax(ts != 0, axis=1)[:, None], axis=1)[:, 0]
    return float(np.mean(top[ok] == -1))


def hamming_loss(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """The fraction of known (image, class) entries predicted wrong (probability >= 0.5 against the label);
    None without a known entry. scikit-learn's hamming_loss on the known entries, torchmetrics
    multilabel_hamming_distance (micro); mlcpl's default averages per class instead (macro)."""
    if not (targets != 0).any():
        return None
    c = targets.shape[1]
    return float(_tm().multilabel_hamming_distance(_predicted(scores), _known01(targets), num_labels=c,
                                                   average="micro", ignore_index=-1, validate_args=False))


def exact_match(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """The fraction of images whose every known label is predicted right (subset accuracy on the known
    labels), over the images with a known label; None when there is none. torchmetrics
    multilabel_exact_match (it counts an image with no known label as a match: those are dropped first);
    = mlcpl's."""
    rows = (targets != 0).any(axis=1)
    if not rows.any():
        return None
    return float(_tm().multilabel_exact_match(_predicted(scores)[rows], _known01(targets)[rows],
                                              num_labels=targets.shape[1], ignore_index=-1, validate_args=False))


def jaccard(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """Per class, TP / (TP + FP + FN) on its known entries, averaged over the classes where that is defined
    (a known positive or a predicted known entry); None when none is. torchmetrics multilabel_jaccard_index
    (macro); = mlcpl's, except that mlcpl counts a 0/0 class (all known entries negative, none predicted)
    as 0, which would lower the figure for a right answer."""
    f = _tm().multilabel_jaccard_index(_predicted(scores), _known01(targets), num_labels=targets.shape[1],
                                       average="none", ignore_index=-1, zero_division=float("nan"),
                                       validate_args=False).numpy()
    return float(np.nanmean(f)) if not np.isnan(f).all() else None


def expected_calibration_error(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """Per class, on its known entries: the probabilities in 15 equal bins of [0, 1], sum over bins of
    (entries in the bin / entries) x |fraction positive - mean probability|; averaged over the classes with a
    known entry; None when none has one. torchmetrics binary_calibration_error (L1, 15 bins); = mlcpl's
    expected calibration error (macro)."""
    import torch

    y, s = _known01(targets), torch.from_numpy(scores)
    classes = np.flatnonzero((targets != 0).any(axis=0))
    if not len(classes):
        return None
    ece = _tm().binary_calibration_error
    return float(np.mean([ece(s[:, c], y[:, c], n_bins=ECE_BINS, norm="l1", ignore_index=-1, validate_args=False).item()
                          for c in classes]))


# ---- the registry ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    """One metric, declared once.

    name: its key in evaluate's report (eval_metrics.json, metrics_last.json, `evaluate --json`) and, when
    per_epoch (else evaluate only), its metrics.csv column and TensorBoard tag (epoch/<name>); `sweep
    --metric` takes it in lower case. fn(scores (N, C) float, targets (N, C) in {-1, 0, 1}) -> float, or None where the known labels
    cannot judge it; it must ignore the 0 (unknown) entries. label: its row in evaluate's table; short: its
    name in sweep's table and plot; percent: shown x 100 (a fraction) or as is (a count); published: the
    column of the paper's Table 1 (manifests/published/) that sweep's table sets beside it."""
    name: str
    fn: Callable[[np.ndarray, np.ndarray], float | None]
    higher_is_better: bool
    label: str
    description: str
    source: str
    per_epoch: bool = True
    short: str = ""
    percent: bool = True
    published: str | None = None


def _part(family: Callable[[np.ndarray, np.ndarray], dict[str, float]], key: str):
    return lambda scores, targets: family(scores, targets)[key]


def _top3(scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    return _topk_metrics(scores, targets, 3)


_PAPER = "Pu et al., arXiv 2205.13092, eq. 17-19 (as ML-GCN reports them)"
_MLCPL = "mlcpl (partial-label metrics), over known entries"
# the order of evaluate's table and report; per-epoch ones are metrics.csv's columns in this order (the first
# six are the columns runs had before the registry, in their places: new ones are appended after them)
METRICS: list[Metric] = [
    Metric("mAP", _mean_ap, True, "mAP, plain AP (= scikit-learn)", "plain AP (= scikit-learn)",
           "scikit-learn average_precision_score per class", short="mAP", published="mAP"),
    Metric("mAP_voc", lambda s, t: _mean_ap(s, t, voc=True), True, "mAP, VOC-interpolated (published code)",
           "VOC-interpolated AP, as the published code", "SSGRL/HCP-MLR-PL's evaluation code", short="mAP (VOC)",
           published="mAP"),
    *[Metric(k, _part(_threshold_metrics, k), True, k, f"{k} at probability >= 0.5 on known entries", _PAPER,
             per_epoch=k in ("OF1", "CF1")) for k in ("OP", "OR", "OF1", "CP", "CR", "CF1")],
    *[Metric(f"{k}_top3", _part(_top3, k), True, f"{k} top-3", f"{k} of each image's 3 top-scored known labels",
             _PAPER, per_epoch=k in ("OF1", "CF1")) for k in ("OP", "OR", "OF1", "CP", "CR", "CF1")],
    Metric("auroc", macro_auroc, True, "AUROC (macro)", "per-class ROC AUC, mean over mAP's classes", _MLCPL),
    Metric("micro_ap", micro_ap, True, "AP (micro)", "AP of all known entries in one ranking", _MLCPL),
    Metric("weighted_ap", weighted_ap, True, "AP (weighted by known positives)",
           "mAP's per-class AP weighted by known positives", _MLCPL),
    Metric("ranking_loss", ranking_loss, False, "ranking loss", "mis-ranked (positive, negative) pairs per image",
           _MLCPL + "; scikit-learn label_ranking_loss"),
    Metric("coverage", coverage, False, "coverage (labels)", "known labels scored >= the lowest known positive",
           "scikit-learn coverage_error, over known entries", percent=False),
    Metric("one_error", one_error, False, "one-error", "images whose top known label is a negative",
           "Schapire & Singer 2000, over known entries"),
    Metric("hamming_loss", hamming_loss, False, "Hamming loss", "known entries predicted wrong",
           _MLCPL + "; scikit-learn hamming_loss"),
    Metric("exact_match", exact_match, True, "exact match", "images with every known label right", _MLCPL),
    Metric("jaccard", jaccard, True, "Jaccard (macro)", "per-class TP / (TP + FP + FN)", _MLCPL),
    Metric("ece", expected_calibration_error, False, "ECE (15 bins, macro)", "expected calibration error per class",
           _MLCPL + "; Guo et al. 2017"),
]


# names a metric cannot take: the other keys of evaluate's report and the bookkeeping columns of metrics.csv
# (runlog.METRIC_COLUMNS; a test keeps the two in step), which a metric of that name would overwrite
RESERVED_NAMES = frozenset({
    "images", "classes", "classes_evaluated", "left_out", "per_class_ap", "per_class_ap_voc", "checkpoint",
    "published", "report_dir", "epoch", "train_loss", "lr", "val_mAP", "val_mAP_voc", "best", "selection",
    "bad_samples", "images_per_s", "seconds", "peak_memory_mb", "mAP_classes"})
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def register(metric: Metric) -> Metric:
    """Add a metric to the registry (after the others). ValueError for a name taken (in any case), one of
    RESERVED_NAMES, one ending in `_best_on_test` (sweep's column for a metric's best epoch) or not a
    plain identifier (it is a CSV column and a --metric choice)."""
    name = metric.name
    if not _NAME.match(name) or name.endswith("_best_on_test"):
        raise ValueError(f"metric {name!r}: use letters, digits and '_' (starting with a letter), not ending "
                         f"in '_best_on_test'")
    if name.lower() in {n.lower() for n in RESERVED_NAMES}:
        raise ValueError(f"metric {name!r}: that name is taken by evaluate's report or metrics.csv")
    if name.lower() in {m.name.lower() for m in METRICS}:
        raise ValueError(f"metric {name!r}: a metric of that name is already registered")
    METRICS.append(metric)
    return metric


def registered() -> list[Metric]:
    """Every metric, in the registry's order (read at each call, so one registered later is included)."""
    return list(METRICS)


def per_epoch_metrics() -> list[Metric]:
    """The metrics of metrics.csv and TensorBoard, each evaluated epoch."""
    return [m for m in METRICS if m.per_epoch]


def get_metric(name: str) -> Metric:
    """The metric `name` (any case); an unknown name is a ValueError naming the known ones."""
    for m in METRICS:
        if m.name.lower() == name.lower():
            return m
    raise ValueError(f"metric {name!r}: unknown; use one of {', '.join(m.name for m in METRICS)}")


def evaluate_scores(scores: np.ndarray, targets: np.ndarray, class_names: list[str] | None = None) -> dict[str, Any]:
    """Every registered metric (None where undefined: mAP and mAP_voc when no class has both a known positive
    and a known negative), over how many classes mAP is taken and which are left out, per-class AP (plain and
    VOC); scores (N, C) probabilities, targets (N, C) in {-1, 0, 1}."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    names = class_names or [str(i) for i in range(targets.shape[1])]
    token = _MEMO.set({})
    try:
        ap, ap_voc = _per_class_ap(scores, targets, False), _per_class_ap(scores, targets, True)
        valid, no_pos, no_neg = _ap_classes(targets)
        with _one_torch_thread():
            values = {m.name: m.fn(scores, targets) for m in registered()}
    finally:
        _MEMO.reset(token)
    out: dict[str, Any] = {
        "images": int(len(targets)),
        **values,
        "classes_evaluated": int(valid.sum()),
        "classes": int(targets.shape[1]),
        "left_out": {"no_known_positive": [n for n, x in zip(names, no_pos) if x],
                     "no_known_negative": [n for n, x in zip(names, no_neg) if x]},
        "per_class_ap": {n: (float(a) if ok else None) for n, a, ok in zip(names, ap, valid)},
        "per_class_ap_voc": {n: (float(a) if ok else None) for n, a, ok in zip(names, ap_voc, valid)},
    }
    return out


def map_scope(m: dict[str, Any], limit: int = 8) -> str:
    """Over how many classes the mAP is taken and which were left out, in words."""
    def names(xs: list[str]) -> str:
        return ", ".join(xs[:limit]) + (f", ... ({len(xs) - limit} more)" if len(xs) > limit else "")

    lo = m.get("left_out") or {}
    parts = [f"{len(xs)} {why} ({names(xs)})" for why, xs in (
        ("without a known positive (AP undefined)", lo.get("no_known_positive", [])),
        ("without a known negative (AP trivially 1)", lo.get("no_known_negative", []))) if xs]
    total = m.get("classes", m["classes_evaluated"])
    head = (f"mAP over {m['classes_evaluated']} of {total} classes" if m["mAP"] is not None else
            f"no mAP: none of the {total} classes has both a known positive and a known negative test label")
    return head + (f"; left out: {'; '.join(parts)}" if parts else "")


def format_metrics(m: dict[str, Any]) -> str:
    """The evaluation table: which checkpoint and how it was selected, every registered metric defined here
    (both mAPs named), and the published number beside ours when the dataset is one of the paper's."""
    rows = [(x.label, m[x.name], x.percent) for x in registered() if m.get(x.name) is not None]
    lines = []
    ck = m.get("checkpoint")
    if ck:
        lines += [f"checkpoint: {ck['file']} (epoch {ck['epoch']} of {ck['epochs']}; {ck['method']}, mask {ck['mask'] or '-'})",
                  f"selection:  {ck['selection']}"]
    lines += [f"{'metric':<42}{'value':>8}", "-" * 50]
    lines += [f"{k:<42}{(100 if pct else 1) * v:>8.2f}" for k, v, pct in rows]  # a count (coverage) as it is
    lines.append(f"({m['images']:,} images; {map_scope(m)})")
    pub = m.get("published")
    if pub and m["mAP"] is not None:
        lines.append(f"published: {pub['method']} on {pub['dataset']} at {pub['proportion']:.0%} known ({pub['source']}): "
                     f"{100 * pub['mAP']:.1f} mAP; ours (VOC-interpolated) - published = {100 * pub['delta_mAP_voc']:+.2f}"
                     + (f"; {pub['note']}" if pub.get("note") else ""))
    return "\n".join(lines)
