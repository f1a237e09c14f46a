"""Every config the dataset cards declare loads in Hugging Face `datasets`: the shards through its
WebDataset builder (README.md), each mask through its Parquet builder (masks/README.md), on the
folder write-shards made and on a pulled subset. Skipped when `datasets` is not installed."""

import dataclasses
import json

import numpy as np
import pytest
import yaml

from mlrpl_data.folder import CARD, MASKS_CARD, read_manifest, write_manifest
from mlrpl_data.masks import MaskConfig, make_masks
from mlrpl_data.pull import PullConfig, pull
from mlrpl_data.shards import ShardConfig, write_shards
from mlrpl_data.verify import verify

from test_shards import CFG, dataset

datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is not installed (pip install '.[test]')")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Nothing downloaded, nothing written to ~: the cache in tmp_path, the Hub off."""
    for var in ("HF_HOME", "HF_DATASETS_CACHE"):
        monkeypatch.setenv(var, str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    # datasets read HF_HOME when first imported (here, at collection): its cache paths are moved as well
    for attr in ("HF_CACHE_HOME", "HF_DATASETS_CACHE", "HF_MODULES_CACHE"):
        monkeypatch.setattr(datasets.config, attr, tmp_path / "hf" / attr.lower(), raising=False)


def configs(card_path) -> dict[str, dict[str, str]]:
    """config name -> {split: path pattern}, as the card's YAML header declares them."""
    doc = yaml.safe_load(card_path.read_text().split("---\n")[1])
    return {c["config_name"]: {f["split"]: f["path"] for f in c["data_files"]} for c in doc.get("configs", [])}


def load(folder, name, tmp_path):
    return datasets.load_dataset(str(folder), name, cache_dir=str(tmp_path / "hf-cache"))


def published(tmp_path):
    """23 train and 7 test images; a train mask (50%, seed 0) and a test mask (30%, seed 1); 7 shards."""
    d = dataset(tmp_path)
    make_masks(d, MaskConfig(proportions=[0.5], seed=0))
    make_masks(d, MaskConfig(proportions=[0.3], seed=1, split="test"))
    write_shards(d, ShardConfig(**CFG))
    return d


def check_every_config(d, tmp_path, splits=("test", "train"), masks=("uniform-p0.30-s1-test", "uniform-p0.50-s0")):
    m = read_manifest(d)
    assert configs(d / CARD) == {"default": {sp: f"shards/{sp}-*.tar" for sp in splits}}
    shards = load(d, "default", tmp_path)
    assert sorted(shards) == sorted(splits)
    for sp in splits:
        assert sorted(shards[sp]["__key__"]) == sorted(m.keys[m.split_rows(sp)])  # 23 train, 7 test
        labels = {k: json.loads(j)["labels"] if isinstance(j, (str, bytes)) else j["labels"]
                  for k, j in zip(shards[sp]["__key__"], shards[sp]["json"])}
        rows = {k: i for i, k in enumerate(m.keys)}
        assert all(labels[k] == m.labels[rows[k]].tolist() for k in labels)
    declared = configs(d / MASKS_CARD) if masks else {}
    assert sorted(declared) == sorted(masks)
    for name, files in declared.items():
        (split,) = files
        got = load(d / "masks", name, tmp_path)[split]
        side = json.loads((d / "masks" / f"{name}.json").read_text())
        labels = np.array(got["labels"], dtype=np.int8)
        assert sorted(got["key"]) == sorted(m.keys[m.split_rows(side["split"])])
        assert labels.shape == (side["stats"]["images"], 3)
        assert int((labels == 1).sum()) == side["stats"]["known_positives"]
        assert int((labels == -1).sum()) == side["stats"]["known_negatives"]
        assert round(float((labels != 0).mean()), 12) == round(side["stats"]["known_proportion"], 12)


def check_images_config(d, tmp_path):
    """`load_dataset(DIR)` on a folder without shards: the images table, every row, labels as built."""
    m = read_manifest(d)
    got = datasets.load_dataset(str(d), cache_dir=str(tmp_path / "hf-cache"))  # no config named: the only one
    assert list(got) == ["images"]
    rows = got["images"]
    assert rows["key"] == list(m.keys) and rows["split"] == m.images["split"].tolist()  # 23 train, 7 test
    assert np.array_equal(np.array(rows["labels"], dtype=np.int8), m.labels)


def test_a_folder_before_write_shards_loads_its_images_table(tmp_path):
    d = dataset(tmp_path / "a")
    make_masks(d, MaskConfig(proportions=[0.5], seed=0))
    assert configs(d / CARD) == {"images": {"images": "images.parquet"}}
    check_images_config(d, tmp_path)
    write_shards(d, ShardConfig(**CFG))  # the shards take the root card over
    check_every_config(d, tmp_path, masks=("uniform-p0.50-s0",))


def test_every_config_of_both_cards_loads(tmp_path):
    d = published(tmp_path / "a")
    side = json.loads((d / "masks" / "uniform-p0.50-s0.json").read_text())["stats"]
    # the tiny dataset's labels, worked by hand: 23 train images x 3 classes, about half known
    assert side["images"] == 23 and side["entries"] == 69
    check_every_config(d, tmp_path)


def test_a_pulled_subset_declares_only_what_it_holds(tmp_path):
    d = published(tmp_path / "a")
    train = tmp_path / "train-only"
    pull(d, train, PullConfig(progress=False, split="train", masks="uniform-p0.50-s0"))
    check_every_config(train, tmp_path, splits=("train",), masks=("uniform-p0.50-s0",))
    listed = {f["path"]: f["sha256"] for f in json.loads((train / "files.json").read_text())["files"]}
    assert "masks/uniform-p0.30-s1-test.json" not in listed  # the copy's own listing, not the source's
    assert verify(train, split="train") == []
    again = pull(d, train, PullConfig(progress=False, split="train", masks="uniform-p0.50-s0"))
    assert again.fetched == []  # its own cards are not taken for altered files
    no_shards = tmp_path / "no-shards"
    pull(d, no_shards, PullConfig(progress=False, shards=False))
    assert configs(no_shards / CARD) == {"images": {"images": "images.parquet"}}
    check_images_config(no_shards, tmp_path)
    assert sorted(configs(no_shards / MASKS_CARD)) == ["uniform-p0.30-s1-test", "uniform-p0.50-s0"]
    for name in configs(no_shards / MASKS_CARD):
        want = {"test": 7} if name.endswith("-test") else {"train": 23}
        assert load(no_shards / "masks", name, tmp_path).num_rows == want
    full = tmp_path / "full"
    pull(d, full, PullConfig(progress=False))
    for name in (CARD, MASKS_CARD, "files.json"):
        assert (full / name).read_bytes() == (d / name).read_bytes()  # a whole copy keeps the source's bytes


def test_a_version_with_colon_and_hash_loads(tmp_path):
    raw_folder = dataset(tmp_path / "a")
    m = dataclasses.replace(read_manifest(raw_folder), version="2014: relabelled # lab A")
    out = tmp_path / "v2"
    write_manifest(m, out)
    make_masks(out, MaskConfig(proportions=[0.5], seed=0))
    write_shards(out, ShardConfig(**CFG))
    assert yaml.safe_load((out / CARD).read_text().split("---\n")[1])["pretty_name"] == \
        "coco2014 2014: relabelled # lab A (mlrpl)"
    check_every_config(out, tmp_path, masks=("uniform-p0.50-s0",))
