"""The dataset-folder object: one code path per file (local paths as local paths), each file read once,
the one mask-name rule, and proportions read from the masks' sidecars."""

import json

import numpy as np
import pytest

from mlrpl_data.errors import BadInputError
from mlrpl_data.folder import DatasetFolder
from mlrpl_data.folder import read_manifest
from mlrpl_data.masks import MaskConfig, make_masks, mask_name, parse_mask_name

from test_shards import dataset


def test_class_names_of_a_folder_named_with_url_characters(tmp_path):
    """`::` is fsspec's URL chaining and `#` a URL fragment: a local folder so named is still a local folder."""
    from mlrpl_data.embeddings import embed_labels

    d = dataset(tmp_path / "lab::2026 #1")
    folder = DatasetFolder(d)
    assert not folder.remote and "::" in folder.url and "#" in folder.url
    assert folder.class_names == ["person", "car", "train"]  # conftest.make_coco's categories 1, 3, 7
    assert folder.class_names == read_manifest(d).category_names
    np.save(tmp_path / "e.npy", np.eye(3, 4, dtype=np.float32))
    assert embed_labels(d, tmp_path / "e.npy")["classes"] == ["person", "car", "train"]
    assert folder.embeddings_path == f"{d}/label_embeddings.npy"


def test_each_file_is_read_once(tmp_path, monkeypatch):
    """Reading the manifest, its class names and a mask through one folder reads each file once."""
    import mlrpl_data.readers as readers
    from mlrpl_data.masks import read_mask

    d = dataset(tmp_path)
    make_masks(d, MaskConfig(proportions=[0.5]))
    reads = []
    real = readers.read_bytes
    monkeypatch.setattr(readers, "read_bytes", lambda url, limit: reads.append(url.rsplit("/", 1)[-1]) or real(url, limit))
    folder = DatasetFolder(d)
    m = read_manifest(folder)
    assert folder.class_names == m.category_names and folder.card["name"] == m.name
    read_mask(folder, "uniform-p0.50-s0")
    assert folder.mask_sidecars()[0]["proportion"] == 0.5
    assert sorted(reads) == ["categories.parquet", "dataset.json", "images.parquet", "uniform-p0.50-s0.json",
                             "uniform-p0.50-s0.parquet"]


def test_evaluate_reads_dataset_json_once(tmp_path, monkeypatch):
    import mlrpl_data.readers as readers
    from mlrpl_train.engine import train
    from mlrpl_train.reports import evaluate_checkpoint
    from mlrpl_train.options import TrainConfig
    from trainkit import tiny_training_set

    d = tiny_training_set(tmp_path, n_train=8, n_test=4, max_samples=4)
    run = train(TrainConfig(method="pbce", dataset=str(d), masks="uniform-p0.50-s0", out=str(tmp_path / "run"),
                            backbone="tiny", weights="none", epochs=1, batch_size=4, image_size=16, workers=0,
                            progress=False, val_fraction=0.0))
    reads = []
    real = readers.read_bytes
    monkeypatch.setattr(readers, "read_bytes", lambda url, limit: reads.append(url.rsplit("/", 1)[-1]) or real(url, limit))
    evaluate_checkpoint(run, str(d), tmp_path / "report", workers=0)
    assert reads.count("dataset.json") == 1 and reads.count("categories.parquet") == 1


def test_one_mask_name_rule_written_and_read():
    assert mask_name("per-image", 0.25, 3, "all") == "per-image-p0.25-s3-all"
    assert parse_mask_name("per-image-p0.25-s3-all") == {"scheme": "per-image", "proportion": 0.25, "seed": 3,
                                                         "split": "all"}
    assert parse_mask_name(mask_name("single-positive", None, 2, "test")) == {
        "scheme": "single-positive", "proportion": None, "seed": 2, "split": "test"}
    assert parse_mask_name("gcn-ml-p0.000001-s10") == {"scheme": "gcn-ml", "proportion": 1e-6, "seed": 10,
                                                       "split": "train"}
    for bad in ("uniform-p0.30", "Uniform-p0.30-s0", "uniform-p0.30-s0-val", "uniform-p.3-s0", "../x-s0"):
        assert parse_mask_name(bad) is None, bad


def sidecar(d, name: str, proportion: float) -> None:
    (d / "masks").mkdir(parents=True, exist_ok=True)
    (d / "masks" / f"{name}.json").write_text(json.dumps({
        "name": name, "fingerprint": "f", "scheme": "uniform", "seed": 0, "split": "train", "num_classes": 80,
        "content_sha256": "0", "stats": {}, "proportion": proportion}))


def test_the_published_figure_is_the_sidecars_proportion(tmp_path, monkeypatch):
    """A mask's proportion is its sidecar's: a (hand-made) sidecar saying 0.5 under the name p0.10 gives
    Table 1's DSRB MS-COCO figure at 50% (79.6), not at 10% (72.5); without a sidecar, the name's."""
    from mlrpl_data.specs import load_spec
    from mlrpl_train import reports
    from mlrpl_train.published import whole_counts

    monkeypatch.setattr(reports, "read_card", lambda d: {"name": "coco2014", "counts": whole_counts("coco2014")})
    coco = [c["name"] for c in load_spec("coco80")["categories"]]
    sidecar(tmp_path, "uniform-p0.10-s0", 0.5)
    assert reports._published_beside(tmp_path, coco, "dsrb", "uniform-p0.10-s0", {"mAP_voc": 0.7})["mAP"] == \
        pytest.approx(0.796)
    assert reports._published_beside(tmp_path / "none", coco, "dsrb", "uniform-p0.10-s0", {"mAP_voc": 0.7})["mAP"] == \
        pytest.approx(0.725)


def test_sweep_tables_take_the_proportion_from_the_runs_mask_sidecar(tmp_path):
    from mlrpl_train.sweep import collect

    d, out = tmp_path / "d", tmp_path / "sweep"
    sidecar(d, "uniform-p0.30-s0", 0.35)
    for name, m in (("pbce-p0.30-s0", 0.5), ("pbce-p0.70-s0", 0.6)):  # the second has no config.json: its name
        (out / name).mkdir(parents=True)
        (out / name / "metrics.csv").write_text(f"epoch,mAP,mAP_voc,OF1,CF1\n1,{m},{m},0.5,0.4\n")
    (out / "pbce-p0.30-s0" / "config.json").write_text(json.dumps({"config": {"dataset": str(d)},
                                                                   "mask": "uniform-p0.30-s0"}))
    assert {p: [r["mAP"] for r in runs] for p, runs in collect(out)["pbce"].items()} == {0.35: [0.5], 0.7: [0.6]}


def test_a_remote_folder_is_refused_where_a_local_one_is_needed():
    with pytest.raises(BadInputError, match="s3://b/d: a remote dataset"):
        DatasetFolder("s3://b/d/").local


def test_masks_are_listed_in_file_order_as_the_card_always_listed_them(tmp_path):
    """'-' sorts before '.', so a test-split mask's file comes before the train mask of the same name: the
    card's configs and table keep the order they had (a name sort would swap them and change README.md)."""
    from mlrpl_data.folder import list_masks

    d = tmp_path / "d"
    (d / "masks").mkdir(parents=True)
    for n in ("uniform-p0.30-s0", "uniform-p0.30-s0-test", "hcp-p0.30-s0"):
        (d / "masks" / f"{n}.json").write_text("{}")
    assert DatasetFolder(d).mask_names() == ["hcp-p0.30-s0", "uniform-p0.30-s0-test", "uniform-p0.30-s0"]
    assert list_masks(d, skip_bad=True) == []  # sidecars without their fields: left out, not guessed


def test_mask_proportion_is_the_sidecars_and_the_names_only_without_one(tmp_path):
    from mlrpl_data.masks import mask_proportion

    d = tmp_path / "d"
    (d / "masks").mkdir(parents=True)
    (d / "masks" / "uniform-p0.10-s0.json").write_text(json.dumps({
        "name": "uniform-p0.10-s0", "fingerprint": "f", "scheme": "uniform", "seed": 0, "split": "train",
        "num_classes": 3, "content_sha256": "0", "stats": {}, "proportion": 0.125}))
    assert mask_proportion(d, "uniform-p0.10-s0") == 0.125  # the value it was made with, not its name's 0.10
    assert mask_proportion(d, "uniform-p0.30-s0") == 0.3  # no sidecar: the name
    assert mask_proportion(d, "single-positive-s0") is None and mask_proportion(d, "not a mask") is None
