"""Builders of datasets whose labels are partial as released (Open Images, LVIS) and of NUS-WIDE and a
lab's own CSV: tiny files in each official format (written here from the formats' documentation),
the label matrix worked out by hand, then masks, shards and a training run on each."""

import json
from pathlib import Path

import pytest

from mlrpl_data.csvlabels import CsvConfig, build_csv
from mlrpl_data.errors import BadInputError
from mlrpl_data.lvis import LvisConfig, build_lvis
from mlrpl_data.folder import write_manifest
from mlrpl_data.masks import MaskConfig, make_masks, read_mask
from mlrpl_data.nuswide import NuswideConfig, build_nuswide
from mlrpl_data.openimages import OpenImagesConfig, build_openimages, read_image_labels
from mlrpl_data.shards import ShardConfig, write_shards
from mlrpl_data.stats import dataset_stats, format_stats

from conftest import write_jpeg


def colour(i):
    return (40 * i % 255, 90, 200 - 30 * i % 200)


# ---- Open Images --------------------------------------------------------------------------------------------

def open_images(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "class-descriptions-boxable.csv").write_text("/m/01g317,Person\n/m/0k4j,Car\n/m/07jdr,Train\n")
    (root / "oidv6-class-descriptions.csv").write_text(
        "LabelName,DisplayName\n/m/01g317,Person\n/m/0k4j,Car\n/m/07jdr,Train\n/m/0cat,Cat\n")
    train = ["ImageID,Source,LabelName,Confidence",
             "000a1,verification,/m/01g317,1", "000a1,verification,/m/0k4j,0",
             "000a2,crowdsource-verification,/m/07jdr,1", "000a2,verification,/m/0cat,1",  # cat: not boxable
             "000a3,verification,/m/0k4j,0", "000a3,crowdsource-verification,/m/0k4j,1",  # both: present wins
             "000a4,verification,/m/01g317,0", "000a4,verification,/m/07jdr,1",
             "000a5,verification,/m/0cat,1"]  # only a class outside the vocabulary: not an image of it
    (root / "train-annotations-human-imagelabels-boxable.csv").write_text("\n".join(train) + "\n")
    (root / "test-annotations-human-imagelabels-boxable.csv").write_text(
        "ImageID,Source,LabelName,Confidence\n000b1,verification,/m/0k4j,1\n000b2,verification,/m/01g317,0\n"
        "000b2,verification,/m/07jdr,1\n")
    (root / "validation-annotations-human-imagelabels-boxable.csv").write_text(
        "ImageID,Source,LabelName,Confidence\n000c1,verification,/m/0k4j,1\n")
    for i, (split, image) in enumerate([("train", "000a1"), ("train", "000a2"), ("train", "000a3"), ("train", "000a4"),
                                        ("train", "000a5"), ("test", "000b1"), ("test", "000b2"),
                                        ("validation", "000c1")]):
        write_jpeg(root / split / f"{image}.jpg", size=(40 + i, 30), color=colour(i))
    return root


def test_open_images_labels_by_hand(tmp_path):
    m = build_openimages(OpenImagesConfig(root=open_images(tmp_path / "oi"), progress=False))
    assert m.category_names == ["Person", "Car", "Train"] and m.category_source_ids == ["/m/01g317", "/m/0k4j", "/m/07jdr"]
    assert m.keys.tolist() == ["openimages-v6_000a1", "openimages-v6_000a2", "openimages-v6_000a3",
                               "openimages-v6_000a4", "openimages-v6_000b1", "openimages-v6_000b2"]
    assert m.labels.tolist() == [[1, -1, 0], [0, 0, 1], [0, 1, 0], [-1, 0, 1], [0, 1, 0], [-1, 0, 1]]
    assert m.images["width"].tolist() == [40, 41, 42, 43, 45, 46]  # read from the JPEG headers
    assert m.images["path"].tolist()[0] == "train/000a1.jpg"
    everything = build_openimages(OpenImagesConfig(root=tmp_path / "oi", classes="all", progress=False))
    assert everything.category_names == ["Person", "Car", "Train", "Cat"]
    assert everything.labels[everything.keys.tolist().index("openimages-v6_000a5")].tolist() == [0, 0, 0, 1]
    rare = build_openimages(OpenImagesConfig(root=tmp_path / "oi", min_positives=2, progress=False))
    assert rare.category_names == ["Train"]  # Person and Car have one train positive each
    val = build_openimages(OpenImagesConfig(root=tmp_path / "oi", test_split="validation", progress=False))
    assert val.images[val.images["split"] == "test"]["path"].tolist() == ["validation/000c1.jpg"]


def test_open_images_reader_streams_blocks(tmp_path):
    root = open_images(tmp_path / "oi")
    a = read_image_labels(root / "train-annotations-human-imagelabels-boxable.csv", ["/m/01g317", "/m/0k4j", "/m/07jdr"])
    b = read_image_labels(root / "train-annotations-human-imagelabels-boxable.csv", ["/m/01g317", "/m/0k4j", "/m/07jdr"],
                          block_size=64)  # many tiny blocks: the same triples
    assert a[0] == b[0] and all((x == y).all() for x, y in zip(a[1:], b[1:]))


def test_open_images_bad_input(tmp_path):
    root = open_images(tmp_path / "oi")
    (root / "test-annotations-human-imagelabels-boxable.csv").write_text(
        "ImageID,Source,LabelName,Confidence\n000b1,verification,/m/0k4j,0.5\n")
    with pytest.raises(BadInputError, match=r"test-annotations-human-imagelabels-boxable\.csv: Confidence 0\.5"):
        build_openimages(OpenImagesConfig(root=root, progress=False))
    (root / "test-annotations-human-imagelabels-boxable.csv").write_text("ImageID,LabelName\n000b1,/m/0k4j\n")
    with pytest.raises(BadInputError, match="needs columns ImageID, LabelName, Confidence"):
        build_openimages(OpenImagesConfig(root=root, progress=False))


# ---- LVIS ---------------------------------------------------------------------------------------------------------

def lvis(root: Path) -> Path:
    cats = [{"id": 1, "name": "aerosol_can", "frequency": "r"}, {"id": 2, "name": "apple", "frequency": "f"},
            {"id": 3, "name": "zebra", "frequency": "c"}]
    files = {
        "lvis_v1_train.json": ([(11, "train2017", [2], [3], [1]), (12, "train2017", [1], [], [])],
                               [(11, 1), (12, 2), (12, 3)]),
        "lvis_v1_val.json": ([(21, "val2017", [1], [], []), (22, "train2017", [], [3], [])], [(21, 2), (22, 1)]),
    }
    for name, (images, anns) in files.items():
        doc = {"images": [{"id": i, "width": 50 + i, "height": 40, "coco_url": f"http://images.cocodataset.org/{f}/{i:012d}.jpg",
                           "neg_category_ids": neg, "not_exhaustive_category_ids": ne}
                          for i, f, neg, ne, _ in [(a, b, c, d, e) for a, b, c, d, e in images]],
               "annotations": [{"id": k, "image_id": i, "category_id": c, "bbox": [0, 0, 1, 1], "area": 1}
                               for k, (i, c) in enumerate(anns)],
               "categories": cats}
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(doc))
        for i, f, *_ in images:
            write_jpeg(root / f / f"{i:012d}.jpg", color=colour(i))
    return root


def test_lvis_federated_labels_by_hand(tmp_path):
    m = build_lvis(LvisConfig(root=lvis(tmp_path / "lvis"), progress=False))
    assert m.category_names == ["aerosol_can", "apple", "zebra"]
    # 11: can annotated, apple negative, zebra unknown (not exhaustive is recorded, not a label)
    # 12: the can is a negative, apple and zebra annotated; 22: zebra not exhaustive, still unknown
    assert m.labels.tolist() == [[1, -1, 0], [-1, 1, 1], [-1, 1, 0], [1, 0, 0]]
    assert m.images["path"].tolist() == ["train2017/000000000011.jpg", "train2017/000000000012.jpg",
                                         "val2017/000000000021.jpg", "train2017/000000000022.jpg"]
    assert m.images["split"].tolist() == ["train", "train", "test", "test"]
    assert m.extra["not_exhaustive_category_ids"] == {"lvis-v1_train_11": [2], "lvis-v1_test_22": [2]}


def test_lvis_bad_input(tmp_path):
    root = lvis(tmp_path / "lvis")
    doc = json.loads((root / "lvis_v1_val.json").read_text())
    doc["images"][0]["neg_category_ids"] = [99]
    (root / "lvis_v1_val.json").write_text(json.dumps(doc))
    with pytest.raises(BadInputError, match=r"lvis_v1_val\.json: image 21: neg_category_ids has unknown category 99"):
        build_lvis(LvisConfig(root=root, progress=False))


# ---- NUS-WIDE ---------------------------------------------------------------------------------------------------

def nuswide(root: Path) -> Path:
    concepts = ["animal", "sky", "water"]
    lists = {"Train": ["animal\\0001_1111.jpg", "sky\\0002_2222.jpg", "water\\0003_3333.jpg"],
             "Test": ["animal\\0004_4444.jpg", "sky\\0005_5555.jpg"]}
    truth = {"Train": [[1, 0, 0], [0, 1, 1], [0, 0, 1]], "Test": [[1, 1, 0], [0, 1, 0]]}
    (root / "ConceptsList").mkdir(parents=True)
    (root / "ConceptsList" / "Concepts81.txt").write_text("\n".join(concepts) + "\n")
    (root / "ImageList").mkdir()
    (root / "Groundtruth" / "TrainTestLabels").mkdir(parents=True)
    for split, paths in lists.items():
        (root / "ImageList" / f"{split}Imagelist.txt").write_text("\r\n".join(paths) + "\r\n")
        for j, c in enumerate(concepts):
            (root / "Groundtruth" / "TrainTestLabels" / f"Labels_{c}_{split}.txt").write_text(
                "".join(f"{row[j]}\n" for row in truth[split]))
        for i, p in enumerate(paths):
            write_jpeg(root / "Flickr" / p.replace("\\", "/"), color=colour(i))
    return root


def test_nuswide_by_hand_and_missing_images(tmp_path):
    root = nuswide(tmp_path / "nus")
    m = build_nuswide(NuswideConfig(root=root, progress=False))
    assert m.category_names == ["animal", "sky", "water"]
    assert m.labels.tolist() == [[1, -1, -1], [-1, 1, 1], [-1, -1, 1], [1, 1, -1], [-1, 1, -1]]
    assert m.keys.tolist()[0] == "nuswide81_0001_1111" and m.images["path"][0] == "Flickr/animal/0001_1111.jpg"
    (root / "Flickr" / "sky" / "0002_2222.jpg").unlink()  # a dead Flickr URL
    with pytest.raises(BadInputError, match=r"1 image\(s\) of the annotations missing on disk: Flickr/sky/0002_2222\.jpg"):
        build_nuswide(NuswideConfig(root=root, progress=False))
    m = build_nuswide(NuswideConfig(root=root, allow_missing=True, progress=False))
    assert len(m.keys) == 4 and m.extra["missing"] == [{"key": "nuswide81_0002_2222", "split": "train",
                                                        "path": "Flickr/sky/0002_2222.jpg"}]


def test_nuswide_bad_input(tmp_path):
    root = nuswide(tmp_path / "nus")
    (root / "Groundtruth" / "TrainTestLabels" / "Labels_sky_Test.txt").write_text("1\n")
    with pytest.raises(BadInputError, match=r"Labels_sky_Test\.txt: 1 lines, TestImagelist\.txt lists 2 images"):
        build_nuswide(NuswideConfig(root=root, progress=False))


# ---- a lab's CSV ----------------------------------------------------------------------------------------------------

def lab_csv(tmp_path: Path, text: str, n: int = 4) -> Path:
    for i in range(n):
        write_jpeg(tmp_path / "img" / f"a{i}.jpg", color=colour(i))
    (tmp_path / "labels.csv").write_text(text)
    return tmp_path / "labels.csv"


def test_csv_columns_and_labels_forms(tmp_path):
    f = lab_csv(tmp_path, "path,split,cat,dog\nimg/a0.jpg,train,1,-1\nimg/a1.jpg,train,,1\nimg/a2.jpg,test,0,-1\n"
                          "img/a3.jpg,test,-1,\n")
    m = build_csv(CsvConfig(labels=f, images=tmp_path, progress=False))
    assert m.category_names == ["cat", "dog"] and m.labels.tolist() == [[1, -1], [0, 1], [0, -1], [-1, 0]]
    assert m.keys.tolist() == ["custom_img_a0", "custom_img_a1", "custom_img_a2", "custom_img_a3"]
    f = lab_csv(tmp_path, "path,split,labels\nimg/a0.jpg,train,dog;cat\nimg/a1.jpg,train,\nimg/a2.jpg,test,bird\n"
                          "img/a3.jpg,test,cat\n")
    m = build_csv(CsvConfig(labels=f, images=tmp_path, progress=False))
    assert m.category_names == ["bird", "cat", "dog"]
    assert m.labels.tolist() == [[-1, 1, 1], [-1, -1, -1], [1, -1, -1], [-1, 1, -1]]


def test_csv_bad_input(tmp_path):
    f = lab_csv(tmp_path, "path,split,cat\nimg/a0.jpg,train,yes\n")
    with pytest.raises(BadInputError, match=r"labels\.csv: line 2, column 'cat': 'yes' must be 1, -1, 0 or empty"):
        build_csv(CsvConfig(labels=f, images=tmp_path, progress=False))
    f = lab_csv(tmp_path, "path,cat\n../etc/passwd,1\n")
    with pytest.raises(BadInputError, match="must be relative to --images"):
        build_csv(CsvConfig(labels=f, images=tmp_path, progress=False))


# ---- downstream: masks never reveal the unknown, stats, shards and a training run on each -------------------------

BUILDERS = {
    "openimages": lambda t: build_openimages(OpenImagesConfig(root=open_images(t / "oi"), progress=False)),
    "lvis": lambda t: build_lvis(LvisConfig(root=lvis(t / "lvis"), progress=False)),
    "nuswide": lambda t: build_nuswide(NuswideConfig(root=nuswide(t / "nus"), progress=False)),
    "csv": lambda t: build_csv(CsvConfig(labels=lab_csv(t / "lab", "path,split,cat,dog\nimg/a0.jpg,train,1,\nimg/a1.jpg,train,,1\n"
                                                              "img/a2.jpg,test,-1,1\nimg/a3.jpg,train,1,-1\n"),
                                         images=t / "lab", progress=False)),
}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_masks_shards_and_training_on_natural_labels(tmp_path, kind):
    from mlrpl_train.engine import train
    from mlrpl_train.options import TrainConfig

    m = BUILDERS[kind](tmp_path)
    d = tmp_path / "dataset"
    write_manifest(m, d)
    [(mask, _)] = make_masks(d, MaskConfig(proportions=[0.9], seed=3))
    got = read_mask(d, mask.name)
    full = m.labels[m.split_rows("train")]
    assert (got.labels != 0).sum() >= 0.5 * (full != 0).sum()  # most known labels stay known at 90% ...
    assert not ((got.labels != 0) & (full == 0)).any()  # ... and no unknown label ever becomes known
    assert ((got.labels == 0) | (got.labels == full)).all()
    s = dataset_stats(m)["splits"]["train"]
    assert sum(s["unknown_per_class"].values()) == int((full == 0).sum())
    if (full == 0).any():
        assert "train ?" in format_stats(dataset_stats(m))
    write_shards(d, ShardConfig(max_samples=2, shard_size=None, progress=False))
    run = train(TrainConfig(method="pbce", dataset=str(d), masks=mask.name, out=str(tmp_path / "run"), backbone="tiny",
                            weights="none", epochs=1, batch_size=2, image_size=32, workers=0, progress=False,
                            val_fraction=0.0))
    assert (run / "last.pt").is_file() and json.loads((d / "dataset.json").read_text())["options"]["format"] == kind
    assert "## Licence" in (d / "README.md").read_text()
