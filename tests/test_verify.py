"""Consistent forgeries: a file is changed AND its checksums are re-made; verify (and training)
must still catch it, because every layer is checked against the manifest, not only the index."""

import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest

from mlrpl_data.errors import BadInputError
from mlrpl_data.shards import ShardConfig, write_shards
from mlrpl_data.tar import TarWriter
from mlrpl_data.verify import verify
from mlrpl_train.data import resolve_data

from test_shards import CFG, dataset


@pytest.fixture
def built(tmp_path) -> Path:
    d = dataset(tmp_path)
    write_shards(d, ShardConfig(**CFG))
    assert verify(str(d)) == []
    return d


def members(tar_path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar_path) as t:
        return [(m.name, t.extractfile(m).read()) for m in t.getmembers()]


def write_tar(path: Path, items: list[tuple[str, bytes]]) -> None:
    with open(path, "wb") as f:
        w = TarWriter(f)
        for name, data in items:
            w.add(name, data)
        w.close()


def reindex(d: Path, drop: set[str] = frozenset(), rename: dict[str, str] | None = None) -> None:
    """Re-make index.json and SHA256SUMS from the shard files as they are now: the forger's last step."""
    rename = rename or {}
    sh = d / "shards"
    index = json.loads((sh / "index.json").read_text())
    entries = []
    for e in index["shards"]:
        if e["name"] in drop:
            continue
        e["name"] = rename.get(e["name"], e["name"])
        e["split"] = e["name"].split("-")[0]
        p = sh / e["name"]
        keys = [n[: -len(".json")] for n, _ in members(p) if n.endswith(".json")]
        e.update(bytes=p.stat().st_size, sha256=hashlib.sha256(p.read_bytes()).hexdigest(), samples=len(keys),
                 first_key=keys[0], last_key=keys[-1])
        entries.append(e)
    index["shards"] = entries
    index["splits"] = {s: sum(e["samples"] for e in entries if e["split"] == s) for s in ("test", "train")}
    (sh / "index.json").write_text(json.dumps(index))
    (sh / "SHA256SUMS").write_text("".join(f"{e['sha256']}  {e['name']}\n" for e in entries))


def test_a_shard_dropped_from_the_index(built):
    reindex(built, drop={"test-000001.tar"})
    text = "\n".join(verify(str(built)))
    assert "test image(s) of the manifest are in no shard" in text and "lists 5 test samples, the manifest has 7" in text


def test_every_train_shard_removed_is_caught_by_verify_and_refused_by_training(built):
    trains = {p.name for p in (built / "shards").glob("train-*.tar")}
    reindex(built, drop=trains)
    assert any("23 train image(s) of the manifest are in no shard" in p for p in verify(str(built)))
    with pytest.raises(BadInputError, match="lists 0 train samples but the manifest has 23"):
        resolve_data(str(built), None)


def test_a_test_shard_relabelled_as_train(built):
    sh = built / "shards"
    os.rename(sh / "test-000000.tar", sh / "train-000009.tar")
    reindex(built, rename={"test-000000.tar": "train-000009.tar"})
    text = "\n".join(verify(str(built)))
    assert "belongs to split test, not train" in text
    with pytest.raises(BadInputError, match="lists 28 train samples but the manifest has 23"):
        resolve_data(str(built), None)


def test_labels_changed_inside_a_shard(built):
    p = built / "shards" / "train-000001.tar"
    items = members(p)
    name, data = next((n, d) for n, d in items if n.endswith(".json"))
    doc = json.loads(data)
    doc["labels"] = [-v for v in doc["labels"]]
    items = [(n, json.dumps(doc).encode() if n == name else d) for n, d in items]
    write_tar(p, items)
    reindex(built)
    problems = verify(str(built))
    assert problems == [f"{p}: {name[:-5]}'s labels differ from the manifest's (altered)"]


def test_the_same_key_twice_in_one_shard(built):
    p = built / "shards" / "train-000002.tar"
    items = members(p)
    write_tar(p, items + items[:2])
    reindex(built)
    text = "\n".join(verify(str(built)))
    assert f"member {items[0][0]} appears twice" in text


def test_a_pickle_member_is_reported(built):
    p = built / "shards" / "train-000000.tar"
    write_tar(p, members(p) + [("zzz.pyd", b"\x80\x04evil")])
    reindex(built)
    assert any("unexpected member zzz.pyd" in x for x in verify(str(built)))


def test_a_shard_linked_to_an_endless_device_ends_the_read(built):
    p = built / "shards" / "train-000000.tar"
    p.unlink()
    p.symlink_to("/dev/zero")
    problems = verify(str(built))  # must return, not hang
    assert any("is a device, FIFO or socket, not a regular file" in x for x in problems)


def test_a_mask_with_keys_of_another_split(built):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlrpl_data.manifest import labels_to_arrow
    from mlrpl_data.folder import read_manifest
    from mlrpl_data.masks import MaskConfig, content_hash, make_masks

    [(mask, _)] = make_masks(built, MaskConfig(proportions=[0.5]))
    m = read_manifest(built)
    test_key = m.keys[m.split_rows("test")][0]
    keys = np.array(list(mask.keys[:-1]) + [test_key], dtype=object)
    pq.write_table(pa.table({"key": list(keys), "labels": labels_to_arrow(mask.labels)}),
                   built / "masks" / f"{mask.name}.parquet")
    side = built / "masks" / f"{mask.name}.json"
    meta = json.loads(side.read_text())
    meta["content_sha256"] = content_hash(keys, mask.labels)
    side.write_text(json.dumps(meta))
    assert any("1 key(s) not of its split, e.g. " + test_key in p for p in verify(str(built)))
