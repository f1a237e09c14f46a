"""Benchmark (`.venv/bin/python benchmarks/coco_index.py ../shared/fixtures/real/coco2017/annotations/instances_val2017.json`):
createIndex (what coco.py built and never queried) vs the one pass _split_rows makes, and a
labelling through the index's queries (getImgIds/loadImgs/getAnnIds/loadAnns)."""
import contextlib, io, json, sys, time
from pathlib import Path
import numpy as np
from pycocotools.coco import COCO

def synth(path, n_img=20000, n_ann=100000, seed=0):
    rng = np.random.default_rng(seed)
    imgs = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480} for i in range(1, n_img + 1)]
    cats = [{"id": c, "name": f"c{c}"} for c in range(1, 81)]
    anns = [{"id": k, "image_id": int(rng.integers(1, n_img + 1)), "category_id": int(rng.integers(1, 81)), "iscrowd": 0,
             "bbox": [0, 0, 1, 1], "area": 1.0} for k in range(n_ann)]
    path.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))

def direct(data, col_of):
    images = data["images"]
    labels = np.full((len(images), len(col_of)), -1, np.int8)
    row_of = {im["id"]: r for r, im in enumerate(images)}
    rows = [row_of[a["image_id"]] for a in data["annotations"]]
    cols = [col_of[a["category_id"]] for a in data["annotations"]]
    labels[np.asarray(rows, np.int64), np.asarray(cols, np.int64)] = 1
    return labels

def indexed(data, col_of):
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    ids = [im["id"] for im in data["images"]]  # JSON order (getImgIds returns dict order: the same here)
    labels = np.full((len(ids), len(col_of)), -1, np.int8)
    for r, i in enumerate(ids):
        for a in coco.loadAnns(coco.getAnnIds(imgIds=[i], iscrowd=None)):
            labels[r, col_of[a["category_id"]]] = 1
    return labels

def index_only(data):
    coco = COCO(); coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()

def best(f, n=5):
    t = []
    for _ in range(n):
        a = time.perf_counter(); f(); t.append(time.perf_counter() - a)
    return min(t)

for path in [Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/coco_synth100k.json")]:
    if not path.exists():
        synth(path)
    data = json.loads(path.read_text())
    col_of = {c["id"]: k for k, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    assert (direct(data, col_of) == indexed(data, col_of)).all()
    print(f"{path.name}: {len(data['images'])} images, {len(data['annotations'])} annotations: "
          f"one pass {best(lambda: direct(data, col_of))*1e3:.1f} ms, createIndex alone {best(lambda: index_only(data))*1e3:.1f} ms, "
          f"labels via the index's queries {best(lambda: indexed(data, col_of))*1e3:.1f} ms")
