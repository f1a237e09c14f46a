"""Benchmark: does the streaming loader keep the accelerator fed? (run where a GPU is)

Builds ~N COCO-like 640x480 JPEGs into shards, then measures, in one run:
  loader_img_s   the loader alone (same workers, batches moved to the device, nothing else)
  model_img_s    the training step alone on one fixed batch already on the device
  train_img_s    the real training loop (loader + step), from the engine's own train_step
Fed means train_img_s is close to min(loader_img_s, model_img_s) and the loader is not the minimum.
GPU: python benchmarks/gpu_feed.py --device cuda --batch 32 --workers 8
CPU smoke test: python benchmarks/gpu_feed.py --backbone tiny --images 64 --batch 8 --steps 4 --workers 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402

from mlrpl_data.masks import MaskConfig, make_masks  # noqa: E402
from mlrpl_data.shards import ShardConfig, write_shards  # noqa: E402
from mlrpl_train.data import resolve_data  # noqa: E402
from mlrpl_train.device import pick_device, to_device  # noqa: E402
from mlrpl_train.dist import DistInfo  # noqa: E402
from mlrpl_train.engine import stream_config, train_step  # noqa: E402
from mlrpl_train.loader import make_loader  # noqa: E402
from mlrpl_train.options import TrainConfig  # noqa: E402
from mlrpl_train.model.factory import build_model  # noqa: E402
from shards import coco_dataset, make_images  # noqa: E402


def rate(batches, n_steps: int, fn) -> float:
    it = iter(batches)
    fn(next(it))  # warm-up (workers start, cudnn picks kernels)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t, seen = time.perf_counter(), 0
    for _, batch in zip(range(n_steps), it):
        fn(batch)
        seen += len(batch["keys"])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backbone", default="resnet101")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--size", type=int, default=448)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = make_images(tmp / "raw" / "train2014", a.images)
        d = coco_dataset(tmp / "raw", names, 1, tmp / "ds")
        make_masks(d, MaskConfig(proportions=[0.3]))
        write_shards(d, ShardConfig(split="train", shard_size=None, max_samples=max(8, a.images // 16), progress=False,
                                    workers=2))
        cfg = TrainConfig(method="pbce", dataset=str(d), masks="uniform-p0.30-s0", backbone=a.backbone, weights="none",
                          freeze="layer3" if a.backbone != "tiny" else "none", batch_size=a.batch, image_size=a.size,
                          workers=a.workers, device=a.device, shuffle_buffer=256, progress=False, val_fraction=0.0)
        spec = resolve_data(str(d), cfg.masks)
        info = DistInfo()
        device = pick_device(str(cfg.device))
        model = build_model(cfg, spec).to(device).train()
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        loader = lambda: make_loader(stream_config(cfg, spec, info, "train"), a.workers)  # noqa: E731
        loader_rate = rate(loader(), a.steps, lambda b: to_device(b["images"], device))
        fixed = next(iter(loader()))
        model_rate = rate(iter(lambda: fixed, None), a.steps, lambda b: train_step(model, b, opt, device, 0, 0))
        train_rate = rate(loader(), a.steps, lambda b: train_step(model, b, opt, device, 0, 0))
    out = {"device": str(device), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
           "backbone": a.backbone, "batch": a.batch, "workers": a.workers,
           "loader_img_s": round(loader_rate, 1), "model_img_s": round(model_rate, 1), "train_img_s": round(train_rate, 1),
           "train_over_model": round(train_rate / model_rate, 3),
           "fed": bool(loader_rate > model_rate and train_rate > 0.9 * model_rate)}
    if device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
