"""Benchmark: `make-masks` for all nine proportions on a VG-200-sized manifest (108,077 x 200).

Prints JSON: seconds of make_masks (hash, nine masks, nine Parquet files + sidecars) and, in the
same run, of nine plain np.random.random((108077, 200)) calls. Target: ratio <= 3.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mlrpl_data.manifest import Manifest
from mlrpl_data.folder import write_manifest
from mlrpl_data.masks import MaskConfig, make_masks

N, C = 108077, 200
PROPORTIONS = [round(0.1 * k, 1) for k in range(1, 10)]


def vg_sized_manifest() -> Manifest:
    rng = np.random.default_rng(0)
    keys = [f"vg_{i}" for i in rng.choice(3_000_000, size=N, replace=False)]
    images = pd.DataFrame({"key": keys, "split": "train", "path": [f"VG_100K/{k[3:]}.jpg" for k in keys],
                           "width": 800, "height": 600})
    labels = np.where(rng.random((N, C)) < 0.04, 1, -1).astype(np.int8)
    return Manifest(name="vg200", version="bench", category_names=[f"c{i}" for i in range(C)],
                    category_source_ids=[str(i) for i in range(C)], images=images, labels=labels)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(repeats: int = 3) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "vg200"
        write_manifest(vg_sized_manifest(), d)
        cfg = MaskConfig(proportions=PROPORTIONS, force=True)
        mlrpl = best_of(lambda: make_masks(d, cfg), repeats)
        plain = best_of(lambda: [np.random.random((N, C)) for _ in PROPORTIONS], repeats)
        # make_masks includes reading the manifest back (and verifying its fingerprint): time that alone too
        from mlrpl_data.folder import read_manifest
        read = best_of(lambda: read_manifest(d), repeats)
    print(json.dumps({"images": N, "classes": C, "proportions": PROPORTIONS,
                      "make_masks_seconds": round(mlrpl, 3), "of_which_read_manifest_seconds": round(read, 3),
                      "nine_np_random_seconds": round(plain, 3), "ratio": round(mlrpl / plain, 3), "target_ratio": 3.0},
                     indent=2))


if __name__ == "__main__":
    main()
