import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from mlrpl_data.coco import CocoConfig, build_coco
from mlrpl_data.errors import BadInputError
from mlrpl_data.folder import read_manifest, write_manifest
from mlrpl_data import shards as shards_mod
from mlrpl_data.shards import ShardConfig, parse_size, plan_shards, write_shards
from mlrpl_data.verify import verify

from conftest import Loopback, make_coco


def dataset(tmp_path: Path, n_train=23, n_test=7, name="raw") -> Path:
    raw = make_coco(tmp_path / name, splits={
        "train": [(i, [1 + 2 * (i % 2)] if i % 3 else [1, 7]) for i in range(1, n_train + 1)],
        "val": [(100 + i, [3]) for i in range(n_test)]})
    rng = np.random.default_rng(0)
    for p in sorted((raw / "train2014").glob("*.jpg")) + sorted((raw / "val2014").glob("*.jpg")):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(p, quality=85)
    out = tmp_path / f"{name}-dataset"
    write_manifest(build_coco(CocoConfig(root=raw)), out)
    return out


def shas(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((d / "shards").glob("*.tar"))}


CFG = dict(max_samples=5, shard_size=None, progress=False, split="all")


def test_plain_webdataset_reads_the_shards(tmp_path):
    d = dataset(tmp_path)
    r = write_shards(d, ShardConfig(**CFG))
    assert r.complete and len(r.written) == 5 + 2  # 23 train / 5, 7 test / 5
    m = read_manifest(d)
    labels = dict(zip(m.keys, m.labels.tolist()))
    urls = [str(p) for p in sorted((d / "shards").glob("train-*.tar"))]
    seen = []
    for sample in wds.WebDataset(urls, shardshuffle=False):
        meta = json.loads(sample["json"])
        assert meta["labels"] == labels[sample["__key__"]] and meta["format"] == "JPEG"
        assert sample["jpg"] == (Path(m.root) / meta["source"]).read_bytes()  # original bytes
        seen.append(sample["__key__"])
    assert sorted(seen) == sorted(m.keys[m.split_rows("train")])
    assert seen != sorted(seen)  # shuffled order fixed by the manifest


def test_tar_members_are_fixed_and_ustar(tmp_path):
    d = dataset(tmp_path)
    write_shards(d, ShardConfig(**CFG))
    raw = (d / "shards" / "train-000000.tar").read_bytes()
    assert raw[257:263] == b"ustar\x00"
    with tarfile.open(d / "shards" / "train-000000.tar") as tar:
        members = tar.getmembers()
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.mode == 0o444 and m.uname == "" for m in members)
    names = [m.name for m in members]
    assert [n.rsplit(".", 1)[1] for n in names] == ["jpg", "json"] * 5


def test_same_bytes_on_another_machine_and_with_more_workers(tmp_path):
    a = dataset(tmp_path, name="lab1")
    b = dataset(tmp_path / "elsewhere", name="lab2")
    write_shards(a, ShardConfig(**CFG))
    write_shards(b, ShardConfig(**{**CFG, "workers": 2}))
    assert shas(a) == shas(b)
    ia, ib = (json.loads((x / "shards/index.json").read_text()) for x in (a, b))
    assert ia["shards"] == ib["shards"]


def test_index_and_sha256sums_check(tmp_path):
    d = dataset(tmp_path)
    write_shards(d, ShardConfig(**CFG))
    index = json.loads((d / "shards/index.json").read_text())
    s = index["shards"][0]
    assert set(s) >= {"name", "samples", "bytes", "sha256", "first_key", "last_key", "fingerprint"}
    assert index["splits"] == {"test": 7, "train": 23}
    r = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=d / "shards", capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_killed_build_resumes_to_identical_bytes(tmp_path, monkeypatch):
    ref = dataset(tmp_path, name="ref")
    write_shards(ref, ShardConfig(**CFG))
    d = dataset(tmp_path, name="crash")
    real_write = shards_mod.write_shard
    calls = {"n": 0}

    def dying(job):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the third shard
        return real_write(job)

    monkeypatch.setattr(shards_mod, "write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        write_shards(d, ShardConfig(**CFG))
    monkeypatch.setattr(shards_mod, "write_shard", real_write)
    assert not (d / "shards/index.json").exists()
    assert not list((d / "shards").glob(".*.tmp-*"))
    r = write_shards(d, ShardConfig(**CFG))
    assert len(r.kept) == 2 and len(r.written) == 5
    assert shas(d) == shas(ref)
    # a shard altered on disk is rewritten, not trusted
    p = d / "shards" / "train-000001.tar"
    p.write_bytes(p.read_bytes()[:-1024] + b"\x01" * 1024)
    r = write_shards(d, ShardConfig(**CFG))
    assert r.written == ["train-000001.tar"] and shas(d) == shas(ref)


def test_parts_build_the_same_shards(tmp_path):
    ref = dataset(tmp_path, name="ref")
    write_shards(ref, ShardConfig(**CFG))
    d = dataset(tmp_path, name="parts")
    r1 = write_shards(d, ShardConfig(**CFG, part=(1, 2)))
    assert not r1.complete and not (d / "shards/index.json").exists()
    r2 = write_shards(d, ShardConfig(**CFG, part=(2, 2)))
    assert r2.complete and len(r1.written) + len(r2.written) == 7
    assert shas(d) == shas(ref)


def test_new_plan_replaces_stale_shards(tmp_path):
    d = dataset(tmp_path)
    write_shards(d, ShardConfig(**CFG))
    write_shards(d, ShardConfig(**{**CFG, "max_samples": 12}))
    assert sorted(shas(d)) == ["test-000000.tar", "train-000000.tar", "train-000001.tar"]
    assert len(json.loads((d / "shards/index.json").read_text())["shards"]) == 3


def test_shard_size_plans_by_bytes(tmp_path):
    d = dataset(tmp_path)
    m = read_manifest(d)
    plans = plan_shards(m, ShardConfig(split="train", shard_size=parse_size("8KB"), progress=False))
    assert len(plans) > 2 and sum(len(p.rows) for p in plans) == 23
    # MB is decimal, MiB binary: the two spellings must not mean the same
    assert parse_size("512MB") == 512_000_000 and parse_size("512MiB") == 512 * 2**20
    assert parse_size("1.5GB") == 1_500_000_000 and parse_size("2GiB") == 2 * 2**30 and parse_size("4096") == 4096
    with pytest.raises(BadInputError):
        parse_size("lots")


def test_wild_images_pass_through_or_normalise(tmp_path):
    d = dataset(tmp_path, n_train=4, n_test=1)
    m = read_manifest(d)
    root = Path(m.root)
    paths = [root / p for p in m.images["path"]]
    Image.new("CMYK", (32, 24), (0, 50, 100, 0)).save(paths[0], "JPEG")
    Image.new("L", (32, 24), 90).save(paths[1], "JPEG")
    Image.new("RGB", (32, 24), (1, 2, 3)).save(paths[2], "PNG")  # a PNG named .jpg
    Image.fromarray(np.full((24, 32), 50000, dtype=np.uint16)).save(paths[3], "PNG")
    write_manifest(build_coco(CocoConfig(root=root)), d, force=True)
    write_shards(d, ShardConfig(**CFG))
    metas = {}
    for s in wds.WebDataset([str(p) for p in sorted((d / "shards").glob("*.tar"))], shardshuffle=False):
        metas[s["__key__"]] = (json.loads(s["json"]), s["jpg"])
    fmt = {k: v[0]["format"] for k, v in metas.items()}
    assert sorted(fmt.values()) == ["JPEG", "JPEG", "JPEG", "PNG", "PNG"]
    # --resize re-encodes everything to RGB JPEG
    shutil.rmtree(d / "shards")
    write_shards(d, ShardConfig(**CFG, resize=16))
    for s in wds.WebDataset([str(p) for p in sorted((d / "shards").glob("*.tar"))], shardshuffle=False):
        im = Image.open(io.BytesIO(s["jpg"]))
        meta = json.loads(s["json"])
        assert im.format == "JPEG" and im.mode == "RGB" and min(im.size) == 16 and meta["reencoded"]
        assert (meta["width"], meta["height"]) == im.size


def test_bad_image_fails_naming_file_or_is_skipped(tmp_path):
    d = dataset(tmp_path, n_train=6, n_test=1)
    m = read_manifest(d)
    bad = Path(m.root) / m.images["path"][2]
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(BadInputError, match=f"{bad.name}: truncated JPEG"):
        write_shards(d, ShardConfig(**CFG))
    assert not (d / "shards/index.json").exists() and not list((d / "shards").glob(".*tmp*"))
    r = write_shards(d, ShardConfig(**CFG, on_bad_image="skip"))
    assert r.complete and [s["key"] for s in r.index["skipped"]] == [m.keys[2]]
    assert r.index["splits"] == {"train": 5, "test": 1}


def test_verify_reports_every_problem(tmp_path):
    d = dataset(tmp_path)
    write_shards(d, ShardConfig(**CFG))
    assert verify(str(d)) == []
    sh = d / "shards"
    altered = bytearray((sh / "train-000000.tar").read_bytes())
    altered[600] ^= 0xFF
    (sh / "train-000000.tar").write_bytes(bytes(altered))
    (sh / "train-000001.tar").write_bytes((sh / "train-000001.tar").read_bytes()[:3000])
    (sh / "test-000001.tar").unlink()
    problems = verify(str(d))
    text = "\n".join(problems)
    assert "train-000000.tar: sha256" in text
    assert "train-000001.tar" in text and ("truncated" in text)
    assert "test-000001.tar: missing" in text


def test_cli_write_shards_and_verify(tmp_path):
    from typer.testing import CliRunner
    from mlrpl.cli import app

    d = dataset(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["write-shards", str(d), "--max-samples", "10", "--no-progress", "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert "4 written" in r.output
    assert runner.invoke(app, ["verify", str(d)]).exit_code == 0
    (d / "shards" / "train-000000.tar").unlink()
    r = runner.invoke(app, ["verify", str(d)])
    assert r.exit_code == 1 and "missing" in r.output


@pytest.fixture
def http_server(tmp_path):
    with Loopback(tmp_path) as srv:
        yield srv.url


def test_verify_over_http(tmp_path, http_server):
    d = dataset(tmp_path)
    write_shards(d, ShardConfig(**CFG))
    url = f"{http_server}/{d.name}"
    assert verify(url) == []
    (d / "shards" / "train-000002.tar").write_bytes(b"\x00" * 1024)
    assert any("train-000002.tar" in p for p in verify(url))


def test_verify_over_s3(tmp_path, s3):
    d = dataset(tmp_path)
    write_shards(d, ShardConfig(**CFG))
    url = s3.upload(d, "coco")
    assert verify(url) == []
    s3.client.put_object(Bucket=s3.bucket, Key="coco/shards/train-000003.tar", Body=b"nope")
    assert any("train-000003.tar" in p for p in verify(url))


def test_direct_header_equals_tarfiles():
    from mlrpl_data.tar import _tarinfo_header, ustar_header

    for name, size in (("coco2014_train_000000000009.jpg", 123456), ("k.json", 0), ("x" * 100, 7), ("é" * 30, 1 << 33 - 1),
                       ("y" * 150 + "/z.jpg", 5)):
        assert ustar_header(name, size) == _tarinfo_header(name, size)
