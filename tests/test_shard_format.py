"""shards/index.json's format_version: written, read as 1 when absent (an index from before the
field), and a version this mlrpl does not read refused in one line by training's loader, verify and
pull; and the one tar member grammar."""

import hashlib
import json
from pathlib import Path

import pytest

from mlrpl_data.errors import BadInputError
from mlrpl_data.pull import PullConfig, pull
from mlrpl_data.shards import ShardConfig, member_name, read_index, split_member, write_shards
from mlrpl_data.verify import verify
from mlrpl_train.data import resolve_data

from test_shards import CFG, dataset


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    d = dataset(tmp_path_factory.mktemp("fmt"))
    write_shards(d, ShardConfig(**CFG))
    return d


def set_version(d: Path, version) -> str:
    """Rewrite index.json with another format_version (None: without the field), and files.json's entry
    for it, as a publisher of that index would; returns the index's path."""
    p = d / "shards" / "index.json"
    index = json.loads(p.read_text())
    index.pop("format_version", None)
    if version is not None:
        index = {"format_version": version, **index}
    data = (json.dumps(index, indent=1) + "\n").encode()
    p.write_bytes(data)
    listing = json.loads((d / "files.json").read_text())
    for f in listing["files"]:
        if f["path"] == "shards/index.json":
            f.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (d / "files.json").write_text(json.dumps(listing, indent=1) + "\n")
    return str(p)


def test_write_shards_writes_format_version_1_first(built):
    index = json.loads((built / "shards" / "index.json").read_text())
    assert list(index)[:2] == ["format_version", "dataset"] and index["format_version"] == 1
    assert read_index(str(built))["splits"] == {"test": 7, "train": 23}


def test_an_index_without_the_field_reads_as_version_1(built, tmp_path):
    set_version(built, None)
    try:
        assert read_index(str(built))["splits"] == {"test": 7, "train": 23}
        assert verify(str(built)) == []
        spec = resolve_data(str(built), None)
        assert (spec.train_samples, spec.test_samples, len(spec.train_urls), len(spec.test_urls)) == (23, 7, 5, 2)
        r = pull(built, tmp_path / "copy", PullConfig(progress=False))
        assert "shards/index.json" in r.fetched and len([f for f in r.fetched if f.endswith(".tar")]) == 7
    finally:
        set_version(built, 1)


@pytest.mark.parametrize("version, shown", [(2, "2"), ("1", '"1"'), (True, "true")])
def test_a_version_this_mlrpl_does_not_read_is_refused_by_the_loader_verify_and_pull(built, tmp_path, version, shown):
    where = set_version(built, version)
    want = f"{where}: shard index format_version {shown}; this mlrpl "
    try:
        with pytest.raises(BadInputError) as e:  # training (and predict) read the index through resolve_data
            resolve_data(str(built), None)
        assert str(e.value).startswith(want) and "reads format_version 1 (" in str(e.value)
        assert "\n" not in str(e.value)
        problems = verify(str(built))
        assert len(problems) == 1 and problems[0].startswith(want) and "reads format_version 1 (" in problems[0]
        with pytest.raises(BadInputError) as e:
            pull(built, tmp_path / "copy", PullConfig(progress=False))
        assert str(e.value).startswith(want) and "reads format_version 1 (" in str(e.value)
        assert not (tmp_path / "copy" / "shards" / "index.json").exists()
    finally:
        set_version(built, 1)


def test_member_grammar_splits_at_the_first_dot():
    assert member_name("coco2014_train_000000000009", "json") == "coco2014_train_000000000009.json"
    assert split_member("coco2014_train_000000000009.json") == ("coco2014_train_000000000009", "json")
    assert split_member("k.seg.png") == ("k", "seg.png")  # WebDataset's rule: the key ends at the first dot
    assert split_member("README") is None
    assert split_member(".json") == ("", "json")


def test_atomic_path_renames_when_complete_and_leaves_the_old_file_on_failure(tmp_path):
    from mlrpl_data.fsutil import atomic_path

    dest = tmp_path / "a" / "b" / "x.tar"
    with atomic_path(dest) as tmp:
        assert tmp.parent == dest.parent and tmp.name.startswith(".x.tar.tmp-")
        tmp.write_bytes(b"first")
        assert not dest.exists()  # nothing under the real name until the block ends
    assert dest.read_bytes() == b"first"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert dest.read_bytes() == b"first" and sorted(p.name for p in dest.parent.iterdir()) == ["x.tar"]
    with pytest.raises(OSError):
        with atomic_path(tmp_path / "new" / "deeper" / "y") as tmp:
            raise OSError(28, "No space left on device")
    assert not (tmp_path / "new").exists()  # the folders it made for a write that failed are gone
