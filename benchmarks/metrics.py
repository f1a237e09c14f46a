"""Benchmark: one evaluation (`metrics.evaluate_scores`) with every registered metric beside one with
only the metrics runs had before the registry (mAP, mAP_voc, the F1 families), interleaved in one run,
median of --repeats, on random scores with unknowns (COCO's test size by default).

    .venv/bin/python benchmarks/metrics.py [--images 40504] [--classes 80] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from mlrpl_train import metrics

BEFORE = {"mAP", "mAP_voc", *(f"{k}{t}" for k in ("OP", "OR", "OF1", "CP", "CR", "CF1") for t in ("", "_top3"))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=40504)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    targets = rng.choice([-1, 0, 1], size=(a.images, a.classes), p=[0.6, 0.3, 0.1]).astype(np.int8)
    scores = np.clip(rng.normal(0.3 + 0.4 * (targets == 1), 0.25), 0, 1)
    every = list(metrics.METRICS)
    metrics.evaluate_scores(scores[:100], targets[:100])  # imports (torchmetrics) out of the timing
    times: dict[str, list[float]] = {"before_registry_metrics": [], "every_metric": []}
    for _ in range(a.repeats):
        for key, chosen in (("before_registry_metrics", [m for m in every if m.name in BEFORE]), ("every_metric", every)):
            metrics.METRICS[:] = chosen
            t = time.perf_counter()
            metrics.evaluate_scores(scores, targets)
            times[key].append(time.perf_counter() - t)
    metrics.METRICS[:] = every
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"images": a.images, "classes": a.classes, "repeats": a.repeats,
                      **{f"{k}_s": round(v, 3) for k, v in med.items()},
                      "ratio_every_to_before": round(med["every_metric"] / med["before_registry_metrics"], 2)}))


if __name__ == "__main__":
    main()
