import json

import numpy as np
import pytest

from mlrpl_data.coco import CocoConfig, build_coco
from mlrpl_data.errors import BadInputError
from mlrpl_data.folder import read_manifest, write_manifest

from conftest import make_coco


def test_tiny_coco_labels_keys_splits(tmp_path):
    m = build_coco(CocoConfig(root=make_coco(tmp_path / "raw")))
    assert m.category_names == ["person", "car", "train"] and m.category_source_ids == ["1", "3", "7"]
    assert m.images["key"].tolist() == ["coco2014_train_000000000010", "coco2014_train_000000000011",
                                        "coco2014_train_000000000012", "coco2014_val_000000000020",
                                        "coco2014_val_000000000021"]
    assert m.images["split"].tolist() == ["train"] * 3 + ["test"] * 2
    assert m.images["path"][0] == "train2014/COCO_train2014_000000000010.jpg"
    np.testing.assert_array_equal(m.labels, [[1, 1, -1], [-1, -1, 1], [-1, -1, -1], [-1, 1, -1], [1, -1, 1]])


def test_crowd_counts_as_present_unless_excluded(tmp_path):
    raw = make_coco(tmp_path / "raw", splits={"train": [(1, [1, 3], [1, 0])], "val": [(2, [7])]})
    assert build_coco(CocoConfig(root=raw)).labels[0].tolist() == [1, 1, -1]
    assert build_coco(CocoConfig(root=raw, include_crowd=False)).labels[0].tolist() == [-1, 1, -1]


def test_same_raw_content_same_fingerprint_whatever_the_folder(tmp_path):
    a = build_coco(CocoConfig(root=make_coco(tmp_path / "lab1")))
    b = build_coco(CocoConfig(root=make_coco(tmp_path / "elsewhere" / "lab2")))
    assert a.fingerprint == b.fingerprint
    write_manifest(a, tmp_path / "out1")
    write_manifest(b, tmp_path / "out2")
    assert read_manifest(tmp_path / "out1").fingerprint == read_manifest(tmp_path / "out2").fingerprint


def test_malformed_json_names_position(tmp_path):
    raw = make_coco(tmp_path / "raw")
    (raw / "annotations" / "instances_val2014.json").write_text('{"images": [\n  {"id": 1,,}]}')
    with pytest.raises(BadInputError, match=r"instances_val2014.json: malformed JSON at line 2, column 12"):
        build_coco(CocoConfig(root=raw))


def test_duplicate_image_ids_refused(tmp_path):
    raw = make_coco(tmp_path / "raw", splits={"train": [(1, [1]), (1, [3])], "val": [(2, [7])]})
    with pytest.raises(BadInputError, match="duplicate image id 1"):
        build_coco(CocoConfig(root=raw))


def test_unknown_category_and_image_refused(tmp_path):
    raw = make_coco(tmp_path / "raw", splits={"train": [(1, [99])], "val": [(2, [7])]})
    with pytest.raises(BadInputError, match="unknown category id 99"):
        build_coco(CocoConfig(root=raw))


def test_missing_image_listed_or_dropped(tmp_path):
    raw = make_coco(tmp_path / "raw")
    (raw / "train2014" / "COCO_train2014_000000000011.jpg").unlink()
    with pytest.raises(BadInputError, match=r"1 referenced image\(s\) missing on disk: train2014/COCO_train2014_000000000011.jpg"):
        build_coco(CocoConfig(root=raw))
    m = build_coco(CocoConfig(root=raw, allow_missing=True))
    assert len(m.images) == 4
    assert m.extra["missing"] == [{"key": "coco2014_train_000000000011", "split": "train", "path": "train2014/COCO_train2014_000000000011.jpg"}]


def test_empty_split_refused(tmp_path):
    raw = make_coco(tmp_path / "raw", splits={"train": [], "val": [(2, [7])]})
    with pytest.raises(BadInputError, match="empty"):
        build_coco(CocoConfig(root=raw))


def test_missing_annotation_file_named(tmp_path):
    raw = make_coco(tmp_path / "raw", splits={"val": [(2, [7])]})
    with pytest.raises(BadInputError, match="instances_train2014.json: file not found"):
        build_coco(CocoConfig(root=raw))


def test_real_coco2017_subset(real, tmp_path):
    m = build_coco(CocoConfig(root=real / "coco2017", year="2017", splits=("val",), subset=True, allow_missing=True))
    # the verbatim file has 50 images of which 5 JPEGs are shipped
    assert len(m.images) == 5 and len(m.extra["missing"]) == 45
    assert m.num_classes == 80 and m.extra["vocabulary"] == "coco80"
    assert m.category_source_ids[:3] == ["1", "2", "3"] and m.category_names[-1] == "toothbrush"
    row = dict(zip(m.images["key"], m.labels))
    empty = row["coco2017_val_000000226111"]
    assert (empty == -1).all()  # kept, all negative
    person, book = m.category_names.index("person"), m.category_names.index("book")
    assert row["coco2017_val_000000087038"][person] == 1
    assert row["coco2017_val_000000386912"][book] == 1


def test_real_coco_crowd_only_class_depends_on_option(real):
    # in 386912 'book' has 13 normal annotations and a crowd; count only crowd-only differences
    path = real / "coco2017" / "annotations" / "instances_val2017_5img.json"
    d = json.loads(path.read_text())
    crowd = [a for a in d["annotations"] if a["iscrowd"]]
    assert crowd  # the fixture has crowd annotations
    a = build_coco(CocoConfig(root=real / "coco2017", year="2017", splits=("val",), subset=True, allow_missing=True))
    b = build_coco(CocoConfig(root=real / "coco2017", year="2017", splits=("val",), subset=True, allow_missing=True, include_crowd=False))
    assert (a.labels >= b.labels).all()
    assert a.fingerprint != b.fingerprint


def test_coco80_counts_checked_unless_subset(real):
    with pytest.raises(BadInputError, match=r"expects 5,000 for val2017; pass --subset"):
        build_coco(CocoConfig(root=real / "coco2017", year="2017", splits=("val",), allow_missing=True))
