"""One image policy on every path: the sizes in the manifest and the shard JSON, the pixels of a
shard with and without --resize, the training decode and predict (on files and on a dataset) all
read an image the same way: pixels as stored (EXIF orientation not applied), normalised to RGB."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from mlrpl_data.csvlabels import CsvConfig, build_csv
from mlrpl_data.fsutil import sha256_file
from mlrpl_data.images import decode_rgb, resize_shorter_side
from mlrpl_data.folder import read_manifest, write_manifest
from mlrpl_data.shards import ShardConfig, write_shards
from mlrpl_train.data import dataloader
from mlrpl_train.inference import Predictor, image_inputs
from mlrpl_train.loader import augment_image

W, H = 60, 20  # stored size; an EXIF-upright decode would be 20 x 60


def stored(mode: str) -> Image.Image:
    """60 x 20: the left 20 columns red, the rest blue (so a rotation or a flip shows), in `mode`."""
    arr = np.zeros((H, W, 3), np.uint8)
    arr[:, :20] = (220, 20, 20)
    arr[:, 20:] = (20, 20, 220)
    rgb = Image.fromarray(arr)
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
    return rgb.convert(mode) if mode != "P" else rgb.quantize(4)


IMAGES = {  # file name -> (mode, format, EXIF orientation)
    "rot6.jpg": ("RGB", "JPEG", 6), "rot8.jpg": ("RGB", "JPEG", 8), "cmyk.jpg": ("CMYK", "JPEG", None),
    "gray.jpg": ("L", "JPEG", None), "palette.png": ("P", "PNG", None), "rgba.png": ("RGBA", "PNG", None),
    "la.png": ("LA", "PNG", None), "png16.png": ("I;16", "PNG", None), "png-named.jpg": ("RGB", "PNG", None),
}


def write_raw(root):
    root.mkdir(parents=True, exist_ok=True)
    rows = ["path,split,red,blue"]
    for k, (name, (mode, fmt, orientation)) in enumerate(IMAGES.items()):
        kw = {}
        if orientation:
            exif = Image.Exif()
            exif[0x0112] = orientation
            kw["exif"] = exif.tobytes()
        stored(mode).save(root / name, fmt, **({"quality": 95} if fmt == "JPEG" else {}), **kw)
        rows.append(f"{name},{'train' if k % 2 else 'test'},1,1")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def built(tmp_path):
    raw = write_raw(tmp_path / "raw")
    d = tmp_path / "dataset"
    write_manifest(build_csv(CsvConfig(labels=raw / "labels.csv", images=raw, progress=False)), d)
    return raw, d


def shard_samples(d):
    out = {}
    for tar in sorted((d / "shards").glob("*.tar")):
        with tarfile.open(tar) as t:
            members = {m.name: t.extractfile(m).read() for m in t if m.isfile()}
        for name, data in members.items():
            if name.endswith(".json"):
                key = name[:-5]
                out[json.loads(data)["source"]] = (json.loads(data), members[f"{key}.jpg"])
    return out


@pytest.mark.fuzzclass("image metadata")
def test_every_path_reads_an_image_as_stored(built):
    raw, d = built
    m = read_manifest(d)
    assert {(p, w, h) for p, w, h in m.images[["path", "width", "height"]].itertuples(index=False)} == \
        {(name, W, H) for name in IMAGES}  # the stored size, the EXIF-rotated ones included
    upright = {name: decode_rgb((raw / name).read_bytes(), name) for name in IMAGES}
    for name, im in upright.items():
        a = np.asarray(im, np.int16)
        assert im.mode == "RGB" and im.size == (W, H), name
        if IMAGES[name][0] in ("L", "LA", "I;16"):  # grey: R = G = B, the left (red: 80) brighter than the blue (43)
            assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all(), name
            assert abs(a[:, :20].mean() - 80) < 3 and abs(a[:, 20:].mean() - 43) < 3, name
        else:  # red on the left, blue on the right: not rotated, not flipped
            assert a[:, :20, 0].mean() > a[:, :20, 2].mean() + 100, name
            assert a[:, 20:, 2].mean() > a[:, 20:, 0].mean() + 100, name
    assert np.array_equal(np.asarray(upright["png16.png"])[..., 0], np.asarray(stored("L")))  # 16-bit: top 8 bits

    write_shards(d, ShardConfig(shard_size=None, max_samples=4, progress=False))
    plain = shard_samples(d)
    sums = {t.name: sha256_file(t) for t in (d / "shards").glob("*.tar")}
    for name, (meta, data) in plain.items():
        assert (meta["width"], meta["height"]) == (W, H) and data == (raw / name).read_bytes(), name
        assert meta["format"] == IMAGES[name][1], name
    # the training decode of a shard: the same arrays as the raw file read directly
    for split in ("train", "test"):
        for batch in dataloader(str(d), split=split, batch_size=2, image_size=24, augment=False):
            for key, arr in zip(batch["keys"], batch["images"].numpy()):
                name = m.images.loc[m.images["key"] == key, "path"].item()
                assert np.array_equal(arr, augment_image(upright[name], False, 24, None)), name
    # predict on the files and on the dataset (its test shards): the same input arrays
    p = Predictor(model=None, class_names=["red", "blue"], image_size=24, method="x", source="x", device=None)
    from_dataset = {m.images.loc[m.images["key"] == k, "path"].item(): p.preprocess(b) for k, b in image_inputs([str(d)])}
    assert len(from_dataset) == 5  # the test split: every other file
    for name, arr in from_dataset.items():
        assert np.array_equal(arr, p.preprocess(raw / name)), name
        assert np.array_equal(arr, augment_image(upright[name], False, 24, None)), name

    # --resize 10: the shorter side of the STORED image shrunk, re-encoded without EXIF; the pixels agree
    write_shards(d, ShardConfig(shard_size=None, max_samples=4, resize=10, progress=False))
    small = shard_samples(d)
    for name, (meta, data) in small.items():
        im = Image.open(io.BytesIO(data))
        assert (meta["width"], meta["height"]) == im.size == (30, 10) and meta["reencoded"], name
        assert 0x0112 not in im.getexif(), name
        want = np.asarray(resize_shorter_side(upright[name], 10), np.int16)
        assert np.abs(np.asarray(decode_rgb(data, name), np.int16) - want).mean() < 6, name
    # byte-reproducible: back to no --resize gives the same shards, sha256 for sha256
    write_shards(d, ShardConfig(shard_size=None, max_samples=4, progress=False))
    assert {t.name: sha256_file(t) for t in (d / "shards").glob("*.tar")} == sums


@pytest.mark.fuzzclass("image metadata")
def test_a_size_the_annotations_disagree_with_is_reported_not_guessed(tmp_path):
    from typer.testing import CliRunner

    from conftest import make_coco
    from mlrpl.cli import app
    from mlrpl_data.coco import CocoConfig, build_coco

    raw = make_coco(tmp_path / "raw")  # every annotation says 32 x 24
    odd = raw / "train2014" / "COCO_train2014_000000000011.jpg"
    Image.new("RGB", (W, H), (9, 9, 9)).save(odd)
    d = tmp_path / "dataset"
    write_manifest(build_coco(CocoConfig(root=raw)), d)
    m = read_manifest(d)
    assert set(zip(m.images["width"], m.images["height"])) == {(32, 24)}  # the manifest keeps the annotations' size
    r = CliRunner().invoke(app, ["write-shards", str(d), "--resize", "16", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "warning: 1 image(s) differ in size from their annotations" in r.output
    assert "train2014/COCO_train2014_000000000011.jpg: 60x20 on disk, 32x24 in the manifest" in r.output
    index = json.loads((d / "shards" / "index.json").read_text())
    assert index["size_differs"] == [{"key": "coco2014_train_000000000011", "path": "train2014/COCO_train2014_000000000011.jpg",
                                      "manifest": [32, 24], "file": [60, 20]}]
    meta = shard_samples(d)["train2014/COCO_train2014_000000000011.jpg"][0]
    assert (meta["width"], meta["height"]) == (48, 16)  # the sample's own size: 60 x 20 with its shorter side at 16


@pytest.mark.fuzzclass("image metadata")
def test_vg_ssgrl_sizes_come_from_the_header_with_its_one_line(tmp_path):
    from conftest import write_jpeg
    from mlrpl_data.images import BadImageError
    from mlrpl_data.vg import SsgrlConfig, build_vg200_ssgrl

    raw = tmp_path / "vg"
    names = ["1.jpg", "2.jpg", "3.jpg"]
    rot = Image.Exif()
    rot[0x0112] = 6
    write_jpeg(raw / "VG_100K" / "1.jpg", size=(W, H))
    Image.new("RGB", (W, H)).save(raw / "VG_100K" / "2.jpg", exif=rot.tobytes())  # stored 60 x 20, shown 20 x 60
    (raw / "VG_100K" / "3.jpg").write_text("<html>404</html>")
    (tmp_path / "train.txt").write_text("1.jpg\n2.jpg\n")
    (tmp_path / "test.txt").write_text("3.jpg\n")
    (tmp_path / "labels.json").write_text(json.dumps({n: [0] for n in names}))
    cfg = SsgrlConfig(root=raw, train_list=tmp_path / "train.txt", test_list=tmp_path / "test.txt",
                      labels=tmp_path / "labels.json")
    with pytest.raises(BadImageError, match=r"VG_100K/3.jpg: not an image \(unknown format"):
        build_vg200_ssgrl(cfg)
    write_jpeg(raw / "VG_100K" / "3.jpg", size=(30, 10))
    m = build_vg200_ssgrl(cfg)
    assert list(zip(m.images["width"], m.images["height"])) == [(W, H), (W, H), (30, 10)]
