"""The dataset card (README.md), files.json, and no local path in anything shared."""

import hashlib
import json
import shutil

import pytest

from mlrpl_data.errors import BadInputError
from mlrpl_data.folder import CARD, FILES, LOCAL, MASKS_CARD
from mlrpl_data.folder import read_manifest
from mlrpl_data.masks import MaskConfig, make_masks
from mlrpl_data.shards import ShardConfig, write_shards

from test_shards import CFG, dataset


def yaml_header(text: str) -> list[str]:
    assert text.startswith("---\n")
    return text.split("---\n")[1].splitlines()


def test_card_lists_splits_and_masks_and_is_regenerated(tmp_path):
    d = dataset(tmp_path)
    card = (d / CARD).read_text()
    assert "None yet" in card  # no shards, no masks yet: the root config is the images table
    assert yaml_header(card)[-5:] == ["configs:", "- config_name: images", "  data_files:", "  - split: images",
                                      "    path: images.parquet"]
    assert "license: cc-by-4.0" in card and "Lin et al." in card and "2205.13092" in card
    make_masks(d, MaskConfig(proportions=[0.5], seed=0))
    card = (d / CARD).read_text()
    header = yaml_header((d / MASKS_CARD).read_text())  # the masks' own card: one builder per folder in datasets
    assert "- config_name: uniform-p0.50-s0" in header
    assert "    path: uniform-p0.50-s0.parquet" in header
    assert "- config_name: images" in card and "config_name: uniform" not in card  # masks: their own card
    # 23 train images x 3 classes at 50%: the mask's own stats, not a template
    meta = json.loads((d / "masks" / "uniform-p0.50-s0.json").read_text())
    row = next(line for line in card.splitlines() if line.startswith("| uniform-p0.50-s0 |"))
    assert row.split(" | ")[2:4] == ["23", f"{meta['stats']['known_proportion']:.3f}"]
    write_shards(d, ShardConfig(**CFG))
    header = yaml_header((d / CARD).read_text())
    i = header.index("- config_name: default")
    assert header[i + 1:i + 6] == ["  data_files:", "  - split: test", "    path: shards/test-*.tar",
                                   "  - split: train", "    path: shards/train-*.tar"]
    assert "fingerprint" in (d / CARD).read_text().lower()


def test_files_json_lists_every_shared_file_with_its_sha256(tmp_path):
    d = dataset(tmp_path)
    make_masks(d, MaskConfig(proportions=[0.3], seed=1))
    write_shards(d, ShardConfig(**CFG))
    listed = {f["path"]: f for f in json.loads((d / FILES).read_text())["files"]}
    assert set(listed) == {"dataset.json", "categories.parquet", "images.parquet", "README.md", "shards/index.json",
                           "shards/SHA256SUMS", "masks/README.md", "masks/uniform-p0.30-s1.json",
                           "masks/uniform-p0.30-s1.parquet"}
    for path, f in listed.items():
        data = (d / path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (f["bytes"], f["sha256"]), path


def test_no_local_path_in_shared_files_and_two_labs_write_the_same_bytes(tmp_path):
    a = dataset(tmp_path / "a")
    b = dataset(tmp_path / "b")  # the same raw data in another folder
    for d in (a, b):
        make_masks(d, MaskConfig(proportions=[0.5], seed=0))
        write_shards(d, ShardConfig(**CFG))
    for name in ("dataset.json", CARD, MASKS_CARD, FILES):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
        assert str(tmp_path) not in (a / name).read_text(), name
    # the raw root lives in a local-only file, which write-shards reads
    assert json.loads((a / LOCAL).read_text())["root"] == str(tmp_path / "a" / "raw")
    assert read_manifest(a).root == str(tmp_path / "a" / "raw")


def test_write_shards_without_a_local_root_asks_for_root(tmp_path):
    d = dataset(tmp_path)
    copy = tmp_path / "pulled"
    shutil.copytree(d, copy)
    (copy / LOCAL).unlink()  # as a pulled dataset: no raw root on this machine
    with pytest.raises(BadInputError, match="--root"):
        write_shards(copy, ShardConfig(**CFG))
    write_shards(copy, ShardConfig(root=tmp_path / "raw", **CFG))
    write_shards(d, ShardConfig(**CFG))
    assert (copy / "shards" / "index.json").read_bytes() == (d / "shards" / "index.json").read_bytes()


def test_the_yaml_header_is_yaml_whatever_the_version_holds(tmp_path):
    import yaml

    from mlrpl_data.card import yaml_header as header_text

    card = {"name": "coco2014", "version": "v2: relabelled # by lab A"}
    text = header_text(card, "cc-by-4.0", [{"config_name": "default",
                                            "data_files": [{"split": "train", "path": "shards/train-*.tar"}]}])
    assert text.startswith("---\n") and text.endswith("\n---")
    doc = yaml.safe_load(text.strip("-\n"))
    assert doc["pretty_name"] == "coco2014 v2: relabelled # by lab A (mlrpl)"  # a string, not a mapping nor a comment
    assert doc["configs"][0]["data_files"] == [{"split": "train", "path": "shards/train-*.tar"}]
    assert list(doc) == ["pretty_name", "license", "task_categories", "tags", "configs"]


def test_masks_card_follows_the_masks_and_goes_with_the_last(tmp_path):
    d = dataset(tmp_path)
    make_masks(d, MaskConfig(proportions=[0.5], seed=0))
    make_masks(d, MaskConfig(proportions=[0.3], seed=2, split="test"))
    import yaml

    doc = yaml.safe_load((d / MASKS_CARD).read_text().split("---\n")[1])
    assert doc["configs"] == [
        {"config_name": "uniform-p0.30-s2-test", "data_files": [{"split": "test", "path": "uniform-p0.30-s2-test.parquet"}]},
        {"config_name": "uniform-p0.50-s0", "data_files": [{"split": "train", "path": "uniform-p0.50-s0.parquet"}]}]
    for name in ("uniform-p0.30-s2-test", "uniform-p0.50-s0"):
        for ext in (".json", ".parquet"):
            (d / "masks" / f"{name}{ext}").unlink()
    from mlrpl_data.folder import DatasetFolder

    DatasetFolder(d).refresh()
    assert not (d / MASKS_CARD).exists()
    assert "masks/README.md" not in (d / FILES).read_text()
