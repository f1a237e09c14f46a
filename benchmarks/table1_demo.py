"""Benchmark: every Table 1 method of the registry on two small digit datasets, one of them held out.

A is the demo digits (128 px, 4x4 grid), which mlrpl was developed on; B is a set generated with
other settings and never tuned on (96 px, 3x3 grid, up to 5 digits, other scans and seed). Both are
fed to the network at 64 px. Each method trains with one shared recipe (tiny CNN from scratch,
lr 1e-3, no random crops, the same epochs, DSRB's and KGGR's feature size 128; every other option its default) at 10%, 30% and 50% known labels with seeds 0, 1, 2 (mask and training seed), through
`mlrpl_train.sweep.run_sweep`, so an interrupted run of this script resumes where it stopped.
Figures: each run's LAST epoch, mean ± std over seeds, plain AP and VOC-interpolated AP.

    python benchmarks/table1_demo.py --out /tmp/table1 [--epochs 12] [--methods dsrb,pbce] [--datasets A]

Prints one JSON object: {dataset: {method: {"0.10": {"mAP": [..per seed..], "mAP_voc": [...]}}}},
and writes OUT/table1_demo.md (both tables, Markdown).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

DATASETS = {
    # name: (demo-data options, image size fed to the network: 64 px keeps 144 runs within an hour of 2 CPU cores)
    "A": (dict(), 64),
    "B": (dict(image_size=96, grid=3, max_digits=5, train_scans=0.6, seed=7, train_images=1600, test_images=600), 64),
}
PROPORTIONS = (0.1, 0.3, 0.5)
SEEDS = (0, 1, 2)


def build(root: Path, name: str) -> Path:
    """The digits dataset `name` under root (raw, manifest, shards), kept when already built."""
    from mlrpl_data.coco import CocoConfig, build_coco
    from mlrpl_data.digits import DigitsConfig, write_digits
    from mlrpl_data.folder import write_manifest
    from mlrpl_data.shards import ShardConfig, write_shards

    raw, dataset = root / f"raw{name}", root / name
    if not (dataset / "shards" / "index.json").exists():
        write_digits(DigitsConfig(out=raw, **DATASETS[name][0]))
        write_manifest(build_coco(CocoConfig(root=raw, year="2014", name="digits")), dataset, force=True)
        write_shards(dataset, ShardConfig(split="all", shard_size=None, max_samples=250, workers=1, progress=False))
    return dataset


def recipe(method: str, dataset: Path, image_size: int, epochs: int):
    from mlrpl_train.options import Backbone, DsrbOptions, KggrOptions, Method, TrainConfig

    return TrainConfig(method=Method(method), dataset=str(dataset), backbone=Backbone.tiny, weights="none",
                       epochs=epochs, lr=1e-3, crop_scales=(512,),
                       image_size=image_size, val_fraction=0.0, eval_every=epochs, workers=1, progress=False,
                       dsrb=DsrbOptions(feat_dim=128), kggr=KggrOptions(kggr_feat_dim=128))


def table(results: dict, metric: str) -> str:
    lines = []
    for name, per_method in results.items():
        head = [f"{name} {int(100 * p)}%" for p in PROPORTIONS]
        lines += [f"| {metric} | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
        for method, per in per_method.items():
            cells = []
            for p in PROPORTIONS:
                v = 100 * np.asarray(per.get(f"{p:.2f}", {}).get(metric, []))
                cell = f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else (f"{v[0]:.1f}" if len(v) else "-")
                cells.append(cell + (f" (n={len(v)})" if 0 < len(v) < len(SEEDS) else ""))  # a stopped benchmark says so
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    from mlrpl_train.registry import METHODS
    from mlrpl_train.sweep import collect, run_sweep

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--methods", default=",".join(m.name for m in METHODS if m.table1))
    ap.add_argument("--datasets", default="A,B")
    ap.add_argument("--report-only", action="store_true", help="train nothing: the table of the runs already finished")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for name in args.datasets.split(","):
        sweep_dir = args.out / f"sweep{name}"
        for seed in () if args.report_only else SEEDS:
            dataset = build(args.out, name)  # seed by seed: an interrupted benchmark has every method on the first seeds
            for method in args.methods.split(","):
                run_sweep(recipe(method, dataset, DATASETS[name][1], args.epochs), list(PROPORTIONS), [seed],
                          sweep_dir)
        # collect() keeps a run only once its last epoch is evaluated: a run still training is not counted
        results[name] = {m: {f"{p:.2f}": {k: [r[k] for r in runs] for k in ("mAP", "mAP_voc")}
                             for p, runs in per.items()} for m, per in collect(sweep_dir).items()}
    text = (f"Last epoch of {args.epochs}, mean ± std over seeds {', '.join(map(str, SEEDS))}\n\n"
            + table(results, "mAP") + "\n" + table(results, "mAP_voc"))
    (args.out / "table1_demo.md").write_text(text)
    print(json.dumps(results))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
