"""The main job on the embedded default data, end to end: raw digits -> manifest -> 10% masks
-> shards -> the partial-BCE baseline and DSRB on the same mask, on CPU -> both evaluated.

Both methods share one small recipe (a tiny CNN at 128 px, no random crops, 12 epochs): it is
the recipe of the digits sweep in the README with 12 epochs instead of 20, so the demo fits in a
few minutes on two cores. Results are those of the last epoch: nothing is selected on the test set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from mlrpl_data.coco import CocoConfig, build_coco
from mlrpl_data.digits import DigitsConfig, write_digits
from mlrpl_data.errors import BadInputError
from mlrpl_data.folder import write_manifest
from mlrpl_data.masks import MaskConfig, make_masks
from mlrpl_data.shards import ShardConfig, write_shards
from mlrpl_data.stats import dataset_stats, format_stats

from .checkpoint import CHECKPOINT_LAST
from .engine import train
from .reports import evaluate_checkpoint
from .options import Backbone, DsrbOptions, Method, TrainConfig

METHODS = ("pbce", "dsrb")


def demo_config(dataset: Path, mask: str, out: Path, method: str, epochs: int, workers: int) -> TrainConfig:
    """The demo's recipe. No random crops: the digits sit in fixed cells and a crop would cut away
    digits whose labels stay positive. No validation split: the demo reports the last epoch."""
    return TrainConfig(method=Method(method), dataset=str(dataset), masks=mask, out=str(out), backbone=Backbone.tiny,
                       weights="none", epochs=epochs, batch_size=32, lr=1e-3, lr_step=max(1, round(epochs * 2 / 3)),
                       image_size=128, crop_scales=(512,), workers=workers, val_fraction=0.0,
                       dsrb=DsrbOptions(feat_dim=128))


def run_demo(out: Path, epochs: int = 12, force: bool = False, say: Callable[[str], None] = print,
             train_images: int = 2000, test_images: int = 500, workers: int = 1) -> dict[str, Any]:
    """Returns {"pbce": metrics, "dsrb": metrics, "chance_map": the test positive rate}."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out}: is a file; the demo needs a folder")
    raw, dataset = out / "raw", out / "dataset"
    if force or not (raw / "annotations" / "instances_val2014.json").exists():
        say(f"[1/6] writing the demo raw data (scikit-learn digit scans, COCO format) to {raw}")
        write_digits(DigitsConfig(out=raw, train_images=train_images, test_images=test_images))
    say(f"[2/6] building the manifest in {dataset}")
    m = build_coco(CocoConfig(root=raw, year="2014", name="digits"))
    write_manifest(m, dataset, force=True)
    say(format_stats(dataset_stats(m)))
    say("[3/6] masks: 10% of the training labels known (uniform, seed 0)")
    [(mask, _)] = make_masks(dataset, MaskConfig(proportions=[0.1]))
    stats = mask.meta["stats"]
    say(f"      known {stats['known_proportion']:.3f} of the entries, {stats['known_positives']:,} known positives")
    say("[4/6] writing shards")
    r = write_shards(dataset, ShardConfig(split="all", shard_size=None, max_samples=250, workers=2, progress=False))
    say(f"      {len(r.written)} written, {len(r.kept)} kept: {r.index['splits']}")
    results: dict[str, Any] = {}
    for k, method in enumerate(METHODS):
        run = out / f"run-{method}"
        say(f"[{5 + k}/6] training {method} (tiny CNN, CPU, {epochs} epochs) in {run}, then evaluating its last epoch")
        train(demo_config(dataset, mask.name, run, method, epochs, workers), force=True)
        results[method] = evaluate_checkpoint(run / CHECKPOINT_LAST, str(dataset), workers=workers)
    results["chance_map"] = float((m.labels[m.split_rows("test")] == 1).mean())
    return results


def format_comparison(results: dict[str, Any]) -> str:
    """mAP, OF1 and CF1 of both methods side by side, and DSRB's gain over the baseline."""
    rows = [("mAP", "mAP"), ("mAP (VOC-interp.)", "mAP_voc"), ("OF1", "OF1"), ("CF1", "CF1")]
    a, b = results["pbce"], results["dsrb"]
    lines = [f"{'metric':<20}{'pbce':>8}{'dsrb':>8}{'dsrb - pbce':>13}", "-" * 49]
    lines += [f"{name:<20}{100 * a[k]:>8.2f}{100 * b[k]:>8.2f}{100 * (b[k] - a[k]):>+13.2f}" for name, k in rows]
    lines.append(f"(last epoch of each run; {a['images']:,} test images, 10% of the training labels known)")
    return "\n".join(lines)
