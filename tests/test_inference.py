"""predict, export and the Python API: the exported model gives the run's scores, predict on a
dataset gives evaluate's scores, and the README's notebook snippet runs."""

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from mlrpl_train.engine import train
from mlrpl_train.reports import evaluate_checkpoint
from mlrpl_train.inference import Predictions, export_run, load_predictor, predict_inputs
from mlrpl_train.options import DsrbOptions, TrainConfig

from trainkit import tiny_training_set

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The demo's layout: mlrpl-demo/{raw,dataset,run-dsrb}, a tiny DSRB trained for 2 epochs at 10%."""
    home = tmp_path_factory.mktemp("lab")
    d = tiny_training_set(home / "mlrpl-demo", n_train=32, n_test=8, proportion=0.5)
    cfg = TrainConfig(method="dsrb", dataset=str(d), masks="uniform-p0.50-s0", out=str(home / "mlrpl-demo" / "run-dsrb"),
                      backbone="tiny", weights="none", freeze="none", epochs=2, batch_size=4, lr=3e-3, image_size=48,
                      workers=0, progress=False, shuffle_buffer=8, val_fraction=0.0,
                      dsrb=DsrbOptions(feat_dim=32, attn_dim=16, blend_start=1, prototype_every=1, pool2x2=False))
    return home, d, train(cfg)


def test_top_k_and_threshold_by_hand():
    p = Predictions(["a", "b"], np.array([[0.1, 0.9, 0.5], [0.7, 0.2, 0.7]]), ["cat", "dog", "car"])
    assert p.top(2) == [[("dog", 0.9), ("car", 0.5)], [("cat", 0.7), ("car", 0.7)]]  # ties: class order
    assert p.top(3, threshold=0.6) == [[("dog", 0.9)], [("cat", 0.7), ("car", 0.7)]]


def test_predict_on_the_dataset_gives_evaluates_scores(lab, tmp_path):
    home, d, run = lab
    evaluate_checkpoint(run, str(d), out=tmp_path, workers=0, scores=tmp_path / "eval.parquet")
    ev = pq.read_table(tmp_path / "eval.parquet").to_pydict()
    preds = predict_inputs(load_predictor(run, device="cpu", batch_size=3), [str(d)])
    assert sorted(preds.keys) == sorted(ev["key"]) and len(preds.keys) == 8
    by_key = dict(zip(preds.keys, preds.scores))
    for key, scores in zip(ev["key"], ev["scores"]):
        np.testing.assert_allclose(by_key[key], scores, atol=1e-5)
    assert not np.allclose(preds.scores, preds.scores[:1])  # not one constant answer


@pytest.mark.parametrize("fmt", ["weights", "torchscript", "exported"])
def test_exported_model_gives_the_runs_scores(lab, tmp_path, fmt):
    home, d, run = lab
    images = sorted((home / "mlrpl-demo" / "raw" / "val2014").glob("*.jpg"))[:5]
    ref = load_predictor(run, device="cpu").predict(images)
    meta = export_run(run, tmp_path / "model.pt", fmt)
    assert meta["class_names"] == ["person", "car", "train"] and meta["preprocess"]["size"] == 48
    if fmt == "weights":
        doc = torch.load(tmp_path / "model.pt", weights_only=True)
        assert "optimizer" not in doc and doc["method"] == "dsrb"
    exported = load_predictor(tmp_path / "model.pt", device="cpu", batch_size=2)  # another batch size than traced
    assert exported.class_names == ["person", "car", "train"]
    np.testing.assert_allclose(exported.predict(images), ref, atol=1e-5)


def test_predict_cli_folder_parquet_and_threshold(lab, tmp_path):
    home, d, run = lab
    folder = home / "mlrpl-demo" / "raw" / "val2014"
    r = runner.invoke(app, ["predict", str(run), str(folder), "--top-k", "2", "--no-progress", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 8 and all(re.fullmatch(r"\S+\.jpg\t\w+ \d\.\d{3}  \w+ \d\.\d{3}", x) for x in lines), lines
    out = tmp_path / "p.parquet"
    r = runner.invoke(app, ["predict", str(run), str(folder), "--out", str(out), "--threshold", "0.5", "--no-progress",
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    t = pq.read_table(out).to_pydict()
    names = json.loads(pq.read_schema(out).metadata[b"class_names"])
    for scores, above, top in zip(t["scores"], t["above_threshold"], t["top_k"]):
        assert above == [n for n, s in zip(names, scores) if s >= 0.5]
        assert top[0] == names[int(np.argmax(scores))]
    r = runner.invoke(app, ["predict", str(run), str(tmp_path / "nothing-here.jpg")])
    assert r.exit_code != 0 and "nothing-here.jpg: no such image, folder or dataset" in r.output


def test_readme_python_snippet_runs(lab, monkeypatch):
    home, d, run = lab
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(home)
    scope: dict = {}
    exec(compile(code.replace("uniform-p0.10-s0", "uniform-p0.50-s0"), "README.md", "exec"), scope)
    batch, probabilities, model = scope["batch"], scope["probabilities"], scope["model"]
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape[1:] == (448, 448, 3)
    assert set(np.unique(batch["partial"].numpy())) <= {-1, 0, 1}
    assert probabilities.shape == (4, 3) and ((probabilities > 0) & (probabilities < 1)).all()
    assert model.class_names == ["person", "car", "train"]


def test_two_exports_of_a_run_are_byte_identical(lab, tmp_path):
    """Two `mlrpl export` commands (each its own process, each its own temporary and --out name) write the
    same bytes in every format: no file name, time or counter is inside. The archives' records are under
    `archive/`, whatever the file is called."""
    import hashlib
    import subprocess
    import sys
    import zipfile

    home, d, run = lab
    sha = {}
    for fmt, ext in (("weights", "pt"), ("torchscript", "ts"), ("exported", "pt2")):
        for name in ("first", "second-name"):
            out = tmp_path / f"{name}.{ext}"
            r = subprocess.run([sys.executable, "-m", "mlrpl.cli", "export", str(run), "--out", str(out), "--format",
                                fmt], cwd=REPO, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
            sha[fmt, name] = hashlib.sha256(out.read_bytes()).hexdigest()
            assert {n.split("/")[0] for n in zipfile.ZipFile(out).namelist()} == {"archive"}
        assert sha[fmt, "first"] == sha[fmt, "second-name"], fmt
    assert len(set(sha.values())) == 3
    # within one process too, but for TorchScript (torch renames a class traced twice: ___torch_mangle_N)
    export_run(run, tmp_path / "again.pt2", "exported")
    export_run(run, tmp_path / "again.pt", "weights")
    assert hashlib.sha256((tmp_path / "again.pt2").read_bytes()).hexdigest() == sha["exported", "first"]
    assert hashlib.sha256((tmp_path / "again.pt").read_bytes()).hexdigest() == sha["weights", "first"]
