"""Hostile and nonsense invocations of every command, and the world they run in.

`build_world(root)` makes small valid inputs (raw COCO, VOC and VG trees, a dataset with masks and
shards, a trained run) plus damaged copies of them; `cases(world, outs)` lists invocations that
must each fail with one clear line: a non-zero exit, no traceback, no input file changed, and
nothing left in `outs` (a failed command removes what it made). `run_case` runs one in-process
under a time limit. Used by tests/test_fuzz.py and by tests/fuzz_report.py (the counts).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Case:
    id: str
    args: list[str]
    env: dict[str, str] | None = None


@dataclass
class Outcome:
    id: str
    exit_code: int | None
    clear: bool  # exit != 0 and a one-line error (ours or a usage error)
    traceback: bool
    hang: bool
    changed: list[str]  # input files changed or removed
    left: list[str]  # files left in the output folder
    output: str


class Hang(BaseException):
    """Raised by the alarm: a BaseException, so no command's error handling swallows it."""


# ---- the world ------------------------------------------------------------------------------------------------

def build_world(root: Path) -> dict[str, Path]:
    from conftest import make_vg, make_voc

    from mlrpl_data.masks import MaskConfig, make_masks
    from mlrpl_train.engine import train
    from mlrpl_train.options import TrainConfig
    from trainkit import tiny_training_set

    w: dict[str, Path] = {}
    w["data"] = tiny_training_set(root / "base", n_train=16, n_test=6, max_samples=6)
    make_masks(w["data"], MaskConfig(proportions=[0.3], split="test"))
    w["raw_coco"] = root / "base" / "raw"
    w["run"] = train(TrainConfig(method="pbce", dataset=str(w["data"]), masks="uniform-p0.50-s0", out=str(root / "run"),
                                 backbone="tiny", weights="none", epochs=1, batch_size=4, image_size=16, workers=0,
                                 progress=False))
    w["raw_voc"] = make_voc(root / "voc")
    w["raw_vg"] = make_vg(root / "vg")
    files = root / "files"
    files.mkdir()
    w["files"] = files
    (files / "notjson.json").write_text("{not json")
    (files / "list.json").write_text("[1, 2, 3]")
    (files / "nonutf8.txt").write_bytes(b"\xff\xfe\xfa bad")
    (files / "afile.txt").write_text("just a file\n")
    (files / "glove-bad.txt").write_text("person 1 x 3\n")
    np.save(files / "wrong-shape.npy", np.zeros((2, 5), np.float32))
    np.save(files / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (files / "empty.txt").write_text("")
    (files / "vocab-dict.json").write_text('{"a": 1}')
    _damaged_datasets(w, root)
    _damaged_raw(w, root)
    return w


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _damaged_datasets(w: dict[str, Path], root: Path) -> None:
    d = w["data"]
    bad = root / "bad"
    bad.mkdir()
    x = _copy(d, bad / "card-malformed")
    (x / "dataset.json").write_text("{oops")
    x = _copy(d, bad / "card-list")
    (x / "dataset.json").write_text("[]")
    x = _copy(d, bad / "card-types")
    card = json.loads((d / "dataset.json").read_text())
    (x / "dataset.json").write_text(json.dumps({**card, "num_classes": "three"}))
    x = _copy(d, bad / "card-nonutf8")
    (x / "dataset.json").write_bytes(b'{"name": "\xff"}')
    x = _copy(d, bad / "images-truncated")
    data = (x / "images.parquet").read_bytes()
    (x / "images.parquet").write_bytes(data[: len(data) // 2])
    x = _copy(d, bad / "images-columns")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": ["a"], "split": ["train"]}), x / "images.parquet")
    x = _copy(d, bad / "images-not-parquet")
    (x / "images.parquet").write_text("hello")
    x = _copy(d, bad / "categories-missing")
    (x / "categories.parquet").unlink()
    x = _copy(d, bad / "index-malformed")
    (x / "shards" / "index.json").write_text("{")
    x = _copy(d, bad / "index-types")
    idx = json.loads((d / "shards" / "index.json").read_text())
    idx["shards"][0]["samples"] = "many"
    (x / "shards" / "index.json").write_text(json.dumps(idx))
    x = _copy(d, bad / "index-traversal")
    idx = json.loads((d / "shards" / "index.json").read_text())
    idx["shards"][0]["name"] = "../../dataset.json"
    (x / "shards" / "index.json").write_text(json.dumps(idx))
    x = _copy(d, bad / "index-missing")
    (x / "shards" / "index.json").unlink()
    x = _copy(d, bad / "sidecar-malformed")
    (x / "masks" / "uniform-p0.50-s0.json").write_text("{")
    x = _copy(d, bad / "sidecar-list")
    (x / "masks" / "uniform-p0.50-s0.json").write_text("[]")
    x = _copy(d, bad / "mask-truncated")
    p = x / "masks" / "uniform-p0.50-s0.parquet"
    p.write_bytes(p.read_bytes()[:40])
    x = _copy(d, bad / "mask-fingerprint")
    side = x / "masks" / "uniform-p0.50-s0.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "fingerprint": "0" * 64}))
    x = _copy(d, bad / "shard-zero")
    first = sorted((x / "shards").glob("train-*.tar"))[0]
    first.unlink()
    first.symlink_to("/dev/zero")
    w["bad"] = bad
    r = root / "badruns"
    r.mkdir()
    x = _copy(w["run"], r / "ckpt-corrupt")
    (x / "last.pt").write_bytes(b"not a checkpoint")
    if (x / "best.pt").exists():
        (x / "best.pt").write_bytes(b"PK\x03\x04 nope")
    x = _copy(w["run"], r / "config-unknown-key")
    doc = json.loads((x / "config.json").read_text())
    doc["config"]["blend_strat"] = 1
    (x / "config.json").write_text(json.dumps(doc))
    x = _copy(w["run"], r / "config-malformed")
    (x / "config.json").write_text("{")
    w["badruns"] = r


def _damaged_raw(w: dict[str, Path], root: Path) -> None:
    from conftest import make_coco, make_voc

    raw = root / "badraw"
    raw.mkdir()

    def coco_with(name: str, train_doc) -> Path:
        r = make_coco(raw / name)
        p = r / "annotations" / "instances_train2014.json"
        p.write_bytes(train_doc if isinstance(train_doc, bytes) else json.dumps(train_doc).encode())
        return r

    good = json.loads((w["raw_coco"] / "annotations" / "instances_train2014.json").read_text())
    coco_with("coco-notjson", b"{nope")
    coco_with("coco-list", [1, 2])
    coco_with("coco-images-dict", {**good, "images": {"a": 1}})
    coco_with("coco-id-string", {**good, "images": [{**im, "id": str(im["id"])} for im in good["images"]]})
    coco_with("coco-dup-id", {**good, "images": good["images"] + good["images"][:1]})
    coco_with("coco-nonutf8", b'{"images": [], "x": "\xff"}')
    coco_with("coco-unknown-image", {**good, "annotations": good["annotations"] + [
        {"id": 999, "image_id": 424242, "category_id": good["categories"][0]["id"]}]})
    coco_with("coco-cat-string", {**good, "annotations": [{**a, "category_id": "1"} for a in good["annotations"]]})
    coco_with("coco-width-text", {**good, "images": [{**im, "width": "wide"} for im in good["images"]]})
    coco_with("coco-no-filename", {**good, "images": [{k: v for k, v in im.items() if k != "file_name"}
                                                      for im in good["images"]]})
    coco_with("coco-traversal", {**good, "images": [{**im, "file_name": "../../../etc/passwd"} for im in good["images"]]})
    coco_with("coco-categories-null", {**good, "categories": None})
    coco_with("coco-ann-list", {**good, "annotations": [[1, 2]]})

    def voc_with(name: str, edit) -> Path:
        r = make_voc(raw / name)
        edit(r / "VOCdevkit" / "VOC2007")
        return r

    voc_with("voc-xml-malformed", lambda v: (v / "Annotations" / "000005.xml").write_text("<annotation><size>"))
    voc_with("voc-xml-nosize", lambda v: (v / "Annotations" / "000005.xml").write_text(
        "<annotation><object><name>dog</name></object></annotation>"))
    voc_with("voc-xml-bomb", lambda v: (v / "Annotations" / "000005.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
        "<annotation>&b;</annotation>"))
    voc_with("voc-unknown-class", lambda v: (v / "Annotations" / "000005.xml").write_text(
        "<annotation><size><width>8</width><height>8</height></size><object><name>unicorn</name></object></annotation>"))
    voc_with("voc-perclass-list", lambda v: (v / "ImageSets" / "Main" / "trainval.txt").write_text("000005  1\n"))
    voc_with("voc-empty-split", lambda v: (v / "ImageSets" / "Main" / "test.txt").write_text(""))
    voc_with("voc-nonutf8-list", lambda v: (v / "ImageSets" / "Main" / "trainval.txt").write_bytes(b"\xff\xfe\n"))
    voc_with("voc-size-text", lambda v: (v / "Annotations" / "000005.xml").write_text(
        "<annotation><size><width>wide</width><height>8</height></size></annotation>"))
    voc_with("voc-nonutf8-xml", lambda v: (v / "Annotations" / "000005.xml").write_bytes(
        b"<annotation><size><width>8</width><height>8</height></size><object><name>\xff</name></object></annotation>"))

    def vg_with(name: str, objects=None, image_data=None) -> Path:
        from conftest import make_vg

        r = make_vg(raw / name)
        if objects is not None:
            (r / "objects.json").write_bytes(objects if isinstance(objects, bytes) else json.dumps(objects).encode())
        if image_data is not None:
            (r / "image_data.json").write_bytes(image_data if isinstance(image_data, bytes) else json.dumps(image_data).encode())
        return r

    vg_with("vg-objects-dict", objects={"a": 1})
    vg_with("vg-objects-notjson", objects=b"[{")
    vg_with("vg-image-id-text", image_data=[{"image_id": "one", "width": 3, "height": 3}])
    vg_with("vg-width-text", image_data=[{"image_id": 1, "width": "x", "height": 3}])
    vg_with("vg-objects-names-int", objects=[{"image_id": 1, "objects": [{"object_id": 1, "names": [5]}]}])
    vg_with("vg-objects-not-list", objects=[{"image_id": 1, "objects": "tree"}])
    vg_with("vg-nonutf8", objects=b'[{"image_id": 1, "objects": [{"names": ["\xff"]}]}]')
    w["badraw"] = raw


# ---- the cases ------------------------------------------------------------------------------------------------------

def cases(w: dict[str, Path], outs: Path) -> list[Case]:
    d, run, f, bad, raw = str(w["data"]), str(w["run"]), w["files"], w["bad"], w["badraw"]
    o = str(outs / "o")
    tiny = ["--backbone", "tiny", "--weights", "none", "--epochs", "1", "--batch-size", "4", "--image-size", "16",
            "--workers", "0", "--no-progress"]
    train = ["train", "pbce", d, "--masks", "uniform-p0.50-s0", "--out", o]
    c: list[Case] = []

    def add(id_, *args, env=None):
        c.append(Case(id_, [str(a) for a in args], env))

    # train: every numeric option out of range, every choice outside its set, nonsense text
    bad_train = {
        "batch-size-0": ["--batch-size", "0"], "batch-size-neg": ["--batch-size", "-3"], "batch-size-text": ["--batch-size", "abc"],
        "lr-0": ["--lr", "0"], "lr-neg": ["--lr", "-1"], "lr-nan": ["--lr", "nan"], "lr-step-0": ["--lr-step", "0"],
        "image-size-0": ["--image-size", "0"], "image-size-neg": ["--image-size", "-5"], "workers-neg": ["--workers", "-1"],
        "feat-dim-0": ["--feat-dim", "0"], "attn-dim-0": ["--attn-dim", "0"], "grid-k-neg": ["--grid-k", "-1"],
        "grid-k-huge": ["--grid-k", "9"], "prototype-every-0": ["--prototype-every", "0"], "epochs-0": ["--epochs", "0"],
        "crop-text": ["--crop-scales", "abc"], "crop-0": ["--crop-scales", "512,0"], "crop-empty": ["--crop-scales", ","],
        "crop-huge": ["--crop-scales", "1024"], "device-cuda": ["--device", "cuda"], "device-tpu": ["--device", "tpu"],
        "on-bad-sample-foo": ["--on-bad-sample", "foo"], "backbone-vgg": ["--backbone", "vgg"],
        "freeze-layer9": ["--freeze", "layer9"], "bce-foo": ["--bce", "foo"], "contrastive-foo": ["--contrastive", "foo"],
        "csrl-foo": ["--csrl", "xx"], "blend-foo": ["--blend", "xx"], "cst-weight-neg": ["--contrastive-weight", "-1"],
        "ggnn-0": ["--ggnn-steps", "0"], "eval-every-0": ["--eval-every", "0"], "ckpt-every-neg": ["--checkpoint-every", "-1"],
        "shuffle-0": ["--shuffle-buffer", "0"], "seed-neg": ["--seed", "-1"], "weight-decay-neg": ["--weight-decay", "-1"],
        "blend-start-neg": ["--blend-start", "-2"], "form-foo": ["--form", "fast"],
    }
    for k, extra in bad_train.items():
        add(f"train-{k}", *train, *tiny, *extra)
    add("train-dsrb-feat-0", "train", "dsrb", d, "--masks", "uniform-p0.50-s0", "--out", o, *tiny, "--feat-dim", "0")
    add("train-weights-missing", *train, "--backbone", "resnet18", "--weights", f / "nope.pth", "--workers", "0", "--epochs", "1")
    add("train-weights-not-a-state", *train, "--backbone", "resnet18", "--weights", f / "afile.txt", "--workers", "0")
    add("train-tiny-imagenet", *train, "--backbone", "tiny", "--weights", "imagenet", "--workers", "0")
    add("train-method-bogus", "train", "svm", d, "--masks", "uniform-p0.50-s0", "--out", o, *tiny)
    add("train-dataset-missing", "train", "pbce", f / "nope", "--masks", "m", "--out", o, *tiny)
    add("train-dataset-is-file", "train", "pbce", f / "afile.txt", "--masks", "m", "--out", o, *tiny)
    add("train-dataset-raw", "train", "pbce", w["raw_coco"], "--masks", "m", "--out", o, *tiny)
    add("train-no-masks", "train", "pbce", d, "--out", o, *tiny)
    add("train-mask-missing", *train[:3], "--masks", "nope-p0.10-s0", "--out", o, *tiny)
    add("train-mask-traversal", *train[:3], "--masks", "../../dataset", "--out", o, *tiny)
    add("train-test-mask", *train[:3], "--masks", "uniform-p0.30-s0-test", "--out", o, *tiny)
    add("train-out-is-file", *train[:5], "--out", f / "afile.txt", *tiny)
    add("train-out-is-dataset", *train[:5], "--out", d, *tiny)
    add("train-out-is-dataset-force", *train[:5], "--out", d, *tiny, "--force")
    add("train-out-foreign-force", *train[:5], "--out", f, *tiny, "--force")
    add("train-existing-run", *train[:5], "--out", run, *tiny)
    add("train-resume-missing", "train", "pbce", d, "--resume", f / "nope")
    add("train-resume-not-run", "train", "pbce", d, "--resume", f)
    add("train-resume-conflict", "train", "pbce", d, "--resume", run, "--lr", "0.5")
    add("train-resume-method", "train", "dsrb", d, "--resume", run)
    add("train-resume-config-unknown", "train", "pbce", d, "--resume", w["badruns"] / "config-unknown-key")
    add("train-resume-config-malformed", "train", "pbce", d, "--resume", w["badruns"] / "config-malformed")
    add("train-resume-ckpt-corrupt", "train", "pbce", d, "--resume", w["badruns"] / "ckpt-corrupt", "--epochs", "3")
    add("train-nproc-0", *train, *tiny, "--nproc", "0")
    for name in ("card-malformed", "images-truncated", "index-malformed", "index-types", "index-traversal",
                 "index-missing", "sidecar-malformed", "mask-truncated", "mask-fingerprint"):
        add(f"train-{name}", "train", "pbce", bad / name, "--masks", "uniform-p0.50-s0", "--out", o, *tiny)
    add("train-shard-zero", "train", "pbce", bad / "shard-zero", "--masks", "uniform-p0.50-s0", "--out", o, *tiny,
        "--on-bad-sample", "fail")
    # sweep
    sweep = ["sweep", "pbce", d, "--out", o, *tiny]
    for k, extra in {"seeds-neg": ["--seeds", "-1"], "seeds-text": ["--seeds", "abc"], "seeds-empty": ["--seeds", ","],
                     "prop-0": ["--proportions", "0"], "prop-big": ["--proportions", "1.5"], "prop-text": ["--proportions", "x"],
                     "prop-dup": ["--proportions", "0.3,0.30"], "prop-range-empty": ["--proportions", "0.5:0.1:0.1"],
                     "prop-step-0": ["--proportions", "0.1:0.5:0"], "scheme-foo": ["--scheme", "foo"],
                     "lr-0": ["--lr", "0"], "batch-0": ["--batch-size", "0"]}.items():
        add(f"sweep-{k}", *sweep, *extra)
    add("sweep-dataset-missing", "sweep", "pbce", f / "nope", "--out", o, *tiny, "--proportions", "0.5")
    add("sweep-out-is-dataset", "sweep", "pbce", d, "--out", d, *tiny, "--proportions", "0.5")
    # make-masks and masks
    mm = ["make-masks", d]
    for k, extra in {"prop-0": ["--proportion", "0"], "prop-neg": ["--proportion", "-0.1"], "prop-2": ["--proportion", "2"],
                     "prop-text": ["--proportion", "abc"], "prop-empty": ["--proportion", ""],
                     "prop-step-0": ["--proportion", "0.1:0.9:0"], "prop-dup": ["--proportion", "0.3,0.3"],
                     "scheme-foo": ["--scheme", "bernoulli"], "split-val": ["--split", "val"], "seed-neg": ["--seed", "-1"]}.items():
        add(f"make-masks-{k}", *mm, *extra)
    for target, name in ((f / "nope", "missing"), (f / "afile.txt", "file"), (w["raw_coco"], "raw-folder"),
                         (bad / "card-malformed", "card-malformed"), (bad / "card-list", "card-list"),
                         (bad / "card-types", "card-types"), (bad / "card-nonutf8", "card-nonutf8"),
                         (bad / "images-truncated", "images-truncated"), (bad / "images-columns", "images-columns"),
                         (bad / "images-not-parquet", "images-not-parquet"), (bad / "categories-missing", "categories-missing")):
        add(f"make-masks-{name}", "make-masks", target, "--proportion", "0.2")
        add(f"stats-{name}", "stats", target)
    add("masks-sidecar-malformed", "masks", bad / "sidecar-malformed")
    add("masks-sidecar-list", "masks", bad / "sidecar-list")
    add("masks-mask-truncated", "masks", bad / "mask-truncated")
    add("masks-mask-fingerprint", "masks", bad / "mask-fingerprint")
    add("masks-missing", "masks", f / "nope")
    # write-shards
    ws = ["write-shards", d, "--no-progress"]
    for k, extra in {"resize-neg": ["--resize", "-5"], "resize-0": ["--resize", "0"], "quality-0": ["--quality", "0"],
                     "quality-101": ["--quality", "101"], "max-samples-0": ["--max-samples", "0"],
                     "size-text": ["--shard-size", "abc"], "size-0": ["--shard-size", "0"], "size-neg": ["--shard-size", "-1MB"],
                     "workers-0": ["--workers", "0"], "part-0": ["--part", "0/2"], "part-3of2": ["--part", "3/2"],
                     "part-text": ["--part", "abc"], "part-div0": ["--part", "1/0"], "split-val": ["--split", "val"],
                     "on-bad-foo": ["--on-bad-image", "foo"]}.items():
        add(f"write-shards-{k}", *ws, *extra)
    add("write-shards-missing", "write-shards", f / "nope")
    add("write-shards-truncated", "write-shards", bad / "images-truncated")
    # verify
    for name in ("index-malformed", "index-types", "index-traversal", "index-missing", "card-malformed",
                 "images-truncated", "shard-zero", "sidecar-malformed", "mask-truncated"):
        add(f"verify-{name}", "verify", bad / name, "--no-progress")
    add("verify-missing", "verify", f / "nope")
    add("verify-s3-no-credentials", "verify", "s3://no-such-bucket/x", env={
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
        "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"})
    add("verify-http-refused", "verify", "http://127.0.0.1:9/data")
    # evaluate
    add("evaluate-run-missing", "evaluate", f / "nope", d)
    add("evaluate-not-a-run", "evaluate", f, d)
    add("evaluate-ckpt-corrupt", "evaluate", w["badruns"] / "ckpt-corrupt" / "last.pt", d)
    add("evaluate-ckpt-text", "evaluate", f / "afile.txt", d)
    add("evaluate-other-dataset", "evaluate", run, bad / "card-types")
    add("evaluate-out-is-file", "evaluate", run, d, "--out", f / "afile.txt", "--workers", "0")
    add("evaluate-workers-neg", "evaluate", run, d, "--workers", "-1")
    add("evaluate-dataset-missing", "evaluate", run, f / "nope")
    add("evaluate-index-missing", "evaluate", run, bad / "index-missing")
    # builders
    add("build-coco-root-missing", "build-coco", "--root", f / "nope", "--out", o)
    add("build-coco-root-file", "build-coco", "--root", f / "afile.txt", "--out", o)
    add("build-coco-out-root", "build-coco", "--root", w["raw_coco"], "--out", w["raw_coco"], "--force")
    add("build-coco-out-inside-root", "build-coco", "--root", w["raw_coco"], "--out", w["raw_coco"] / "sub", "--force")
    add("build-coco-out-foreign", "build-coco", "--root", w["raw_coco"], "--out", f, "--force")
    add("build-coco-out-file", "build-coco", "--root", w["raw_coco"], "--out", f / "afile.txt")
    add("build-coco-year", "build-coco", "--root", w["raw_coco"], "--out", o, "--year", "1999")
    add("build-coco-splits", "build-coco", "--root", w["raw_coco"], "--out", o, "--splits", "foo")
    add("build-coco-splits-empty", "build-coco", "--root", w["raw_coco"], "--out", o, "--splits", ",")
    add("build-coco-other-dataset", "build-coco", "--root", w["raw_coco"], "--out", d, "--exclude-crowd")
    for p in sorted(raw.glob("coco-*")):
        add(f"build-{p.name}", "build-coco", "--root", p, "--out", o)
    for p in sorted(raw.glob("voc-*")):
        add(f"build-{p.name}", "build-voc07", "--root", p, "--out", o, "--subset")
    add("build-voc-difficult-foo", "build-voc07", "--root", w["raw_voc"], "--out", o, "--difficult", "maybe")
    add("build-voc-root-missing", "build-voc07", "--root", f / "nope", "--out", o)
    add("build-voc-not-subset", "build-voc07", "--root", w["raw_voc"], "--out", o)
    for p in sorted(raw.glob("vg-*")):
        add(f"build-{p.name}", "build-vg200", "--root", p, "--out", o, "--test-size", "1")
    vg = ["build-vg200", "--root", w["raw_vg"], "--out", o]
    add("build-vg-test-size-0", *vg, "--test-size", "0")
    add("build-vg-test-size-neg", *vg, "--test-size", "-1")
    add("build-vg-test-size-huge", *vg, "--test-size", "99999")
    add("build-vg-classes-0", *vg, "--num-classes", "0")
    add("build-vg-seed-neg", *vg, "--seed", "-1")
    add("build-vg-ssgrl-alone", *vg, "--ssgrl-labels", f / "list.json")
    add("build-vg-ssgrl-labels-list", *vg, "--ssgrl-lists", f / "afile.txt", f / "empty.txt", "--ssgrl-labels", f / "list.json")
    add("build-vg-vocabulary-dict", *vg, "--vocabulary", f / "vocab-dict.json", "--test-size", "1")
    add("build-vg-vocabulary-notjson", *vg, "--vocabulary", f / "notjson.json", "--test-size", "1")
    add("build-vg-aliases-nonutf8", *vg, "--aliases", f / "nonutf8.txt", "--test-size", "1")
    # embed-labels
    add("embed-from-missing", "embed-labels", d, "--from", f / "nope.txt")
    add("embed-from-bad-glove", "embed-labels", d, "--from", f / "glove-bad.txt")
    add("embed-npy-shape", "embed-labels", d, "--from", f / "wrong-shape.npy")
    add("embed-npy-pickle", "embed-labels", d, "--from", f / "objects.npy")
    add("embed-dataset-missing", "embed-labels", f / "nope", "--from", f / "wrong-shape.npy")
    add("embed-nonutf8", "embed-labels", d, "--from", f / "nonutf8.txt")
    # demo, demo-data, global
    add("demo-epochs-0", "demo", "--out", o, "--epochs", "0")
    add("demo-out-file", "demo", "--out", f / "afile.txt", "--epochs", "1")
    for k, extra in {"image-size-0": ["--image-size", "0"], "grid-0": ["--grid", "0"], "max-digits-99": ["--max-digits", "99"],
                     "train-scans-big": ["--train-scans", "1.5"], "train-images-0": ["--train-images", "0"]}.items():
        add(f"demo-data-{k}", "demo-data", "--out", o, *extra)
    add("demo-data-out-file", "demo-data", "--out", f / "afile.txt", "--train-images", "2", "--test-images", "1")
    add("demo-data-out-foreign", "demo-data", "--out", f, "--train-images", "2", "--test-images", "1")
    # pull, predict, export; the builders of natural partial labels
    add("pull-no-listing", "pull", f, o, "--no-progress")
    add("pull-dataset-missing", "pull", f / "nope", o, "--no-progress")
    add("pull-into-foreign", "pull", d, f, "--no-progress")
    add("pull-into-source", "pull", d, d, "--no-progress")
    add("pull-jobs-0", "pull", d, o, "--jobs", "0")
    add("pull-mask-unknown", "pull", d, o, "--masks", "nope-s0", "--no-progress")
    add("pull-split-foo", "pull", d, o, "--split", "val")
    add("pull-http-refused", "pull", "http://127.0.0.1:9/x", o, "--no-progress", env={"MLRPL_RETRIES": "1"})
    add("predict-model-missing", "predict", f / "nope", f / "afile.txt", "--no-progress")
    add("predict-model-not-torch", "predict", f / "afile.txt", f / "afile.txt", "--no-progress")
    add("predict-input-missing", "predict", run, f / "nope.jpg", "--no-progress", "--device", "cpu")
    add("predict-input-not-image", "predict", run, f / "afile.txt", "--no-progress", "--device", "cpu")
    add("predict-top-k-0", "predict", run, f / "afile.txt", "--top-k", "0")
    add("predict-threshold-2", "predict", run, f / "afile.txt", "--threshold", "2")
    add("predict-empty-folder", "predict", run, outs, "--no-progress", "--device", "cpu")
    add("export-run-missing", "export", f / "nope", "--out", f"{o}/m.pt")
    add("export-format-foo", "export", run, "--out", f"{o}/m.pt", "--format", "onnx")
    add("export-not-a-run", "export", f, "--out", f"{o}/m.pt")
    add("build-openimages-empty-root", "build-openimages", "--root", f, "--out", o, "--no-progress")
    add("build-openimages-classes-missing", "build-openimages", "--root", f, "--out", o, "--classes", f / "nope.txt")
    add("build-lvis-empty-root", "build-lvis", "--root", f, "--out", o, "--no-progress")
    add("build-nuswide-empty-root", "build-nuswide", "--root", f, "--out", o, "--no-progress")
    add("build-csv-missing", "build-csv", "--labels", f / "nope.csv", "--images", f, "--out", o)
    add("build-csv-not-csv", "build-csv", "--labels", f / "nonutf8.txt", "--images", f, "--out", o)
    add("build-csv-no-header", "build-csv", "--labels", f / "afile.txt", "--images", f, "--out", o)
    add("build-csv-test-fraction-2", "build-csv", "--labels", f / "afile.txt", "--images", f, "--out", o,
        "--test-fraction", "2")
    add("unknown-command", "frobnicate")
    add("unknown-option", "stats", d, "--colour")
    add("stats-json-missing", "stats", f / "nope", "--json")
    # raw files (mlrpl_data/rawfiles.py): paths, duplicates, records, header rows, 0/1 CSVs, proportions
    from conftest import make_coco, make_voc, write_jpeg

    rf = raw / "rawfiles"
    if not rf.exists():
        def coco_names(name: str, names: dict[int, str]) -> Path:
            r = make_coco(rf / name)
            p = r / "annotations" / "instances_train2014.json"
            doc = json.loads(p.read_text())
            for im in doc["images"]:
                im["file_name"] = names.get(im["id"], im["file_name"])
            p.write_text(json.dumps(doc))
            return r

        coco_names("coco-backslash-up", {10: "..\\..\\x.jpg"})
        coco_names("coco-drive", {10: "C:\\x.jpg"})
        coco_names("coco-same-file", {11: "./COCO_train2014_000000000010.jpg"})
        r = make_coco(rf / "coco-case")
        (r / "train2014" / "COCO_train2014_000000000010.jpg").rename(r / "train2014" / "COCO_train2014_000000000010.JPG")
        r = make_voc(rf / "voc-both-splits")
        (r / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt").write_bytes(b"\xef\xbb\xbf000001\r\n000007\r\n")
        r = make_voc(rf / "voc-twice")
        (r / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt").write_bytes(b"000001\r\n\r\n 000001\r\n")
        (rf / "lab").mkdir(parents=True)
        for i in range(3):
            write_jpeg(rf / "lab" / "img" / f"a{i}.jpg")
        csvs = {"csv-same-file": "path,split,cat\nimg/a0.jpg,train,1\nimg/a1.jpg,train,-1\n./img/a0.jpg,test,-1\n",
                "csv-backslash-same": "path,split,cat\nimg\\a0.jpg,train,1\nimg/a1.jpg,test,-1\nimg/a0.jpg,test,1\n",
                "csv-zero-one": "path,split,cat\nimg/a0.jpg,train,1\nimg/a1.jpg,test,0\n",
                "csv-unnamed-column": "path,split,cat,\nimg/a0.jpg,train,1,x\nimg/a1.jpg,test,-1,\n",
                "csv-header-again": "path,split,cat\nimg/a0.jpg,train,1\npath,split,cat\nimg/a1.jpg,test,-1\n",
                "csv-drive": "path,split,cat\nC:\\img\\a0.jpg,train,1\nimg/a1.jpg,test,-1\n"}
        for name, text in csvs.items():
            (rf / "lab" / f"{name}.csv").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
        (rf / "oi").mkdir()
        (rf / "oi" / "class-descriptions-boxable.csv").write_text("/m/1,Person\nLabelName,DisplayName\n/m/2,Car\n")
        lv = rf / "lvis"
        lv.mkdir()
        cats = [{"id": 1, "name": "can"}]
        for split, fname in (("train2017", "lvis_v1_train.json"), ("val2017", "lvis_v1_val.json")):
            write_jpeg(lv / split / "000000000001.jpg")
            (lv / fname).write_text(json.dumps({"images": [{"id": 1, "height": 24, "coco_url": f"http://x/{split}/000000000001.jpg"}],
                                                "annotations": [], "categories": cats}))
    for p in sorted(rf.glob("coco-*")):
        add(f"rawfiles-build-{p.name}", "build-coco", "--root", p, "--out", o, "--subset", "--no-progress")
    for p in sorted(rf.glob("voc-*")):
        add(f"rawfiles-build-{p.name}", "build-voc07", "--root", p, "--out", o, "--subset", "--no-progress")
    for p in sorted((rf / "lab").glob("*.csv")):
        add(f"rawfiles-build-{p.stem}", "build-csv", "--labels", p, "--images", rf / "lab", "--out", o, "--no-progress")
    add("rawfiles-build-csv-zero-means-foo", "build-csv", "--labels", rf / "lab" / "csv-zero-one.csv", "--images",
        rf / "lab", "--out", o, "--zero-means", "maybe")
    add("rawfiles-build-openimages-header-again", "build-openimages", "--root", rf / "oi", "--out", o, "--no-progress")
    add("rawfiles-build-lvis-no-width", "build-lvis", "--root", rf / "lvis", "--out", o, "--no-progress")
    add("rawfiles-build-vg-ssgrl-list-up", "build-vg200", "--root", w["raw_vg"], "--out", o,
        "--ssgrl-lists", f / "afile.txt", rf / "lab" / "csv-drive.csv", "--ssgrl-labels", f / "vocab-dict.json")
    for k, prop in {"tiny-step": "0.000001:1:0.000001", "1e-12": "1e-12", "7-decimals": "0.1234567",
                    "backwards": "0.5:0.1:0.1", "inf-stop": "0.1:inf:0.1", "over-limit": "0.0005:1:0.0005"}.items():
        add(f"rawfiles-make-masks-{k}", "make-masks", d, "--proportion", prop)
    # images and local paths: damaged images get the same one line on every path; a local path with
    # URL characters ('::', '#', 's3:') is a local path
    img = _image_files(f.parent / "images-area")
    add("images-predict-truncated-jpeg", "predict", run, img / "cut.jpg", "--no-progress", "--device", "cpu")
    add("images-predict-truncated-png", "predict", run, img / "cut.png", "--no-progress", "--device", "cpu")
    add("images-predict-folder-one-truncated", "predict", run, img, "--no-progress", "--device", "cpu")
    add("images-predict-html-named-jpg", "predict", run, img / "page" / "404.jpg", "--no-progress", "--device", "cpu")
    add("images-build-csv-html-named-jpg", "build-csv", "--labels", img / "page" / "labels.csv", "--images",
        img / "page", "--out", o, "--no-progress")
    add("paths-train-missing-colons", *train[:2], f / "no::such #1", *train[3:], *tiny)
    add("paths-verify-missing-colons", "verify", f / "no::such #1")
    add("paths-evaluate-run-hash-missing", "evaluate", f / "run #1", d, "--workers", "0")
    add("paths-predict-dataset-colons-broken", "predict", run, img / "ds::x #1", "--no-progress", "--device", "cpu")
    add("paths-stats-s3-colon-folder", "stats", f / "s3:")
    add("paths-pull-colons-missing", "pull", f / "a::b", o, "--no-progress")

    # ---- training bookkeeping (fix-train): a resume trains on what its checkpoint was trained with; no batch of one
    def edited_run(name: str, **changes) -> Path:
        """A copy of the run whose config.json was edited by hand (made once, before the snapshot)."""
        x = w["badruns"] / name
        if not x.exists():
            _copy(w["run"], x)
            doc = json.loads((x / "config.json").read_text())
            doc["config"].update(changes)
            (x / "config.json").write_text(json.dumps(doc))
        return x

    add("train-resume-variant-changed", "train", "llr", d, "--resume", run, "--variant", "cp")
    add("train-resume-baseline-option", "train", "pbce", d, "--resume", run, "--asl-gamma-neg", "2")
    add("train-resume-shuffle-changed", "train", "pbce", d, "--resume", run, "--shuffle-buffer", "3")
    add("train-resume-config-edited-lr", "train", "pbce", d, "--resume", edited_run("config-edited-lr", lr=0.5),
        "--epochs", "2")
    add("train-resume-config-edited-mask", "train", "pbce", d, "--resume",
        edited_run("config-edited-mask", masks="uniform-p0.30-s0-test"))
    add("train-batch-size-1", *train, *tiny, "--batch-size", "1")
    # files a command writes (checkpoints, exports, predictions, scores): never onto an input, never a
    # foreign file, and a model file with one flipped byte is refused
    flipped = _flipped_run(w)
    for id_, *args in (
            ("predict-out-is-input", "predict", run, f / "afile.txt", "--out", f / "afile.txt"),
            ("predict-out-dotdot-input", "predict", run, f / "afile.txt", "--out", f / ".." / f.name / "afile.txt"),
            ("predict-out-is-last-pt", "predict", run, f / "afile.txt", "--out", f"{run}/last.pt"),
            ("predict-out-is-config", "predict", f"{run}/last.pt", f / "afile.txt", "--out", f"{run}/config.json"),
            ("predict-out-in-input-folder", "predict", run, f, "--out", f / "preds.parquet"),
            ("predict-out-in-dataset", "predict", run, d, "--out", f"{d}/images.parquet"),
            ("predict-out-foreign", "predict", run, d, "--out", f / "notjson.json"),
            ("export-out-is-last-pt", "export", run, "--out", f"{run}/last.pt"),
            ("export-ckpt-onto-itself", "export", f"{run}/last.pt", "--out", f"{run}/last.pt"),
            ("export-out-is-config", "export", run, "--out", f"{run}/config.json", "--format", "torchscript"),
            ("export-out-foreign", "export", run, "--out", f / "afile.txt"),
            ("export-out-folder", "export", run, "--out", f),
            ("evaluate-scores-manifest", "evaluate", run, d, "--scores", f"{d}/images.parquet", "--workers", "0"),
            ("evaluate-scores-last-pt", "evaluate", run, d, "--scores", f"{run}/last.pt", "--workers", "0"),
            ("evaluate-out-dataset", "evaluate", run, d, "--out", d, "--workers", "0"),
            ("evaluate-scores-foreign", "evaluate", run, d, "--scores", f / "afile.txt", "--workers", "0"),
            ("train-out-inside-dataset", *train[:5], "--out", f"{d}/run", *tiny),
            ("embed-from-is-output", "embed-labels", d, "--from", f"{d}/label_embeddings.npy"),
            ("build-coco-out-holds-root", "build-coco", "--root", w["raw_coco"], "--out", w["raw_coco"].parent, "--force"),
            ("evaluate-flipped-byte", "evaluate", flipped, d, "--workers", "0"),
            ("predict-flipped-byte", "predict", flipped, f / "afile.txt", "--device", "cpu"),
            ("export-flipped-byte", "export", flipped, "--out", f"{o}/m.pt"),
            ("resume-flipped-byte", "train", "pbce", d, "--resume", flipped, "--epochs", "2", "--no-progress")):
        add(f"files-{id_}", *args)
    # processes, servers and signals (fix-net): a server that never answers, nonsense time limits, more
    # loader readers than samples
    silent = f"http://127.0.0.1:{_silent_port()}/ds"
    quick = {"MLRPL_TIMEOUT": "1", "MLRPL_RETRIES": "1"}
    add("net-pull-silent-server", "pull", silent, o, "--no-progress", env=quick)
    add("net-verify-silent-server", "verify", silent, "--no-progress", env=quick)
    add("net-train-silent-server", "train", "pbce", silent, "--masks", "uniform-p0.50-s0", "--out", o, *tiny, env=quick)
    add("net-pull-timeout-0", "pull", silent, o, "--no-progress", env={"MLRPL_TIMEOUT": "0"})
    add("net-verify-timeout-text", "verify", silent, env={"MLRPL_TIMEOUT": "soon"})
    add("net-pull-min-bytes-neg", "pull", silent, o, "--no-progress", env={"MLRPL_MIN_BYTES": "-5"})
    # the method registry (issue 20): every new method's options out of range or outside their choices,
    # an unknown method in a sweep list; each must fail in one line before anything is written
    for method, extra in (("gcn-ml", ["--gcn-tau", "1.5"]), ("gcn-ml", ["--gcn-p", "-0.1"]),
                          ("gcn-ml", ["--adjacency", "learned"]), ("p-gcn", ["--gcn-hidden", "0"]),
                          ("kggr", ["--kggr-steps", "0"]), ("kggr", ["--kggr-feat-dim", "0"]),
                          ("cl", ["--norm-gamma", "0"]), ("cl", ["--curriculum", "oracle"]),
                          ("cl", ["--head-dropout", "1"]), ("cl", ["--label-fraction", "-0.5"]),
                          ("dsrb", ["--prototypes", "median"]), ("dsrb", ["--prototype-clusters", "0"]),
                          ("dsrb", ["--alpha-shape", "row"])):
        add(f"methods-{method}-{extra[0][2:]}-{extra[1]}", "train", method, d, "--masks", "uniform-p0.50-s0", "--out", o,
            *tiny, *extra)
    add("methods-sweep-unknown", "sweep", "gcn-ml,nope", d, "--out", o, *tiny)
    add("methods-sweep-empty", "sweep", ",", d, "--out", o, *tiny)
    return c


def _image_files(folder: Path) -> Path:
    """Damaged images (cut JPEG and PNG, an HTML page named .jpg) and a broken dataset under a name
    with '::' and '#'."""
    from PIL import Image

    if folder.is_dir():
        return folder
    (folder / "page").mkdir(parents=True)
    (folder / "ds::x #1").mkdir()
    Image.new("RGB", (20, 12), (40, 90, 10)).save(folder / "good.jpg")
    for name, fmt in (("cut.jpg", "JPEG"), ("cut.png", "PNG")):
        Image.new("RGB", (20, 12), (40, 90, 10)).save(folder / name, fmt)
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) * 2 // 3])
    (folder / "page" / "404.jpg").write_text("<html><body>404 Not Found</body></html>\n")
    Image.new("RGB", (20, 12), (40, 90, 10)).save(folder / "page" / "good.jpg")
    (folder / "page" / "labels.csv").write_text("path,split,cat\ngood.jpg,test,1\n404.jpg,train,1\n")
    (folder / "ds::x #1" / "dataset.json").write_text("{not json")
    return folder


def _flipped_run(w: dict[str, Path]) -> Path:
    """A copy of the run whose last.pt has one bit flipped in the middle (its zip still opens)."""
    x = w["badruns"] / "ckpt-flipped"
    if not x.exists():
        _copy(w["run"], x)
        data = bytearray((x / "last.pt").read_bytes())
        data[len(data) // 2] ^= 1
        (x / "last.pt").write_bytes(bytes(data))
    return x


_SILENT = None


def _silent_port() -> int:
    """A port on 127.0.0.1 that accepts connections (the kernel does) and never answers a byte."""
    global _SILENT
    if _SILENT is None:
        import socket

        _SILENT = socket.socket()
        _SILENT.bind(("127.0.0.1", 0))
        _SILENT.listen(64)
    return _SILENT.getsockname()[1]


# ---- running one ---------------------------------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every regular file below `root` (symlinks by their target name)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "->" + str(p.readlink())
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_case(case: Case, world_root: Path, outs: Path, before: dict[str, str], timeout: int = 60) -> Outcome:
    from typer.testing import CliRunner

    from mlrpl.cli import app

    def alarm(*_):
        raise Hang()

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(timeout)
    hang, result = False, None
    try:
        result = CliRunner().invoke(app, case.args, env=case.env)
    except Hang:
        hang = True
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    after = snapshot(world_root)
    changed = sorted(k for k in before if before[k] != after.get(k))
    left = sorted(str(p.relative_to(outs)) for p in outs.rglob("*")) if outs.exists() else []
    if hang:
        return Outcome(case.id, None, False, False, True, changed, left, "")
    text = result.output + (result.stderr if hasattr(result, "stderr") and result.stderr_bytes is not None else "")
    unexpected = result.exception is not None and not isinstance(result.exception, SystemExit)
    traceback = unexpected or "Traceback (most recent call last)" in text or "unexpected " in text
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    ours = bool(lines) and (lines[-1].startswith("error: ") or all(ln.startswith("problem: ") for ln in lines))
    usage = "Error" in text and ("Usage:" in text or "Invalid value" in text or "No such" in text or "Missing" in text)
    clear = result.exit_code not in (0, None) and (ours or usage) and not traceback
    return Outcome(case.id, result.exit_code, clear, traceback, False, changed, left, text.strip()[-400:])
