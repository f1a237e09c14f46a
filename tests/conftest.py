"""Shared fixtures: tiny raw datasets in the authors' formats, and the real files in ../shared."""

from __future__ import annotations

import json
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REAL = Path(os.environ.get("MLRPL_REAL_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real"))


@pytest.fixture
def real() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"real fixtures not found at {REAL} (they live in ../shared/fixtures/real beside the checkout)")
    return REAL


def write_jpeg(path: Path, size=(32, 24), color=(120, 30, 200)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=90)


def make_coco(root: Path, year="2014", splits=None, write_images=True) -> Path:
    """A tiny COCO-format dataset; `splits` maps split -> list of (id, [category ids], crowd flags)."""
    cats = [{"id": 1, "name": "person", "supercategory": "x"}, {"id": 3, "name": "car", "supercategory": "x"},
            {"id": 7, "name": "train", "supercategory": "x"}]
    splits = splits or {
        "train": [(10, [1, 3]), (11, [7]), (12, [])],
        "val": [(20, [3]), (21, [1, 7])],
    }
    ann_id = 1
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, recs in splits.items():
        images, anns = [], []
        for rec in recs:
            image_id, cat_ids = rec[0], rec[1]
            crowd = rec[2] if len(rec) > 2 else [0] * len(cat_ids)
            fn = f"COCO_{split}{year}_{image_id:012d}.jpg"
            images.append({"id": image_id, "file_name": fn, "width": 32, "height": 24})
            for c, cr in zip(cat_ids, crowd):
                anns.append({"id": ann_id, "image_id": image_id, "category_id": c, "iscrowd": cr, "bbox": [0, 0, 4, 4], "area": 16})
                ann_id += 1
            if write_images:
                write_jpeg(root / f"{split}{year}" / fn)
        (root / "annotations" / f"instances_{split}{year}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


VOC_XML = """<annotation><folder>VOC2007</folder><filename>{id}.jpg</filename>
<size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>"""
VOC_OBJ = "<object><name>{name}</name><pose>Left</pose><truncated>0</truncated><difficult>{d}</difficult>" \
          "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"


def make_voc(root: Path, trainval=None, test=None) -> Path:
    """A tiny VOCdevkit/VOC2007; each split maps id -> [(class name, difficult)]."""
    voc = root / "VOCdevkit" / "VOC2007"
    trainval = trainval or {"000005": [("chair", 0), ("chair", 1)], "000007": [("car", 0)], "000009": [("horse", 0), ("person", 1)]}
    test = test or {"000001": [("dog", 0), ("person", 0)], "000002": [("train", 0)]}
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    (voc / "Annotations").mkdir(parents=True, exist_ok=True)
    for fname, split in (("trainval.txt", trainval), ("test.txt", test)):
        (main / fname).write_text("".join(f"{i}\n" for i in split))
        for image_id, objs in split.items():
            objects = "".join(VOC_OBJ.format(name=n, d=d) for n, d in objs)
            (voc / "Annotations" / f"{image_id}.xml").write_text(VOC_XML.format(id=image_id, w=32, h=24, objects=objects))
            write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg")
    # a per-class list named like a split: must never be read as one
    (main / "train_test.txt").write_text("000001 -1\n000002  1\n")
    return root


def make_vg(root: Path, n_images=6, names_per_image=None) -> Path:
    """A tiny raw VG release (v1.2 shapes): image_data.json, objects.json, images in VG_100K(_2)."""
    names_per_image = names_per_image or {
        1: [["Tree"], ["man", "person"], ["trees"]], 2: [["tree"], ["Car"]], 3: [["car"], ["  street  light "]],
        4: [["man"]], 5: [["dog"], ["tree"]], 6: [],
    }
    image_data, objects = [], []
    oid = 100
    for i in range(1, n_images + 1):
        folder = "VG_100K_2" if i == 1 else "VG_100K"
        image_data.append({"width": 32, "url": f"https://cs.stanford.edu/people/rak248/{folder}/{i}.jpg", "height": 24,
                           "image_id": i, "coco_id": None, "flickr_id": None})
        objs = []
        for names in names_per_image.get(i, []):
            objs.append({"synsets": [], "h": 3, "object_id": oid, "names": names, "w": 3, "y": 0, "x": 0})
            oid += 1
        objects.append({"image_id": i, "objects": objs})
        write_jpeg(root / folder / f"{i}.jpg")
    (root / "image_data.json").write_text(json.dumps(image_data))
    (root / "objects.json").write_text(json.dumps(objects))
    return root


def random_labels(n: int, c: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random((n, c)) < 0.3, 1, -1).astype(np.int8)


class S3:
    """A moto S3 server on loopback with one bucket; `upload(folder, prefix)` gives its s3:// URL."""

    bucket = "lab"

    def __init__(self, client):
        self.client = client

    def upload(self, folder: Path, prefix: str) -> str:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts):
                self.client.upload_file(str(p), self.bucket, f"{prefix}/{p.relative_to(folder).as_posix()}")
        return f"s3://{self.bucket}/{prefix}"


@pytest.fixture
def s3(monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    import boto3
    import fsspec

    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    try:
        host, port = srv.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for k, v in dict(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
                         AWS_ENDPOINT_URL=endpoint).items():
            monkeypatch.setenv(k, v)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=S3.bucket)
        fsspec.config.conf["s3"] = {"client_kwargs": {"endpoint_url": endpoint}}
        try:
            yield S3(client)
        finally:
            fsspec.config.conf.pop("s3", None)
    finally:
        srv.stop()


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_HEAD(self):
        if self.server.misbehave(self.path, "HEAD") == "drop":
            self.close_connection = True  # no answer at all
            return
        super().do_HEAD()

    def do_GET(self):
        act = self.server.misbehave(self.path, "GET")
        if act is None:
            return super().do_GET()
        f = self.send_head()  # the status and headers (with the full Content-Length) as usual
        if f is None:
            return
        with f:
            data = bytearray(f.read())
        if act == "drop":
            data = data[: len(data) // 2]  # the body cut off half way
        else:
            data[len(data) // 2] ^= 0xFF  # one byte flipped in transit
        self.wfile.write(bytes(data))
        self.close_connection = True


class ServedFolder:
    """The life of a test http server: `self.srv` (a ThreadingHTTPServer on 127.0.0.1, made by the
    subclass) serves in a daemon thread inside `with`, and is shut down after; `url` its address."""

    srv: ThreadingHTTPServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.srv.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.srv.shutdown()
        self.srv.server_close()


class Loopback(ServedFolder):
    """An http server on 127.0.0.1 serving `folder`. drop_every=k: every k-th request is answered
    with nothing (HEAD) or half its body (GET); flip_once: paths whose first GET has a byte flipped."""

    def __init__(self, folder: Path, drop_every: int = 0, flip_once: tuple[str, ...] = (), delay: float = 0.0):
        outer = self

        class Server(ThreadingHTTPServer):
            def misbehave(self, path: str, method: str) -> str | None:
                import time

                with outer.lock:
                    outer.requests += 1
                    n = outer.requests
                    if method == "GET" and path in outer.flip_pending:
                        outer.flip_pending.discard(path)
                        return "flip"
                if outer.delay:
                    time.sleep(outer.delay)
                return "drop" if outer.drop_every and n % outer.drop_every == 0 else None

        self.lock = threading.Lock()
        self.requests, self.drop_every, self.delay = 0, drop_every, delay
        self.flip_pending = set(flip_once)
        self.srv = Server(("127.0.0.1", 0), lambda *a: _Handler(*a, directory=str(folder)))
