"""The main job on the embedded default data, end to end: raw digits -> manifest -> 10% masks
-> shards -> the partial-BCE baseline on CPU -> evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from mlrpl_data.coco import CocoConfig, build_coco
from mlrpl_data.demo import DemoConfig, write_demo_data
from mlrpl_data.manifest import write_manifest
from mlrpl_data.masks import MaskConfig, make_masks
from mlrpl_data.shards import ShardConfig, write_shards
from mlrpl_data.stats import dataset_stats, format_stats

from .engine import TrainConfig, evaluate_checkpoint, train


def run_demo(out: Path, epochs: int = 20, force: bool = False, say: Callable[[str], None] = print,
             train_images: int = 2000, test_images: int = 500, workers: int = 2) -> dict[str, Any]:
    """Returns the evaluation metrics (plus `chance_map`, the test positive rate)."""
    out = Path(out)
    raw, dataset, run = out / "raw", out / "dataset", out / "run-pbce"
    if force or not (raw / "annotations" / "instances_val2014.json").exists():
        say(f"[1/6] writing the demo raw data (scikit-learn digit scans, COCO format) to {raw}")
        write_demo_data(DemoConfig(out=raw, train_images=train_images, test_images=test_images))
    say(f"[2/6] building the manifest in {dataset}")
    m = build_coco(CocoConfig(root=raw, year="2014", name="digits"))
    write_manifest(m, dataset, force=True)
    say(format_stats(dataset_stats(m)))
    say("[3/6] masks: 10% of the training labels known (uniform, seed 0)")
    [(mask, _)] = make_masks(dataset, MaskConfig(proportions=[0.1]))
    stats = mask.meta["stats"]
    say(f"      known {stats['known_proportion']:.3f} of the entries, {stats['known_positives']:,} known positives")
    say("[4/6] writing shards")
    r = write_shards(dataset, ShardConfig(split="all", shard_size=None, max_samples=250, workers=workers, progress=False))
    say(f"      {len(r.written)} written, {len(r.kept)} kept: {r.index['splits']}")
    say(f"[5/6] training the partial-BCE baseline (tiny CNN, CPU, {epochs} epochs) in {run}")
    # no random crops: the digits sit in fixed cells and a crop would cut away digits whose labels stay positive
    cfg = TrainConfig(method="pbce", dataset=str(dataset), masks=mask.name, out=str(run), backbone="tiny", weights="none",
                      freeze="none", epochs=epochs, batch_size=32, lr=3e-3, lr_step=max(1, int(epochs * 0.7)),
                      weight_decay=0.0, image_size=128, crop_scales=(512,), workers=workers)
    train(cfg, force=True)
    say("[6/6] evaluating the best checkpoint on the test split")
    metrics = evaluate_checkpoint(run, str(dataset), workers=workers)
    metrics["chance_map"] = float((m.labels[m.split_rows("test")] == 1).mean())
    return metrics
