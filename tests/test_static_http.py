"""`python -m http.server`, the most common static server, has no Range support: verify, pull and a
training read of a shard must work against it for a shard larger than fsspec's 5 MiB block."""

import hashlib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlrpl_data.folder import write_manifest
from mlrpl_data.coco import CocoConfig, build_coco
from mlrpl_data.masks import MaskConfig, make_masks
from mlrpl_data.pull import PullConfig, pull
from mlrpl_data.readers import open_binary
from mlrpl_data.shards import ShardConfig, write_shards
from mlrpl_data.verify import verify

from conftest import make_coco
from test_pull import tree

FSSPEC_BLOCK = 5 * 2**20


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """20 train images of 400x400 noise at JPEG quality 95, 4:4:4 (~0.4 MB each, incompressible): one
    train shard of about 8 MB; 2 test images."""
    tmp = tmp_path_factory.mktemp("static")
    raw = make_coco(tmp / "raw", splits={"train": [(i, [1]) for i in range(1, 21)], "val": [(100, [3]), (101, [7])]})
    rng = np.random.default_rng(0)
    for p in sorted((raw / "train2014").glob("*.jpg")) + sorted((raw / "val2014").glob("*.jpg")):
        Image.fromarray(rng.integers(0, 256, (400, 400, 3), dtype=np.uint8)).save(p, quality=95, subsampling=0)
    d = tmp / "ds"
    write_manifest(build_coco(CocoConfig(root=raw)), d)
    make_masks(d, MaskConfig(proportions=[0.5], seed=0))
    write_shards(d, ShardConfig(progress=False))
    return d


@pytest.fixture(scope="module")
def server(big):
    """`python -m http.server` on a free port, serving the dataset's parent folder; its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(big.parent)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("python -m http.server did not start")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/{big.name}"
    finally:
        proc.kill()
        proc.wait()


def test_the_server_ignores_ranges_and_the_shard_is_past_one_block(big, server):
    shard = big / "shards" / "train-000000.tar"
    assert shard.stat().st_size > FSSPEC_BLOCK + 2**20  # a read past fsspec's first block is needed
    req = urllib.request.Request(f"{server}/shards/train-000000.tar", headers={"Range": "bytes=10-19"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) == shard.stat().st_size  # the whole file, not 206


def test_verify_and_pull_over_python_http_server(big, server, tmp_path):
    assert verify(server) == []
    r = pull(server, tmp_path / "b", PullConfig(progress=False, jobs=2))
    assert "shards/train-000000.tar" in r.fetched
    assert tree(tmp_path / "b") == tree(big)
    assert verify(tmp_path / "b") == []


def test_a_training_read_of_a_shard_streams_the_same_bytes(big, server):
    local = (big / "shards" / "train-000000.tar").read_bytes()
    h, n, reads = hashlib.sha256(), 0, 0
    with open_binary(f"{server}/shards/train-000000.tar") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
            reads += 1
    assert (n, h.hexdigest()) == (len(local), hashlib.sha256(local).hexdigest())
    assert reads >= len(local) // (1 << 20)  # read front to back in pieces, not fetched whole first
