"""Benchmark: `build-coco` on a COCO-2014-sized instances file vs `pycocotools.COCO(path)` alone.

Prints JSON: seconds and peak RSS of each (separate processes, same file, same run).
Target: build <= 1.5x the load alone in time, <= 2x in memory.
Usage: python benchmarks/build_manifest.py [--images 82783] [--annotations 600000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
mode, root, out = sys.argv[1], sys.argv[2], sys.argv[3]
t = time.perf_counter()
if mode == "pycocotools":
    from pycocotools.coco import COCO
    COCO(f"{root}/annotations/instances_train2014.json")
else:
    from mlrpl_data.coco import CocoConfig, build_coco
    from mlrpl_data.folder import write_manifest
    write_manifest(build_coco(CocoConfig(root=root, splits=("train",))), out, force=True)
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_instances(root: Path, n_images: int, n_anns: int, seed: int = 0) -> Path:
    """A synthetic instances_train2014.json with COCO's 80 categories, polygons and empty images."""
    rng = np.random.default_rng(seed)
    spec = json.loads((Path(__file__).resolve().parents[1] / "manifests" / "coco80.json").read_text())
    cats = [{"id": c["source_id"], "name": c["name"], "supercategory": c["supercategory"]} for c in spec["categories"]]
    ids = rng.choice(600000, size=n_images, replace=False) + 1
    images = [{"license": 1, "file_name": f"COCO_train2014_{i:012d}.jpg", "coco_url": "", "height": 480, "width": 640,
               "date_captured": "2013-11-14 17:02:52", "flickr_url": "", "id": int(i)} for i in ids]
    img_of = rng.choice(ids[: int(n_images * 0.99)], size=n_anns)  # ~1% of images without annotations
    cat_of = rng.choice([c["id"] for c in cats], size=n_anns)
    anns = []
    for k in range(n_anns):
        poly = np.round(rng.random(16) * 400, 2).tolist()
        anns.append({"segmentation": [poly], "area": 1234.5, "iscrowd": int(k % 100 == 0), "image_id": int(img_of[k]),
                     "bbox": [10.0, 20.0, 30.0, 40.0], "category_id": int(cat_of[k]), "id": k + 1})
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / "instances_train2014.json"
    path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": cats}))
    folder = root / "train2014"
    folder.mkdir(exist_ok=True)
    for im in images:  # empty files: the build checks presence, not content
        (folder / im["file_name"]).touch()
    return path


def run(mode: str, root: Path, out: Path) -> dict:
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    r = subprocess.run([sys.executable, "-c", CHILD, mode, str(root), str(out)], capture_output=True, text=True, env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=82783)
    ap.add_argument("--annotations", type=int, default=600000)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        root = Path(tmp) / "coco"
        path = make_instances(root, a.images, a.annotations)
        load, build = [], []
        for _ in range(a.repeats):  # interleaved, best of N: the machine is noisy
            load.append(run("pycocotools", root, Path(tmp) / "out"))
            build.append(run("mlrpl", root, Path(tmp) / "out"))
        best = lambda xs: min(xs, key=lambda r: r["seconds"])
        lo, bu = best(load), best(build)
        print(json.dumps({
            "images": a.images, "annotations": a.annotations, "json_mb": round(path.stat().st_size / 2**20, 1),
            "pycocotools_load": lo, "mlrpl_build_coco": bu,
            "time_ratio": round(bu["seconds"] / lo["seconds"], 3),
            "memory_ratio": round(bu["peak_rss_mb"] / lo["peak_rss_mb"], 3),
            "targets": {"time_ratio": 1.5, "memory_ratio": 2.0},
        }, indent=2))


if __name__ == "__main__":
    main()
