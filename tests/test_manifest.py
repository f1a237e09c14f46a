import json

import numpy as np
import pandas as pd
import pytest

from mlrpl_data.errors import AlreadyExistsError, BadInputError
from mlrpl_data.manifest import SCHEMA_VERSION
from mlrpl_data.manifest import Manifest
from mlrpl_data.folder import read_manifest, write_manifest

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
    assert write_manifest(other, tmp_path / "d", force=True) == "replaced"
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


def test_crash_mid_first_write_leaves_nothing(tmp_path, monkeypatch):
    import mlrpl_data.folder as man  # write_manifest lives in folder.py

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(man, "publish_dir", boom)
    with pytest.raises(KeyboardInterrupt):
        write_manifest(tiny_manifest(), tmp_path / "d")
    assert list(tmp_path.iterdir()) == []  # no staging folder, no half dataset


def test_crash_mid_replace_is_never_mistaken_for_a_whole_dataset(tmp_path, monkeypatch):
    write_manifest(tiny_manifest(), tmp_path / "d")
    import mlrpl_data.folder as man  # write_manifest lives in folder.py

    real = man.os.replace
    calls = {"n": 0}

    def dying(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:  # after the first new file is in place
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(man.os, "replace", dying)
    other = tiny_manifest()
    other.options = {"o": 5}
    with pytest.raises(KeyboardInterrupt):
        write_manifest(other, tmp_path / "d", force=True)
    monkeypatch.setattr(man.os, "replace", real)
    with pytest.raises(BadInputError, match="not a complete dataset"):
        read_manifest(tmp_path / "d")
    assert write_manifest(other, tmp_path / "d", force=True) == "replaced"  # the re-run finishes the job
    assert read_manifest(tmp_path / "d").options == {"o": 5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no staging folder left behind


def test_force_replaces_only_what_mlrpl_wrote(tmp_path):
    d = tmp_path / "d"
    write_manifest(tiny_manifest(), d)
    (d / "masks").mkdir()
    (d / "masks" / "old.json").write_text("{}")
    (d / "notes.txt").write_text("mine")
    other = tiny_manifest()
    other.options = {"o": 7}
    state = write_manifest(other, d, force=True)
    assert state.startswith("replaced (kept 1 entry mlrpl did not make: notes.txt)")
    assert (d / "notes.txt").read_text() == "mine" and not (d / "masks").exists()  # old masks go with the old version


def test_damaged_copy_of_the_same_dataset_is_repaired_and_keeps_its_masks(tmp_path):
    d = tmp_path / "d"
    write_manifest(tiny_manifest(), d)
    (d / "masks").mkdir()
    (d / "masks" / "m.json").write_text("{}")
    data = (d / "images.parquet").read_bytes()
    (d / "images.parquet").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(BadInputError, match="not a readable Parquet file"):
        read_manifest(d)
    assert write_manifest(tiny_manifest(), d) == "repaired"
    assert read_manifest(d).fingerprint == tiny_manifest().fingerprint and (d / "masks" / "m.json").exists()


def test_output_must_be_apart_from_the_raw_root(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "img.jpg").write_bytes(b"x")
    for out in (raw, raw / "sub", tmp_path):
        with pytest.raises(BadInputError, match="an output must be apart from its inputs"):
            write_manifest(tiny_manifest(root=str(raw)), out, force=True)
    assert (raw / "img.jpg").read_bytes() == b"x"


def test_reading_validates_rows(tmp_path):
    bad = tiny_manifest()
    bad.images.loc[1, "path"] = "../../etc/passwd"
    with pytest.raises(BadInputError, match="leaves the raw root"):
        man_validate(bad)
    bad = tiny_manifest()
    bad.images.loc[2, "width"] = 0
    with pytest.raises(BadInputError, match="row 2 .* width 0"):
        man_validate(bad)


def man_validate(m):
    from mlrpl_data.manifest import validate

    validate(m, "x")


def test_not_empty_folder_without_dataset_is_not_overwritten(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    (tmp_path / "d" / "dataset.json").write_text("{}")  # looks like a dataset, but mlrpl did not make it
    for force in (False, True):
        with pytest.raises(AlreadyExistsError, match="not made by mlrpl"):
            write_manifest(tiny_manifest(), tmp_path / "d", force=force)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["dataset.json", "notes.txt"]
