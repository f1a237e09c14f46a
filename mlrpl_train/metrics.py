"""Multi-label metrics: per-class AP and mAP (plain and VOC-interpolated), OP/OR/OF1, CP/CR/CF1.

`targets` are (N, C) in {-1, 0, 1}; entries labelled 0 are ignored for that class. `scores`
are (N, C) probabilities (or any monotone score for AP). mAP averages over the classes whose AP
means something on the known labels: at least one known positive (else AP is undefined) and one
known negative (else AP is 1 whatever the scores); the others are named as left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np


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


def threshold_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
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


def evaluate_scores(scores: np.ndarray, targets: np.ndarray, class_names: list[str] | None = None) -> dict[str, Any]:
    """Every metric of the paper and the published code, in one dict; mAP and mAP_voc are None when
    no class has both a known positive and a known negative."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    ap = per_class_ap(scores, targets)
    ap_voc = per_class_ap(scores, targets, voc=True)
    valid, no_pos, no_neg = ap_classes(targets)
    names = class_names or [str(i) for i in range(targets.shape[1])]
    out: dict[str, Any] = {
        "images": int(len(targets)),
        "mAP": float(np.mean(ap[valid])) if valid.any() else None,
        "mAP_voc": float(np.mean(ap_voc[valid])) if valid.any() else None,
        "classes_evaluated": int(valid.sum()),
        "classes": int(targets.shape[1]),
        "left_out": {"no_known_positive": [n for n, x in zip(names, no_pos) if x],
                     "no_known_negative": [n for n, x in zip(names, no_neg) if x]},
        **threshold_metrics(scores, targets),
        **{f"{k}_top3": v for k, v in topk_metrics(scores, targets, 3).items()},
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


MAP_NAMES = {"mAP": "mAP, plain AP (= scikit-learn)", "mAP_voc": "mAP, VOC-interpolated (published code)"}


def format_metrics(m: dict[str, Any]) -> str:
    """The evaluation table: which checkpoint and how it was selected, both mAPs named, the other metrics,
    and the published number beside ours when the dataset is one of the paper's."""
    rows = [(MAP_NAMES["mAP"], m["mAP"]), (MAP_NAMES["mAP_voc"], m["mAP_voc"])] if m["mAP"] is not None else []
    rows += [("OP", m["OP"]), ("OR", m["OR"]), ("OF1", m["OF1"]), ("CP", m["CP"]), ("CR", m["CR"]), ("CF1", m["CF1"]),
             ("OF1 top-3", m["OF1_top3"]), ("CF1 top-3", m["CF1_top3"])]
    lines = []
    ck = m.get("checkpoint")
    if ck:
        lines += [f"checkpoint: {ck['file']} (epoch {ck['epoch']} of {ck['epochs']}; {ck['method']}, mask {ck['mask'] or '-'})",
                  f"selection:  {ck['selection']}"]
    lines += [f"{'metric':<42}{'value':>8}", "-" * 50] + [f"{k:<42}{100 * v:>8.2f}" for k, v in rows]
    lines.append(f"({m['images']:,} images; {map_scope(m)})")
    pub = m.get("published")
    if pub and m["mAP"] is not None:
        lines.append(f"published: {pub['method']} on {pub['dataset']} at {pub['proportion']:.0%} known ({pub['source']}): "
                     f"{100 * pub['mAP']:.1f} mAP; ours (VOC-interpolated) - published = {100 * pub['delta_mAP_voc']:+.2f}"
                     + (f"; {pub['note']}" if pub.get("note") else ""))
    return "\n".join(lines)
