import json

import numpy as np
import pytest
from PIL import Image

from mlrpl_data.coco import CocoConfig, build_coco
from mlrpl_data.digits import DigitsConfig, write_digits


def test_demo_images_show_their_labels(tmp_path):
    raw = write_digits(DigitsConfig(out=tmp_path, train_images=30, test_images=10))
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
    a = build_coco(CocoConfig(root=write_digits(DigitsConfig(out=tmp_path / "a", train_images=8, test_images=4)), name="d"))
    b = build_coco(CocoConfig(root=write_digits(DigitsConfig(out=tmp_path / "b", train_images=8, test_images=4)), name="d"))
    assert a.fingerprint == b.fingerprint


def test_other_layouts_and_scan_splits(tmp_path):
    from mlrpl_data.errors import BadInputError

    raw = write_digits(DigitsConfig(out=tmp_path, train_images=20, test_images=5, image_size=96, grid=3, max_digits=5,
                                    train_scans=0.7, seed=3))
    m = build_coco(CocoConfig(root=raw, name="d"))
    assert m.images["width"].eq(96).all() and (m.labels == 1).sum(axis=1).max() <= 5
    doc = json.loads((raw / "annotations/instances_train2014.json").read_text())
    assert {tuple(a["bbox"][2:]) for a in doc["annotations"]} == {(32, 32)}  # 96 px / 3 cells
    with pytest.raises(BadInputError, match="--max-digits 10"):
        DigitsConfig(out=tmp_path, grid=3, max_digits=10)


def test_demo_runs_both_methods_end_to_end_small(tmp_path):
    from mlrpl_train.demo import format_comparison, run_demo

    lines = []
    r = run_demo(tmp_path, epochs=1, train_images=64, test_images=16, workers=0, say=lines.append)
    assert r["pbce"]["keys_evaluated"] == 16 and r["dsrb"]["keys_evaluated"] == 16 and 0 < r["chance_map"] < 1
    assert lines[-1].startswith("[6/6] training dsrb")
    table = format_comparison(r)
    gain = 100 * (r["dsrb"]["mAP"] - r["pbce"]["mAP"])
    assert f"{gain:+.2f}" in table.splitlines()[2]  # the difference column of the mAP row
    assert (tmp_path / "run-dsrb" / "per_class_ap.png").read_bytes()[:4] == b"\x89PNG"
