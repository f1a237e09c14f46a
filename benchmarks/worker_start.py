"""Benchmark: what starting loader workers from a forkserver costs, against plain fork, per loader.

mlrpl_train.loader.worker_context() starts DataLoader workers from a forkserver (a fork of a
process running threads can deadlock: DESIGN note in loader.py). The trainer makes a new loader
every epoch (and DSRB one more for its prototypes), so the start cost is paid per loader. This
runs, interleaved and --repeats times, one full pass of a small training stream (448 px, batch 16,
--workers workers) with each start method, on the same shards, and prints JSON: seconds to the
first batch and for the whole pass (medians), and the ratios forkserver / fork.
With --partial N, the stream carries N partial-label rows (COCO's train split: 82,081), which every
forkserver worker receives pickled.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402

from mlrpl_train import loader as L  # noqa: E402
from shards import coco_dataset, make_images  # noqa: E402


def one_pass(cfg: L.StreamConfig, workers: int, method: str, batches: int) -> tuple[float, float]:
    """(seconds to the first batch, seconds for an epoch of `batches` batches: the training stream
    cycles, the trainer cuts it) with workers started by `method`."""
    ctx = L.worker_context() if method == "forkserver" else torch.multiprocessing.get_context("fork")
    loader = torch.utils.data.DataLoader(L.ShardStream(cfg), batch_size=None, num_workers=workers,
                                         worker_init_fn=L._worker_init, multiprocessing_context=ctx,
                                         prefetch_factor=4)
    t = time.perf_counter()
    first = None
    it = iter(loader)
    for _ in range(batches):
        next(it)
        if first is None:
            first = time.perf_counter() - t
    elapsed = time.perf_counter() - t
    del it  # ends the workers
    return first, elapsed


def main() -> None:
    from mlrpl_data.folder import read_manifest
    from mlrpl_data.shards import ShardConfig, write_shards
    from mlrpl_train.data import resolve_data

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--partial", type=int, default=82081, help="partial-label rows the stream carries")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = make_images(tmp / "raw" / "train2014", a.images)
        d = coco_dataset(tmp / "raw", names, 1, tmp / "ds")
        write_shards(d, ShardConfig(split="train", shard_size=None, max_samples=50, progress=False))
        spec = resolve_data(str(d), None)
        rng = np.random.default_rng(0)
        keys = read_manifest(d).images["key"].tolist()
        partial = {k: np.zeros(spec.num_classes, np.int8) for k in keys}  # all unknown: agrees with any labels
        partial.update({f"pad_{i:012d}": rng.integers(-1, 2, spec.num_classes).astype(np.int8) for i in range(a.partial)})
        cfg = L.StreamConfig(urls=spec.train_urls, num_classes=spec.num_classes, train=True, image_size=448,
                             batch_size=16, shuffle_buffer=64, partial=partial or None)
        batches = L.batches_per_epoch(a.images, 1, 16)
        times = {"fork": [], "forkserver": []}
        one_pass(cfg, a.workers, "forkserver", batches)  # the forkserver itself starts once per process: not per loader
        for _ in range(a.repeats):
            for method in ("fork", "forkserver"):
                times[method].append(one_pass(cfg, a.workers, method, batches))
    med = {m: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for m, v in times.items()}
    print(json.dumps({
        "images": a.images, "workers": a.workers, "partial_rows": a.partial, "repeats": a.repeats,
        "first_batch_s": {m: round(v[0], 3) for m, v in med.items()},
        "pass_s": {m: round(v[1], 3) for m, v in med.items()},
        "forkserver_vs_fork_first_batch": round(med["forkserver"][0] / med["fork"][0], 3),
        "forkserver_vs_fork_pass": round(med["forkserver"][1] / med["fork"][1], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
