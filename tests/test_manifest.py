import json

import numpy as np
import pandas as pd
import pytest

from mlrpl_data.errors import AlreadyExistsError, BadInputError
from mlrpl_data.manifest import Manifest, read_manifest, write_manifest, SCHEMA_VERSION

from conftest import random_labels


def tiny_manifest(order=None, **kw) -> Manifest:
    keys = ["a_1", "a_2", "a_3", "b_1"]
    order = order or list(range(4))
    images = pd.DataFrame({"key": keys, "split": ["train", "train", "train", "test"], "path": [f"x/{k}.jpg" for k in keys],
                           "width": [10, 20, 30, 40], "height": [5, 6, 7, 8]}).iloc[order]
    labels = random_labels(4, 3)[order]
    return Manifest(name="t", version="1", category_names=["a", "b", "c"], category_source_ids=["1", "2", "3"],
                    images=images, labels=labels, options={"o": 1}, **kw)


def test_round_trip_keeps_everything(tmp_path):
    m = tiny_manifest(root="/somewhere")
    assert write_manifest(m, tmp_path / "d") == "written"
    card = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert card["schema_version"] == SCHEMA_VERSION and card["counts"] == {"train": 3, "test": 1}
    assert card["num_classes"] == 3 and card["fingerprint"] == m.fingerprint
    r = read_manifest(tmp_path / "d")
    assert r.fingerprint == m.fingerprint
    np.testing.assert_array_equal(r.labels, m.labels)
    assert r.images["key"].tolist() == m.images["key"].tolist()
    assert r.category_names == ["a", "b", "c"]


def test_fingerprint_ignores_machine_paths_but_not_content():
    a, b = tiny_manifest(root="/lab1/coco"), tiny_manifest(root="/other/machine")
    assert a.fingerprint == b.fingerprint
    c = tiny_manifest()
    c.labels[0, 0] = -c.labels[0, 0]
    assert c.fingerprint != a.fingerprint
    d = tiny_manifest()
    d.options = {"o": 2}
    assert d.fingerprint != a.fingerprint


def test_existing_dataset_needs_force_and_same_content_is_a_noop(tmp_path):
    write_manifest(tiny_manifest(), tmp_path / "d")
    assert write_manifest(tiny_manifest(), tmp_path / "d") == "unchanged"
    other = tiny_manifest()
    other.options = {"o": 9}
    with pytest.raises(AlreadyExistsError, match="--force"):
        write_manifest(other, tmp_path / "d")
    assert write_manifest(other, tmp_path / "d", force=True) == "written"
    assert read_manifest(tmp_path / "d").options == {"o": 9}


def test_half_written_dataset_is_refused(tmp_path):
    write_manifest(tiny_manifest(), tmp_path / "d")
    (tmp_path / "d" / "dataset.json").unlink()
    with pytest.raises(BadInputError, match="not a complete dataset"):
        read_manifest(tmp_path / "d")


def test_altered_files_are_detected(tmp_path):
    write_manifest(tiny_manifest(), tmp_path / "d")
    card = json.loads((tmp_path / "d" / "dataset.json").read_text())
    card["fingerprint"] = "0" * 64
    (tmp_path / "d" / "dataset.json").write_text(json.dumps(card))
    with pytest.raises(BadInputError, match="does not match"):
        read_manifest(tmp_path / "d")


def test_crash_mid_write_leaves_previous_version(tmp_path, monkeypatch):
    write_manifest(tiny_manifest(), tmp_path / "d")
    before = read_manifest(tmp_path / "d").fingerprint
    import mlrpl_data.manifest as man

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(man, "publish_dir", boom)
    other = tiny_manifest()
    other.options = {"o": 5}
    with pytest.raises(KeyboardInterrupt):
        write_manifest(other, tmp_path / "d", force=True)
    assert read_manifest(tmp_path / "d").fingerprint == before
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no staging folder left behind


def test_not_empty_folder_without_dataset_is_not_overwritten(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(AlreadyExistsError):
        write_manifest(tiny_manifest(), tmp_path / "d")
