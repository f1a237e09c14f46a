import json

import numpy as np
from PIL import Image

from mlrpl_data.coco import CocoConfig, build_coco
from mlrpl_data.demo import DemoConfig, write_demo_data


def test_demo_images_show_their_labels(tmp_path):
    raw = write_demo_data(DemoConfig(out=tmp_path, train_images=30, test_images=10))
    m = build_coco(CocoConfig(root=raw, name="digits"))
    assert m.num_classes == 10 and m.counts() == {"train": 30, "test": 10}
    pos = (m.labels == 1).sum(axis=1)
    assert pos.min() >= 1 and pos.max() <= 4
    # each box holds ink: the digits really are drawn where the annotations say
    doc = json.loads((raw / "annotations/instances_train2014.json").read_text())
    img = np.asarray(Image.open(raw / "train2014" / doc["images"][0]["file_name"]).convert("L"), dtype=float)
    for a in (a for a in doc["annotations"] if a["image_id"] == doc["images"][0]["id"]):
        x, y, w, h = a["bbox"]
        assert img[y:y + h, x:x + w].min() < 100


def test_demo_is_deterministic(tmp_path):
    a = build_coco(CocoConfig(root=write_demo_data(DemoConfig(out=tmp_path / "a", train_images=8, test_images=4)), name="d"))
    b = build_coco(CocoConfig(root=write_demo_data(DemoConfig(out=tmp_path / "b", train_images=8, test_images=4)), name="d"))
    assert a.fingerprint == b.fingerprint


def test_demo_runs_end_to_end_small(tmp_path):
    from mlrpl_train.demo import run_demo

    lines = []
    m = run_demo(tmp_path, epochs=1, train_images=64, test_images=16, workers=0, say=lines.append)
    assert m["keys_evaluated"] == 16 and 0 <= m["mAP"] <= 1 and 0 < m["chance_map"] < 1
    assert lines[-1].startswith("[6/6]")
    assert (tmp_path / "run-pbce" / "per_class_ap.png").exists()
