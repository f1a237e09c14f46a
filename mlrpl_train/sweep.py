"""`mlrpl sweep`: one run per known-label proportion (and seed), then the paper's Table 1 layout.

Runs live in SWEEP/<method>-p0.30-s0/; a finished run is not trained again, so a sweep can be
stopped and re-run, and sweeps of several methods into one folder share one table.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from mlrpl_data.masks import MaskConfig, compute_masks, proportion_text, write_mask
from mlrpl_data.manifest import read_manifest

from .engine import CHECKPOINT_LAST, load_checkpoint, train
from .options import TrainConfig

RUN_NAME = re.compile(r"^(?P<method>[a-z0-9_+-]+?)-p(?P<p>\d\.\d+)-s(?P<seed>\d+)$")


def run_dir(out: Path, method: str, p: float, seed: int) -> Path:
    return Path(out) / f"{method}-p{proportion_text(p)}-s{seed}"


def finished(run: Path, epochs: int) -> bool:
    try:
        return load_checkpoint(run / CHECKPOINT_LAST)["epoch"] >= epochs
    except Exception:
        return False


def run_sweep(base: TrainConfig, proportions: list[float], seeds: list[int], out: Path, scheme: str = "uniform") -> list[Path]:
    """Train every (proportion, seed) not already finished; masks are made when missing."""
    from mlrpl_data.ownership import claim, refuse_overlap

    refuse_overlap(out, {"the dataset": base.dataset}, "--out")
    m = read_manifest(base.dataset)
    claim(out, "sweep", "--out")
    runs = []
    for seed in seeds:
        for mask in compute_masks(m, MaskConfig(proportions=proportions, seed=seed, scheme=scheme)):
            write_mask(base.dataset, mask)  # a no-op when the same mask exists
            p = mask.meta["proportion"]
            run = run_dir(out, base.method, p, seed)
            if finished(run, base.epochs):
                print(f"{run}: finished, kept")
            else:
                cfg = dataclasses.replace(base, masks=mask.name, seed=seed, out=str(run))
                resume = (run / CHECKPOINT_LAST).exists()
                print(f"{run}: {'resuming' if resume else 'training'} ({mask.name})")
                train(cfg, resume=resume, force=not resume)
            runs.append(run)
    return runs


def final_metrics(run: Path) -> dict[str, float] | None:
    """The last epoch's evaluation (not the best epoch: no selection on the test set)."""
    path = run / "metrics.csv"
    if not path.exists():
        return None
    rows = [r for r in csv.DictReader(open(path)) if r.get("mAP")]
    return {k: float(rows[-1][k]) for k in ("mAP", "OF1", "CF1")} if rows else None


def collect(out: Path) -> dict[str, dict[float, list[dict[str, float]]]]:
    table: dict[str, dict[float, list[dict[str, float]]]] = {}
    for run in sorted(Path(out).iterdir()):
        match = RUN_NAME.match(run.name)
        if not (match and run.is_dir()):
            continue
        metrics = final_metrics(run)
        if metrics:
            table.setdefault(match["method"], {}).setdefault(float(match["p"]), []).append(metrics)
    order = {"pbce": 0, "ssgrl": 1, "dsrb": 2}  # the paper's row order, then others by name
    return dict(sorted(table.items(), key=lambda kv: (order.get(kv[0], 9), kv[0])))


def _cell(values: list[float]) -> str:
    v = 100 * np.asarray(values)
    return f"{v.mean():.1f}" if len(v) == 1 else f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def write_table(out: Path, title: str = "") -> dict[str, Any]:
    """Table 1 layout (mAP per proportion, average mAP / OF1 / CF1; mean ± std over seeds) as
    Markdown and CSV, and mAP against the known proportion as a PNG."""
    table = collect(out)
    props = sorted({p for per in table.values() for p in per})
    header = ["Method"] + [f"{round(100 * p)}%" for p in props] + ["Avg. mAP", "Avg. OF1", "Avg. CF1"]
    md = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    rows_csv = []
    for method, per in table.items():
        cells, csv_row = [], {"method": method}
        for p in props:
            runs = per.get(p, [])
            cells.append(_cell([r["mAP"] for r in runs]) if runs else "-")
            csv_row[f"mAP@{p:.2f}"] = float(np.mean([r["mAP"] for r in runs])) if runs else ""
            csv_row[f"mAP@{p:.2f}_std"] = float(np.std([r["mAP"] for r in runs], ddof=1)) if len(runs) > 1 else ""
        for key in ("mAP", "OF1", "CF1"):
            # the average over proportions, per seed, then mean ± std over seeds
            by_seed = [np.mean([per[p][i][key] for p in per]) for i in range(min(len(v) for v in per.values()))]
            cells.append(_cell(by_seed))
            csv_row[f"avg_{key}"] = float(np.mean(by_seed))
        md.append(f"| {method} | {' | '.join(cells)} |")
        rows_csv.append(csv_row)
    text = (f"{title}\n\n" if title else "") + "\n".join(md) + "\n"
    (Path(out) / "table.md").write_text(text)
    if rows_csv:
        with open(Path(out) / "table.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows_csv[0]))
            w.writeheader()
            w.writerows(rows_csv)
    _plot(table, props, Path(out) / "map_vs_proportion.png")
    (Path(out) / "table.json").write_text(json.dumps({m: {str(p): v for p, v in per.items()} for m, per in table.items()}, indent=1))
    return {"markdown": text, "methods": list(table), "proportions": props}


def _plot(table, props, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, per in table.items():
        ps = [p for p in props if p in per]
        mean = [100 * np.mean([r["mAP"] for r in per[p]]) for p in ps]
        std = [100 * np.std([r["mAP"] for r in per[p]]) for p in ps]
        ax.errorbar([100 * p for p in ps], mean, yerr=std, marker="o", capsize=3, label=method)
    ax.set_xlabel("known labels (%)")
    ax.set_ylabel("mAP (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
