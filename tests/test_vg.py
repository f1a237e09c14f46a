import json

import pytest

from mlrpl_data.errors import BadInputError
from mlrpl_data.vg import SsgrlConfig, VgConfig, build_vg200, build_vg200_ssgrl, normalise_name, split_test_ids

from conftest import make_vg, write_jpeg


def test_vocabulary_by_image_count_ties_by_name(tmp_path):
    m = build_vg200(VgConfig(root=make_vg(tmp_path / "raw"), num_classes=4, test_size=2))
    # tree: images 1,2,5 (3); man: 1,4 (2); car: 2,3 (2); then dog/street light/trees (1) -> 'dog'
    assert m.category_names == ["tree", "car", "man", "dog"]
    row = dict(zip(m.images["key"], m.labels))
    assert row["vg_1"].tolist() == [1, -1, 1, -1]  # "man"/"person" counts as man (first name)
    assert (row["vg_6"] == -1).all()  # images without objects are kept
    assert m.images.set_index("key").loc["vg_1", "path"] == "VG_100K_2/1.jpg"


def test_aliases_merge_names(tmp_path):
    raw = make_vg(tmp_path / "raw")
    (raw / "object_alias.txt").write_text("tree,trees\n")
    m = build_vg200(VgConfig(root=raw, num_classes=2, test_size=2))
    assert m.category_names[0] == "tree"
    assert m.extra["image_counts"]["tree"] == 3  # image 1 has tree and trees: counted once


def test_split_is_seeded_and_order_free(tmp_path):
    ids = list(range(100))
    assert split_test_ids(ids, 10, 0) == split_test_ids(ids[::-1], 10, 0)
    assert split_test_ids(ids, 10, 0) != split_test_ids(ids, 10, 1)
    raw = make_vg(tmp_path / "raw")
    a = build_vg200(VgConfig(root=raw, num_classes=3, test_size=2))
    data = json.loads((raw / "image_data.json").read_text())
    objs = json.loads((raw / "objects.json").read_text())
    (raw / "objects.json").write_text(json.dumps(objs[::-1]))
    b = build_vg200(VgConfig(root=raw, num_classes=3, test_size=2))
    assert a.fingerprint == b.fingerprint  # objects.json order does not matter
    assert sorted(a.images.loc[a.images.split == "test", "key"]) == sorted(b.images.loc[b.images.split == "test", "key"])
    assert len(data) == 6


def test_bad_inputs(tmp_path):
    raw = make_vg(tmp_path / "raw")
    with pytest.raises(BadInputError, match="--test-size 6"):
        build_vg200(VgConfig(root=raw, test_size=6))
    (raw / "objects.json").write_text('[{"image_id": 1, "objects": [}]')
    with pytest.raises(BadInputError, match=r"objects.json: malformed JSON at line 1, column 30 \(byte 29\)"):
        build_vg200(VgConfig(root=raw, test_size=2))
    raw2 = make_vg(tmp_path / "raw2")
    (raw2 / "VG_100K" / "3.jpg").unlink()
    with pytest.raises(BadInputError, match=r"1 image\(s\) missing"):
        build_vg200(VgConfig(root=raw2, test_size=2))
    assert len(build_vg200(VgConfig(root=raw2, test_size=2, allow_missing=True)).images) == 5


def test_image_in_other_folder_is_found(tmp_path):
    raw = make_vg(tmp_path / "raw")
    (raw / "VG_100K" / "4.jpg").rename(raw / "VG_100K_2" / "4.jpg")
    m = build_vg200(VgConfig(root=raw, test_size=2))
    assert m.images.set_index("key").loc["vg_4", "path"] == "VG_100K_2/4.jpg"


def test_real_vg12_several_names_and_empty_synsets(real, tmp_path):
    src = real / "visual_genome/v1.2"
    raw = tmp_path / "vg"
    raw.mkdir()
    for f in ("objects.json", "image_data.json"):
        (raw / f).symlink_to(src / f)
    for rec in json.loads((src / "image_data.json").read_text()):
        folder = rec["url"].split("/")[-2]
        write_jpeg(raw / folder / f"{rec['image_id']}.jpg")
    m = build_vg200(VgConfig(root=raw, test_size=1))
    assert len(m.images) == 5
    assert m.num_classes == len(m.extra["image_counts"]) == 113  # fewer than 200 names in 5 images: all kept
    assert "fewer than 200" in m.extra["warnings"][0]
    objs = json.loads((src / "objects.json").read_text())
    # 'street light' has empty synsets in image 2 and is still a name
    assert "street light" in m.category_names
    row = dict(zip(m.images["key"], m.labels))
    assert row["vg_2"][m.category_names.index("street light")] == 1
    # ["monitor","computer"] in image 3: the first name is used
    assert row["vg_3"][m.category_names.index("monitor")] == 1
    three = {normalise_name(o["names"][0]) for o in objs[2]["objects"]}
    assert {n for n, v in zip(m.category_names, row["vg_3"]) if v == 1} == three & set(m.category_names)
    # ranking: by image count desc, ties by name
    counts = m.extra["image_counts"]
    ranked = [counts[n] for n in m.category_names]
    assert ranked == sorted(ranked, reverse=True)
    for a, b in zip(m.category_names, m.category_names[1:]):
        assert counts[a] > counts[b] or a < b


def test_ssgrl_split(real, tmp_path):
    train = (real / "ssgrl-vg/train_list_500.txt").read_text().split()[:4]
    test = (real / "ssgrl-vg/test_list_500.txt").read_text().split()[:3]
    raw = tmp_path / "vg"
    for i, n in enumerate(train + test):
        write_jpeg(raw / ("VG_100K" if i % 2 else "VG_100K_2") / n, size=(20 + i, 10))
    (tmp_path / "train.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(test) + "\n")
    labels = {n: [i, 150 + i, 300 + i] for i, n in enumerate(train + test)}  # classes >= 200 are outside VG-200
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    m = build_vg200_ssgrl(SsgrlConfig(root=raw, train_list=tmp_path / "train.txt", test_list=tmp_path / "test.txt",
                                      labels=tmp_path / "labels.json", label_classes=500))
    assert m.num_classes == 200 and m.counts() == {"train": 4, "test": 3}
    assert m.images["key"][0] == "vg_" + train[0][:-4]
    assert (m.labels == 1).sum(axis=1).tolist() == [2] * 7
    assert m.labels[0, 0] == 1 and m.labels[0, 150] == 1
    assert m.images["width"].tolist() == [20 + i for i in range(7)]
    # same columns as the raw build
    assert list(m.images.columns) == ["key", "split", "path", "width", "height"]
    with pytest.raises(BadInputError, match="also in"):
        (tmp_path / "test.txt").write_text(train[0] + "\n")
        build_vg200_ssgrl(SsgrlConfig(root=raw, train_list=tmp_path / "train.txt", test_list=tmp_path / "test.txt",
                                      labels=tmp_path / "labels.json", label_classes=500))


def test_ssgrl_labels_file_kind_is_explicit_and_recorded(tmp_path, monkeypatch):
    """The authors' VG-200 reads a 200-class labels file; a VG-500 file's first 200 classes are
    taken only when --ssgrl-classes 500 says so, and such a dataset is not the benchmark."""
    raw = tmp_path / "vg"
    for n in ("1.jpg", "2.jpg", "3.jpg"):
        write_jpeg(raw / "VG_100K" / n)
    (tmp_path / "train.txt").write_text("1.jpg\n2.jpg\n")
    (tmp_path / "test.txt").write_text("3.jpg\n")

    def build(labels, name="labels.json", **kw):
        (tmp_path / name).write_text(json.dumps(labels))
        return build_vg200_ssgrl(SsgrlConfig(root=raw, train_list=tmp_path / "train.txt",
                                             test_list=tmp_path / "test.txt", labels=tmp_path / name, **kw))

    m = build({"1.jpg": [0, 199], "2.jpg": [5], "3.jpg": []})
    assert m.extra["benchmark"] is None and not m.extra["ssgrl_lists"]  # three names are not SSGRL's lists
    from mlrpl_data import vg

    monkeypatch.setattr(vg, "ssgrl_lists_match", lambda train, test: True)  # as if they were
    m = build({"1.jpg": [0, 199], "2.jpg": [5], "3.jpg": []})
    assert m.extra["benchmark"] == "vg200-ssgrl" and m.options["label_classes"] == 200
    assert m.category_names[199] == "vg200_class_199" and m.labels[0, 199] == 1 and m.labels[1, 5] == 1
    assert m.dataset_card()["benchmark"] == "vg200-ssgrl"  # dataset.json says which VG-200 it is
    vg500 = {"1.jpg": [0, 150, 300], "2.jpg": [5], "3.jpg": [499]}
    with pytest.raises(BadInputError, match=r"labels\.json: indexes classes up to 499: a VG-500 labels file.*"
                                            r"vg_category_200_labels_index\.json.*--ssgrl-classes 500"):
        build(vg500)
    m = build(vg500, label_classes=500)
    assert m.extra["benchmark"] is None and m.options["label_classes"] == 500
    assert m.labels[0].tolist().count(1) == 2 and m.labels[0, 150] == 1 and (m.labels[2] == -1).all()  # 300, 499 dropped
    with pytest.raises(BadInputError, match=r"indexes class 499, so it is not a 200-class labels file"):
        build(vg500, label_classes=200)
    with pytest.raises(BadInputError, match=r"named like a VG-500 file.*--ssgrl-classes 200 or --ssgrl-classes 500"):
        build({"1.jpg": [0], "2.jpg": [1], "3.jpg": [2]}, name="vg_category_500_labels_index.json")
    with pytest.raises(BadInputError, match=r"--num-classes 150: a 200-class labels file"):
        build({"1.jpg": [0], "2.jpg": [1], "3.jpg": [2]}, num_classes=150)


def test_only_ssgrls_own_lists_are_the_benchmark(real, tmp_path):
    """The real lists (as a lab has them, also with CRLF and a BOM) match; one name changed does not."""
    from mlrpl_data.rawfiles import read_lines
    from mlrpl_data.vg import ssgrl_lists_match

    def names(path):
        return [line.strip() for _, line in read_lines(path, "list file")]

    train, test = names(real / "ssgrl-vg/train_list_500.txt"), names(real / "ssgrl-vg/test_list_500.txt")
    assert (len(train), len(test)) == (82904, 10000) and ssgrl_lists_match(train, test)
    crlf = tmp_path / "test.txt"
    crlf.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(test).encode() + b"\r\n")
    assert ssgrl_lists_match(train, names(crlf))
    assert not ssgrl_lists_match(train, test[:-1] + ["1.jpg"])  # the same size, another image
    assert not ssgrl_lists_match(test, train)
