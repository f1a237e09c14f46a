import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mlrpl.cli import app
from mlrpl_data.errors import AlreadyExistsError, BadInputError, FingerprintMismatchError
from mlrpl_data.folder import DatasetFolder
from mlrpl_data.manifest import Manifest
from mlrpl_data.folder import write_manifest
from mlrpl_data.masks import (MaskConfig, compute_masks, entry_hashes, hcp_known, make_masks,
                              parse_proportions, read_mask)

from conftest import random_labels


def manifest(n=300, c=12, seed=0, prefix="img") -> Manifest:
    keys = [f"{prefix}_{i}" for i in range(n)]
    images = pd.DataFrame({"key": keys, "split": ["train"] * (n - n // 5) + ["test"] * (n // 5),
                           "path": [f"{k}.jpg" for k in keys], "width": 10, "height": 10})
    return Manifest(name="t", version="1", category_names=[f"c{i}" for i in range(c)],
                    category_source_ids=[str(i) for i in range(c)], images=images, labels=random_labels(n, c, seed))


def test_parse_proportions():
    assert parse_proportions("0.3") == [0.3]
    assert parse_proportions("0.1,0.5") == [0.1, 0.5]
    assert parse_proportions("0.1:0.9:0.1") == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    for bad in ("0", "1.5", "-0.1", "x", "0.1:0.9:0"):
        with pytest.raises(BadInputError):
            parse_proportions(bad)


def test_uniform_realises_p_and_is_nested():
    m = manifest(n=2000, c=20)
    masks = compute_masks(m, MaskConfig(proportions=[0.1, 0.3, 0.5, 0.9]))
    for mask, p in zip(masks, [0.1, 0.3, 0.5, 0.9]):
        assert abs(mask.meta["stats"]["known_proportion"] - p) < 0.01
        assert mask.name == f"uniform-p{p:.2f}-s0"
        known = mask.labels != 0
        np.testing.assert_array_equal(mask.labels[known], m.labels[m.split_rows("train")][known])
    for a, b in zip(masks, masks[1:]):
        assert ((a.labels != 0) <= (b.labels != 0)).all()  # known at 0.3 => known at 0.5
    assert (compute_masks(m, MaskConfig(proportions=[1.0]))[0].labels != 0).all()


def test_uniform_is_a_pure_function_of_seed_key_class():
    h = entry_hashes(["a", "b", "c", "d"], 5, seed=0)
    np.testing.assert_array_equal(entry_hashes(["d", "b"], 5, seed=0), h[[3, 1]])  # reorder / remove: same rows
    assert not np.array_equal(entry_hashes(["a"], 5, seed=1), h[:1])
    big, small = manifest(n=300), manifest(n=300)
    small.images = small.images.iloc[::-1].reset_index(drop=True)
    small.labels = small.labels[::-1].copy()
    mb = compute_masks(big, MaskConfig(proportions=[0.4]))[0]
    ms = compute_masks(small, MaskConfig(proportions=[0.4]))[0]
    by_key = dict(zip(ms.keys, ms.labels))
    assert all((by_key[k] == row).all() for k, row in zip(mb.keys, mb.labels))


def test_hcp_matches_the_published_voc_files(real):
    full = np.loadtxt(real / "hcp-voc2007/original-labels/train.txt", delimiter=",", dtype=np.int8)
    for p in ("0.1", "0.5", "0.9"):
        published = np.loadtxt(real / f"hcp-voc2007/partial-labels/train_proportion_{p}.txt", delimiter=",", dtype=np.int8)
        ours = full * hcp_known(*full.shape, float(p), seed=0)
        np.testing.assert_array_equal(ours, published)


def test_hcp_scheme_through_a_manifest_in_trainval_order(real):
    full = np.loadtxt(real / "hcp-voc2007/original-labels/train.txt", delimiter=",", dtype=np.int8)
    ids = (real / "voc2007/VOCdevkit/VOC2007/ImageSets/Main/trainval.txt").read_text().split()
    keys = [f"voc2007_trainval_{i}" for i in ids]
    m = Manifest(name="voc2007", version="2007", category_names=[f"c{i}" for i in range(20)],
                 category_source_ids=[str(i) for i in range(20)],
                 images=pd.DataFrame({"key": keys, "split": "train", "path": keys, "width": 1, "height": 1}), labels=full)
    mask = compute_masks(m, MaskConfig(proportions=[0.5], scheme="hcp"))[0]
    published = np.loadtxt(real / "hcp-voc2007/partial-labels/train_proportion_0.5.txt", delimiter=",", dtype=np.int8)
    np.testing.assert_array_equal(mask.labels, published)
    state = np.random.get_state()[1].copy()
    compute_masks(m, MaskConfig(proportions=[0.1], scheme="hcp"))
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # the global RNG is left alone


def test_per_image_exact_count_and_nested():
    m = manifest(c=10)
    a, b = compute_masks(m, MaskConfig(proportions=[0.3, 0.5], scheme="per-image"))
    assert ((a.labels != 0).sum(axis=1) == 3).all() and ((b.labels != 0).sum(axis=1) == 5).all()
    assert ((a.labels != 0) <= (b.labels != 0)).all()


def test_single_positive():
    m = manifest()
    m.labels[0] = -1  # an image with no positive
    mask = compute_masks(m, MaskConfig(proportions=[], scheme="single-positive"))[0]
    assert mask.name == "single-positive-s0"
    assert (mask.labels[0] == 0).all()
    has_pos = (m.labels[m.split_rows("train")] == 1).any(axis=1)
    assert ((mask.labels == 1).sum(axis=1) == has_pos).all() and (mask.labels >= 0).all()


def test_stats_warn_of_classes_without_known_positive():
    m = manifest(n=50, c=4)
    m.labels[:, 2] = -1
    mask = compute_masks(m, MaskConfig(proportions=[0.5]))[0]
    assert mask.meta["stats"]["classes_without_known_positive"] == ["c2"]


def test_write_read_refuse_and_noop(tmp_path):
    write_manifest(manifest(), tmp_path / "d")
    [(mask, state)] = make_masks(tmp_path / "d", MaskConfig(proportions=[0.3]))
    assert state == "written" and (tmp_path / "d/masks/uniform-p0.30-s0.parquet").exists()
    meta = json.loads((tmp_path / "d/masks/uniform-p0.30-s0.json").read_text())
    assert meta["seed"] == 0 and meta["proportion"] == 0.3 and meta["scheme"] == "uniform" and meta["mlrpl_version"]
    assert make_masks(tmp_path / "d", MaskConfig(proportions=[0.3]))[0][1] == "unchanged"
    r = read_mask(tmp_path / "d", "uniform-p0.30-s0")
    np.testing.assert_array_equal(r.labels, mask.labels)
    # the dataset is rebuilt with other content: the old mask is refused, naming both fingerprints
    other = manifest(seed=1)
    write_manifest(other, tmp_path / "d2")
    (tmp_path / "d2" / "masks").mkdir()
    for ext in ("parquet", "json"):
        (tmp_path / "d2/masks" / f"uniform-p0.30-s0.{ext}").write_bytes((tmp_path / "d/masks" / f"uniform-p0.30-s0.{ext}").read_bytes())
    with pytest.raises(FingerprintMismatchError, match=f"{meta['fingerprint']}.*{other.fingerprint}"):
        read_mask(tmp_path / "d2", "uniform-p0.30-s0")
    with pytest.raises(AlreadyExistsError, match="--force"):
        make_masks(tmp_path / "d2", MaskConfig(proportions=[0.3]))
    assert make_masks(tmp_path / "d2", MaskConfig(proportions=[0.3], force=True))[0][1] == "replaced"


def test_unknown_scheme_and_split():
    with pytest.raises(BadInputError, match="--scheme 'bernoulli': use one of uniform, hcp, per-image"):
        MaskConfig(proportions=[0.3], scheme="bernoulli")
    with pytest.raises(BadInputError, match="--split 'val': use one of train, test, all"):
        MaskConfig(proportions=[0.3], split="val")


def test_cli_make_masks_and_list(tmp_path):
    write_manifest(manifest(), tmp_path / "d")
    runner = CliRunner()
    r = runner.invoke(app, ["make-masks", str(tmp_path / "d"), "--proportion", "0.1:0.3:0.1", "--seed", "2"])
    assert r.exit_code == 0, r.output
    assert [m["name"] for m in DatasetFolder(tmp_path / "d").mask_sidecars()] == ["uniform-p0.10-s2", "uniform-p0.20-s2", "uniform-p0.30-s2"]
    r = runner.invoke(app, ["masks", str(tmp_path / "d")])
    assert r.exit_code == 0 and "uniform-p0.20-s2" in r.output
    r = runner.invoke(app, ["make-masks", str(tmp_path / "d"), "--proportion", "1.2"])
    assert r.exit_code == 1 and "(0, 1]" in r.output


def test_names_are_unambiguous_in_proportion_and_split(tmp_path):
    from mlrpl_data.masks import mask_name, parse_proportions

    assert mask_name("uniform", 0.3, 0) == "uniform-p0.30-s0"
    assert mask_name("uniform", 0.304, 0) == "uniform-p0.304-s0"  # not p0.30: that name is 0.3's
    assert mask_name("uniform", 0.3, 1, "test") == "uniform-p0.30-s1-test"
    with pytest.raises(BadInputError, match="0.30 is given twice"):
        parse_proportions("0.3,0.30")
    write_manifest(manifest(), tmp_path / "d")
    made = make_masks(tmp_path / "d", MaskConfig(proportions=[0.3, 0.304]))
    assert [m.name for m, _ in made] == ["uniform-p0.30-s0", "uniform-p0.304-s0"]
    test_mask = make_masks(tmp_path / "d", MaskConfig(proportions=[0.3], split="test"))[0][0]
    assert test_mask.name == "uniform-p0.30-s0-test"
    assert read_mask(tmp_path / "d", "uniform-p0.30-s0").meta["split"] == "train"  # not replaced by the test mask


def test_a_damaged_mask_is_refused_and_a_rerun_repairs_it(tmp_path):
    write_manifest(manifest(), tmp_path / "d")
    make_masks(tmp_path / "d", MaskConfig(proportions=[0.5]))
    p = tmp_path / "d/masks/uniform-p0.50-s0.parquet"
    data = p.read_bytes()
    p.write_bytes(data[:-20])
    with pytest.raises(BadInputError, match="not a readable Parquet file"):
        read_mask(tmp_path / "d", "uniform-p0.50-s0")
    assert make_masks(tmp_path / "d", MaskConfig(proportions=[0.5]))[0][1] == "repaired"  # not "unchanged"
    assert read_mask(tmp_path / "d", "uniform-p0.50-s0").labels.shape[0] > 0


def test_a_mask_holding_other_values_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlrpl_data.manifest import labels_to_arrow
    from mlrpl_data.masks import content_hash

    write_manifest(manifest(), tmp_path / "d")
    [(mask, _)] = make_masks(tmp_path / "d", MaskConfig(proportions=[0.5]))
    forged = mask.labels.copy()
    forged[0, 0] = 7
    pq.write_table(pa.table({"key": list(mask.keys), "labels": labels_to_arrow(forged)}),
                   tmp_path / "d/masks/uniform-p0.50-s0.parquet")
    side = tmp_path / "d/masks/uniform-p0.50-s0.json"
    meta = json.loads(side.read_text())
    meta["content_sha256"] = content_hash(mask.keys, forged)  # a consistent forgery
    side.write_text(json.dumps(meta))
    with pytest.raises(BadInputError, match="holds 7, not -1, 0 or 1"):
        read_mask(tmp_path / "d", "uniform-p0.50-s0")


@pytest.mark.fuzzclass("raw records and labels")
def test_proportions_are_named_exactly_and_bounded():
    from mlrpl_data.masks import MAX_PROPORTIONS, mask_name, parse_proportions, proportion_text

    # every value a range may give reads back from its name: no two values share one, no name lies
    values = parse_proportions("0.001:1:0.001")
    assert len(values) == MAX_PROPORTIONS == 1000 and values[0] == 0.001 and values[-1] == 1.0
    assert all(float(proportion_text(p)) == p for p in values)
    assert len({proportion_text(p) for p in values}) == 1000
    assert mask_name("uniform", parse_proportions("0.000001")[0], 0) == "uniform-p0.000001-s0"
    # 1e-12 was accepted and named p0.00; a million masks ran a quadratic check for ever
    with pytest.raises(BadInputError, match=r"--proportion 1e-12: at most 6 decimals"):
        parse_proportions("1e-12")
    with pytest.raises(BadInputError, match=r"1,000,000 proportions; at most 1,000 masks at once"):
        parse_proportions("0.000001:1:0.000001")
    with pytest.raises(BadInputError, match=r"1,001 proportions; at most 1,000"):
        parse_proportions(",".join(f"{i / 1001:.6f}" for i in range(1, 1002)))
    with pytest.raises(BadInputError, match="the start is above the stop"):
        parse_proportions("0.5:0.1:0.1")
    for bad in ("inf", "nan", "0.1:inf:0.1", "0.1:0.9:nan"):
        with pytest.raises(BadInputError, match="use 0.3"):
            parse_proportions(bad)
    with pytest.raises(BadInputError, match="at most 6 decimals"):
        proportion_text(0.1 + 0.2)  # 0.30000000000000004 would be named p0.30, 0.3's name
