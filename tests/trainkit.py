"""A tiny dataset with masks and shards, ready to train on (shared by the training tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mlrpl_data.coco import CocoConfig, build_coco
from mlrpl_data.folder import write_manifest
from mlrpl_data.masks import MaskConfig, make_masks
from mlrpl_data.shards import ShardConfig, write_shards

from conftest import make_coco


def tiny_training_set(tmp: Path, n_train: int = 40, n_test: int = 12, max_samples: int = 7, proportion: float = 0.5) -> Path:
    """Images whose colour channels encode their classes, so a tiny CNN can learn them."""
    rng = np.random.default_rng(0)
    cats = [1, 3, 7]
    splits = {}
    for split, n, base in (("train", n_train, 1), ("val", n_test, 1000)):
        recs = []
        for i in range(n):
            present = [c for c in cats if rng.random() < 0.4] or [cats[i % 3]]
            recs.append((base + i, present))
        splits[split] = recs
    raw = make_coco(tmp / "raw", splits=splits)
    for split, recs in splits.items():
        for image_id, present in recs:
            arr = rng.integers(0, 60, (24, 32, 3)).astype(np.uint8)
            for ch, c in enumerate(cats):
                if c in present:
                    arr[:, :, ch] += 150
            Image.fromarray(arr).save(raw / f"{split}2014" / f"COCO_{split}2014_{image_id:012d}.jpg", quality=95)
    d = tmp / "dataset"
    write_manifest(build_coco(CocoConfig(root=raw)), d)
    make_masks(d, MaskConfig(proportions=[proportion]))
    write_shards(d, ShardConfig(split="all", shard_size=None, max_samples=max_samples, progress=False))
    return d


def train_killed_at(cfg, step: int, monkeypatch) -> None:
    """Train `cfg` and stop it with a KeyboardInterrupt at its `step`-th training step (1-based, counted
    over the whole run), as Ctrl-C would; the run's checkpoints so far stay for a resume."""
    import pytest

    from mlrpl_train import engine
    from mlrpl_train.engine import train

    real, calls = engine.train_step, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(engine, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(engine, "train_step", real)
