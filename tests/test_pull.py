"""`mlrpl pull`: a byte-for-byte mirror over local paths, http and S3, that survives a flaky
network, a byte flipped in transit, a kill, and says which file the source lacks."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlrpl_data.errors import MlrplError
from mlrpl_data.folder import read_manifest
from mlrpl_data.masks import MaskConfig, make_masks
from mlrpl_data.pull import PullConfig, PullError, pull
from mlrpl_data.shards import ShardConfig, write_shards
from mlrpl_data.verify import verify

from conftest import Loopback
from test_shards import CFG, dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def published(tmp_path_factory):
    """Lab A's dataset: manifest, two masks, 7 shards (5 train, 2 test)."""
    tmp = tmp_path_factory.mktemp("labA")
    d = dataset(tmp)
    make_masks(d, MaskConfig(proportions=[0.3, 0.5], seed=0))
    write_shards(d, ShardConfig(**CFG))
    return d


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setenv("MLRPL_RETRY_DELAY", "0.01")
    monkeypatch.setenv("MLRPL_RETRIES", "8")  # a read fails with p ~ 1/5 on the flaky server: 8 tries never all fail


def tree(d: Path) -> dict[str, bytes]:
    """What a dataset shares: every file but local-only ones (markers, the raw root, build records)."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(d).parts)}


def quiet(**kw) -> PullConfig:
    return PullConfig(progress=False, **kw)


def test_local_pull_is_byte_identical_and_verifies(published, tmp_path):
    r = pull(published, tmp_path / "b", quiet())
    assert tree(tmp_path / "b") == tree(published)
    assert len(r.fetched) == len(tree(published)) - 1  # all but files.json, written from the listing itself
    assert verify(tmp_path / "b") == []
    again = pull(published, tmp_path / "b", quiet())  # nothing to do: everything kept
    assert again.fetched == [] and len(again.kept) == len(r.fetched)
    (tmp_path / "b" / "masks" / "uniform-p0.30-s0.parquet").unlink()  # one file lost: it and dataset.json again
    healed = pull(published, tmp_path / "b", quiet())
    assert sorted(healed.fetched) == ["dataset.json", "masks/uniform-p0.30-s0.parquet"]
    assert tree(tmp_path / "b") == tree(published)


def test_http_pull_survives_dropped_connections_and_a_flipped_byte(published, tmp_path):
    with Loopback(published.parent, drop_every=5, flip_once=(f"/{published.name}/shards/train-000002.tar",)) as srv:
        r = pull(f"{srv.url}/{published.name}", tmp_path / "b", quiet(jobs=3))
        assert srv.requests > len(r.fetched)  # retries happened
        assert srv.flip_pending == set()  # the flipped copy was served ... and not kept:
    assert tree(tmp_path / "b") == tree(published)
    assert verify(tmp_path / "b") == []


def test_flaky_server_still_verifies_and_streams(published, tmp_path):
    from mlrpl_train.loader import read_samples

    names = sorted(p.name for p in (published / "shards").glob("*.tar"))
    local = [(s["__key__"], s["jpg"]) for s in read_samples([str(published / "shards" / n) for n in names])]
    with Loopback(published.parent, drop_every=5) as srv:
        url = f"{srv.url}/{published.name}"
        assert verify(url) == []
        remote = [(s["__key__"], s["jpg"]) for s in read_samples([f"{url}/shards/{n}" for n in names])]
        assert srv.requests >= 10  # so at least two were cut
    assert remote == local  # every sample once, in order, whole, after the cut bodies


def test_a_file_the_source_lacks_is_named_and_nothing_looks_complete(published, tmp_path):
    (published / "shards" / "test-000001.tar").unlink()
    with Loopback(published.parent) as srv:
        with pytest.raises(MlrplError, match=r"test-000001\.tar: not found"):
            pull(f"{srv.url}/{published.name}", tmp_path / "b", quiet(jobs=1))
    assert not (tmp_path / "b" / "dataset.json").exists()  # reads as incomplete
    assert (tmp_path / "b" / "shards" / "test-000000.tar").exists()  # what arrived is kept for the re-run
    assert [p.name for p in (tmp_path / "b").rglob(".*.tmp-*")] == []


def test_a_file_that_arrives_altered_every_time_stops_the_pull(published, tmp_path, monkeypatch):
    monkeypatch.setenv("MLRPL_RETRIES", "2")
    path = f"/{published.name}/masks/uniform-p0.30-s0.parquet"
    with Loopback(published.parent, flip_once=(path,)) as srv:
        srv.flip_pending = _Always(path)
        with pytest.raises(MlrplError, match=r"uniform-p0\.30-s0\.parquet: could not be fetched whole after 2 tries"):
            pull(f"{srv.url}/{published.name}", tmp_path / "b", quiet())
    assert not (tmp_path / "b" / "masks" / "uniform-p0.30-s0.parquet").exists()



def test_an_index_that_arrives_altered_every_time_is_one_line_too(published, tmp_path, monkeypatch):
    """shards/index.json is read by its own path (its shards are listed from it): the same one line, not
    an 'unexpected Corrupted ... (a bug)'."""
    monkeypatch.setenv("MLRPL_RETRIES", "2")
    path = f"/{published.name}/shards/index.json"
    with Loopback(published.parent, flip_once=(path,)) as srv:
        srv.flip_pending = _Always(path)
        with pytest.raises(PullError, match=r"shards/index\.json: could not be fetched whole after 2 tries "
                                            r"\(altered in transit: .*the listing says"):
            pull(f"{srv.url}/{published.name}", tmp_path / "b", quiet())
    assert not (tmp_path / "b" / "dataset.json").exists()

class _Always(set):
    """A flip_once set that never empties: every GET of its path is altered."""

    def __init__(self, path):
        super().__init__([path])

    def discard(self, _):
        pass


def test_kill_9_mid_pull_then_rerun(published, tmp_path):
    out = tmp_path / "b"
    with Loopback(published.parent, delay=0.15) as srv:
        url = f"{srv.url}/{published.name}"
        p = subprocess.Popen([sys.executable, "-m", "cli", "pull", url, str(out), "--jobs", "1", "--no-progress"],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while time.time() < deadline and len(list((out / "shards").glob("train-*.tar"))) < 2:
            time.sleep(0.02)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert 2 <= len(list((out / "shards").glob("*.tar"))) < 7, "the kill came too late to test a resume"
        assert not (out / "dataset.json").exists()
        with pytest.raises(MlrplError):
            read_manifest(out)  # a half-pulled folder never reads as a dataset
        r = pull(url, out, quiet())
    assert len(r.kept) >= 2  # the complete files of the first run were kept
    assert tree(out) == tree(published)
    assert [p.name for p in out.rglob(".*.tmp-*")] == []  # the killed run's temporary swept
    assert verify(out) == []


def test_select_split_masks_and_no_shards(published, tmp_path):
    pull(published, tmp_path / "t", quiet(split="train", masks="uniform-p0.30-s0"))
    got = tree(tmp_path / "t")
    assert sorted(k for k in got if k.startswith("shards/") and k.endswith(".tar")) == \
        [f"shards/train-{i:06d}.tar" for i in range(5)]
    assert sorted(k for k in got if k.startswith("masks/")) == ["masks/README.md", "masks/uniform-p0.30-s0.json",
                                                                "masks/uniform-p0.30-s0.parquet"]
    assert verify(tmp_path / "t", split="train") == []
    assert any("test image(s) of the manifest are in no shard" in p for p in verify(tmp_path / "t"))
    pull(published, tmp_path / "n", quiet(shards=False, masks=""))
    assert sorted(tree(tmp_path / "n")) == ["README.md", "categories.parquet", "dataset.json", "files.json",
                                            "images.parquet"]
    with pytest.raises(MlrplError, match="no mask uniform-p0.90-s0"):
        pull(published, tmp_path / "x", quiet(masks="uniform-p0.90-s0"))


def test_refuses_paths_outside_the_dataset(published, tmp_path):
    import json

    listing = json.loads((published / "files.json").read_text())
    listing["files"].append({"path": "../../etc/passwd", "bytes": 1, "sha256": "0" * 64})
    (published / "files.json").write_text(json.dumps(listing))
    with pytest.raises(MlrplError, match="refuses the path '../../etc/passwd'"):
        pull(published, tmp_path / "b", quiet())
    assert not (tmp_path / "b").exists()


def test_s3_pull(published, tmp_path, s3):
    url = s3.upload(published, "coco")
    pull(url, tmp_path / "b", quiet(jobs=2))
    assert tree(tmp_path / "b") == tree(published)
    assert verify(tmp_path / "b") == []


def test_refuses_to_pull_over_another_dataset(published, tmp_path):
    other = dataset(tmp_path / "other", n_train=9, n_test=3)  # another dataset, made by mlrpl
    before = (other / "dataset.json").read_bytes()
    with pytest.raises(MlrplError, match="holds another dataset"):
        pull(published, other, quiet())
    assert (other / "dataset.json").read_bytes() == before
