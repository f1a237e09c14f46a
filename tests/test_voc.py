import numpy as np
import pytest

from mlrpl_data.errors import BadInputError
from mlrpl_data.voc import VocConfig, build_voc07, read_image_set
from mlrpl_data.specs import voc20_names

from conftest import make_voc

C = {n: i for i, n in enumerate(voc20_names())}


def test_tiny_voc_labels_and_difficult_policies(tmp_path):
    root = make_voc(tmp_path / "raw")
    m = build_voc07(VocConfig(root=root, subset=True))
    assert m.images["key"].tolist() == ["voc2007_trainval_000005", "voc2007_trainval_000007", "voc2007_trainval_000009",
                                        "voc2007_test_000001", "voc2007_test_000002"]
    row = dict(zip(m.images["key"], m.labels))
    assert row["voc2007_trainval_000005"][C["chair"]] == 1  # one non-difficult chair suffices
    assert row["voc2007_trainval_000009"][C["person"]] == -1  # difficult-only -> negative (published)
    ign = build_voc07(VocConfig(root=root, subset=True, difficult="ignore"))
    assert dict(zip(ign.images["key"], ign.labels))["voc2007_trainval_000009"][C["person"]] == 0
    assert ign.fingerprint != m.fingerprint


def test_accepts_any_of_the_three_roots(tmp_path):
    root = make_voc(tmp_path / "raw")
    fps = {build_voc07(VocConfig(root=r, subset=True)).fingerprint
           for r in (root, root / "VOCdevkit", root / "VOCdevkit" / "VOC2007")}
    assert len(fps) == 1


def test_counts_checked_against_spec(tmp_path):
    with pytest.raises(BadInputError, match="expects 5,011"):
        build_voc07(VocConfig(root=make_voc(tmp_path / "raw")))


def test_unknown_class_named(tmp_path):
    root = make_voc(tmp_path / "raw", trainval={"000005": [("giraffe", 0)]})
    with pytest.raises(BadInputError, match=r"000005.xml: object 0 has unknown class name 'giraffe'"):
        build_voc07(VocConfig(root=root, subset=True))


def test_malformed_xml(tmp_path):
    root = make_voc(tmp_path / "raw")
    (root / "VOCdevkit/VOC2007/Annotations/000007.xml").write_text("<annotation><size></annotation>")
    with pytest.raises(BadInputError, match=r"000007.xml: malformed XML at line 1"):
        build_voc07(VocConfig(root=root, subset=True))


def test_entity_expansion_bomb_refused(tmp_path):
    root = make_voc(tmp_path / "raw")
    bomb = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
            + ']><annotation><size><width>1</width><height>1</height></size><object><name>&lol9;</name></object></annotation>')
    (root / "VOCdevkit/VOC2007/Annotations/000007.xml").write_text(bomb)
    with pytest.raises(BadInputError, match="refused XML"):
        build_voc07(VocConfig(root=root, subset=True))


def test_missing_xml_or_jpeg(tmp_path):
    root = make_voc(tmp_path / "raw")
    (root / "VOCdevkit/VOC2007/JPEGImages/000009.jpg").unlink()
    with pytest.raises(BadInputError, match="lack their JPEG or XML: JPEGImages/000009.jpg"):
        build_voc07(VocConfig(root=root, subset=True))
    m = build_voc07(VocConfig(root=root, subset=True, allow_missing=True))
    assert "voc2007_trainval_000009" not in set(m.images["key"])
    assert m.extra["missing"][0]["key"] == "voc2007_trainval_000009"


def test_empty_split(tmp_path):
    root = make_voc(tmp_path / "raw")
    (root / "VOCdevkit/VOC2007/ImageSets/Main/test.txt").write_text("\n")
    with pytest.raises(BadInputError, match="test.txt: the split is empty"):
        build_voc07(VocConfig(root=root, subset=True))


def test_per_class_list_is_not_a_split(real):
    # train_test.txt is the list of the class "train" in the test set
    with pytest.raises(BadInputError, match="per-class list"):
        read_image_set(real / "voc2007/VOCdevkit/VOC2007/ImageSets/Main/train_test.txt")


def test_real_voc_fixture(real):
    m = build_voc07(VocConfig(root=real / "voc2007", allow_missing=True))
    # the official lists (5,011 / 4,952) pass the count check; only 000001-000005 exist
    assert m.extra["spec_checks"] == {"trainval": "5011 listed, official 5011", "test": "4952 listed, official 4952"}
    assert m.images["key"].tolist() == ["voc2007_trainval_000005", "voc2007_test_000001", "voc2007_test_000002",
                                        "voc2007_test_000003", "voc2007_test_000004"]
    row = dict(zip(m.images["key"], m.labels))
    assert row["voc2007_test_000001"][C["dog"]] == 1 and row["voc2007_test_000001"][C["person"]] == 1
    assert row["voc2007_test_000004"][C["car"]] == 1 and (row["voc2007_test_000004"] == 1).sum() == 1
    assert row["voc2007_trainval_000005"][C["chair"]] == 1  # 3 non-difficult chairs
    assert m.images.set_index("key").loc["voc2007_test_000001", "width"] == 353


def test_real_voc_rows_match_published_label_matrix(real):
    """000005 is row 1 of trainval: the published label matrix must agree with our parse."""
    m = build_voc07(VocConfig(root=real / "voc2007", allow_missing=True))
    published = np.loadtxt(real / "hcp-voc2007/original-labels/train.txt", delimiter=",", dtype=int)
    trainval = (real / "voc2007/VOCdevkit/VOC2007/ImageSets/Main/trainval.txt").read_text().split()
    r = trainval.index("000005")
    np.testing.assert_array_equal(m.labels[0], published[r])
    test_pub = np.loadtxt(real / "hcp-voc2007/original-labels/val.txt", delimiter=",", dtype=int)
    test_ids = (real / "voc2007/VOCdevkit/VOC2007/ImageSets/Main/test.txt").read_text().split()
    for k in range(1, 5):
        np.testing.assert_array_equal(m.labels[k], test_pub[test_ids.index(f"00000{k}")])
