"""Local paths are local paths: only an explicit `scheme://` is a URL, everywhere a dataset, run or
raw folder is opened (fsspec would read `a::b` as URL chaining, `#` and `?` as URL parts)."""

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mlrpl.cli import app
from mlrpl_data.readers import is_remote, local_path

runner = CliRunner()


@pytest.mark.parametrize("text", ["/data/a::b", "a::b/c", "runs/x#1", "d?x=1", "d%20e", "d [1]", "d*", "~/d", "s3:",
                                  "s3:/bucket", "s3:bucket::x", "ünï/cöde", "file:///tmp/x", "C:/d", "./http:/x"])
@pytest.mark.fuzzclass("path forms")
def test_local(text):
    assert not is_remote(text)


@pytest.mark.parametrize("text", ["s3://b/d", "https://lab.example/d", "gs://b", "memory://x", "simplecache::s3://b"])
@pytest.mark.fuzzclass("path forms")
def test_remote(text):
    assert is_remote(text) == ("::" not in text)  # a chained fsspec URL is not a scheme://: refused as a local path


@pytest.mark.fuzzclass("path forms")
def test_file_url_is_its_path():
    assert local_path("file:///tmp/x") == "/tmp/x" and local_path("/tmp/a::b") == "/tmp/a::b"


@pytest.mark.fuzzclass("path forms")
def test_whole_flow_in_a_folder_named_with_url_characters(tmp_path):
    from trainkit import tiny_training_set

    base = tmp_path / "lab::2026 #run 1"
    tiny_training_set(base, n_train=8, n_test=4, max_samples=4)  # the raw tree (and a dataset we don't use)
    raw, d, run = base / "raw", base / "ds::v1 #a", base / "run::1 #b"

    def ok(*args):
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 0, r.output
        return r.output

    ok("build-coco", "--root", raw, "--out", d)
    ok("make-masks", d, "--proportion", "0.5")
    ok("write-shards", d, "--max-samples", "3", "--no-progress")
    assert json.loads(ok("verify", d, "--json"))["problems"] == []
    ok("train", "pbce", d, "--masks", "uniform-p0.50-s0", "--backbone", "tiny", "--weights", "none", "--epochs", "1",
       "--batch-size", "4", "--image-size", "16", "--workers", "0", "--out", run, "--no-progress")
    e = json.loads(ok("evaluate", run, d, "--workers", "0", "--json"))
    assert e["keys_evaluated"] == 4
    ok("predict", run, f"file://{d}", "--out", base / "on-dataset.parquet", "--no-progress")
    ok("predict", run, raw / "val2014", "--out", base / "on-files.parquet", "--no-progress")
    on_dataset = pq.read_table(base / "on-dataset.parquet").to_pydict()
    on_files = pq.read_table(base / "on-files.parquet").to_pydict()
    by_id = {k.rsplit("_", 1)[-1]: s for k, s in zip(on_dataset["key"], on_dataset["scores"])}
    assert len(by_id) == 4 and len(on_files["key"]) == 4
    for path, scores in zip(on_files["key"], on_files["scores"]):  # the same bytes give the same scores
        assert scores == pytest.approx(by_id[path.rsplit("_", 1)[-1].removesuffix(".jpg")], abs=1e-6)
    stats = json.loads(ok("stats", d, "--json"))
    assert {s: v["images"] for s, v in stats["splits"].items()} == {"train": 8, "test": 4}
