"""Using what was trained: load a run, a checkpoint or an exported model, and score images.

A `Predictor` holds the model in eval mode with its class names and preprocessing (the test
transform: a plain resize to size x size, RGB, ImageNet mean and std). `export_run` writes a
weights-only file (no optimizer state) with everything a predictor needs, or, with
format "torchscript" or "exported", a graph that runs with torch alone: it takes a uint8 batch
(B, size, size, 3) of resized RGB images and returns the sigmoid probabilities (B, C).
"""

from __future__ import annotations

import contextlib
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from mlrpl_data.errors import BadInputError
from mlrpl_data.folder import DATASET_JSON
from mlrpl_data.fsutil import atomic_write_with
from mlrpl_data.images import decode_rgb
from mlrpl_data.readers import is_remote, local_path

from .checkpoint import check_checkpoint, checkpoint_file, read_weights_file, run_inputs
from .device import IMAGENET_MEAN, IMAGENET_STD, autocast, normalisation, pick_device, to_device, uses_fast_path
from .loader import augment_image

EXPORT_FORMAT = "mlrpl-export"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
META_NAME = "mlrpl.json"  # the metadata file inside a torchscript / exported archive


@dataclass
class Predictor:
    """A model ready to score images: `predictor.predict(images)` -> (N, C) probabilities."""

    model: torch.nn.Module
    class_names: list[str]
    image_size: int
    method: str
    source: str
    device: torch.device
    takes_uint8: bool = False  # a torchscript / exported graph: it normalises and applies the sigmoid itself
    batch_size: int = 32

    def preprocess(self, image) -> np.ndarray:
        """An image (path, bytes or PIL image) -> (size, size, 3) uint8, as the test images are."""
        if isinstance(image, (str, Path)):
            image = decode_rgb(Path(image).read_bytes(), str(image))
        elif isinstance(image, (bytes, bytearray)):
            image = decode_rgb(bytes(image), "image bytes")
        return augment_image(image.convert("RGB"), False, self.image_size, None)

    @torch.no_grad()
    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(B, size, size, 3) uint8 -> (B, C) probabilities."""
        x = torch.from_numpy(np.ascontiguousarray(batch))
        if self.takes_uint8:
            return self.model(x.to(self.device)).float().cpu().numpy()
        fast = uses_fast_path(self.device)
        with autocast(self.device, fast):
            logits = self.model(to_device(x, self.device, channels_last=fast))
        return torch.sigmoid(logits.float()).cpu().numpy()

    def predict(self, images: Iterable, progress=None) -> np.ndarray:
        """Probabilities (N, C) of images given as paths, bytes or PIL images, in batches."""
        out, batch = [], []
        for image in images:
            batch.append(self.preprocess(image))
            if len(batch) == self.batch_size:
                out.append(self.predict_arrays(np.stack(batch)))
                progress and progress(len(batch))
                batch = []
        if batch:
            out.append(self.predict_arrays(np.stack(batch)))
            progress and progress(len(batch))
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)


# ---- loading ------------------------------------------------------------------------------------

def load_predictor(path: str | Path, checkpoint: str = "last", device: str = "auto", batch_size: int = 32) -> Predictor:
    """A run folder (its last.pt, or best.pt with checkpoint="best"), a training checkpoint, a
    weights-only export, or a torchscript / exported graph written by `export_run`."""
    p = checkpoint_file(path, checkpoint)
    dev = pick_device(device)
    kind = _archive_kind(p)
    if kind in ("torchscript", "exported"):
        meta, model = _load_graph(p, kind, dev)
        return Predictor(model, meta["class_names"], int(meta["preprocess"]["size"]), meta["method"], str(p), dev,
                         takes_uint8=True, batch_size=batch_size)
    doc = _load_weights(p, checked=True)
    model, cfg = _model_from(doc, str(p))
    return Predictor(model.to(dev).eval(), list(doc["class_names"]), int(cfg.image_size), str(cfg.method), str(p), dev,
                     batch_size=batch_size)


def _archive_kind(p: Path) -> str:
    """'torchscript', 'exported' or 'weights' (torch.save's archive), from the names inside the zip;
    the file is first checked against the sha256 sealed into it (or its CRCs)."""
    from mlrpl_data.fsutil import check_sealed
    from mlrpl_data.readers import file_size

    file_size(str(p))  # a regular file, else one line
    check_sealed(p, "model file", "use the run's other checkpoint (--checkpoint), or export or train it again")
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
    except zipfile.BadZipFile:
        raise BadInputError(f"{p}: not a model file mlrpl wrote (not a torch archive)") from None
    if not any(n.endswith(f"extra/{META_NAME}") for n in names):
        return "weights"
    return "torchscript" if any("/code/" in n for n in names) else "exported"


def _load_weights(p: Path, checked: bool = False) -> dict[str, Any]:
    """A weights-only export, or a training checkpoint (its fields checked): read once (`checked`:
    its seal was checked already)."""
    doc = read_weights_file(p, checked)
    if isinstance(doc, dict) and doc.get("format") == EXPORT_FORMAT:
        return doc
    return check_checkpoint(doc, p)


def _model_from(doc: dict[str, Any], where: str):
    from .data import DataSpec
    from .model.factory import build_model
    from .options import config_from_json

    cfg = config_from_json(doc["config"], where)
    names = list(doc["class_names"])
    # what the model's construction needs of the data; the graph and prototypes come with the weights
    spec = DataSpec(dataset="", fingerprint=doc.get("fingerprint", ""), num_classes=len(names), class_names=names,
                    train_urls=[], test_urls=[], train_samples=0, test_samples=0)
    model = build_model(cfg, spec, state=doc["model"])
    return model, cfg


def _load_graph(p: Path, kind: str, dev: torch.device):
    extra = {META_NAME: ""}  # filled by the loader from the archive
    if kind == "torchscript":
        with _quiet_jit():
            model = torch.jit.load(str(p), map_location=dev, _extra_files=extra)
    else:
        model = torch.export.load(str(p), extra_files=extra).module().to(dev)
    return json.loads(extra[META_NAME]), model


# ---- export -------------------------------------------------------------------------------------------

class _Graph(torch.nn.Module):
    """uint8 (B, H, W, 3) -> probabilities: the normalisation and the sigmoid inside the graph."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        scale, shift = normalisation(torch.device("cpu"), torch.float32)  # the ones to_device applies
        self.register_buffer("scale", scale.clone())
        self.register_buffer("shift", shift.clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() * self.scale + self.shift
        return torch.sigmoid(self.model(x))


@contextlib.contextmanager
def _quiet_jit():
    """TorchScript still works in this torch but warns that it is deprecated on every call; the
    README says it once (prefer --format exported)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        yield


def export_run(run: str | Path, out: str | Path, fmt: str = "weights", checkpoint: str = "last") -> dict[str, Any]:
    """Write the model of a run (or checkpoint) for use elsewhere; returns the metadata written."""
    from mlrpl_data.fsutil import is_sealed
    from mlrpl_data.ownership import claim_file, refuse_overlap, sweep_stale

    p = checkpoint_file(run, checkpoint)
    # never onto this run's files, nor onto another run's (its last.pt is sealed like an export)
    refuse_overlap(Path(out), {**run_inputs(run), **run_inputs(p), **run_inputs(Path(out).parent)}, "--out", file=True)
    claim_file(Path(out), "--out", is_sealed, "a model file")
    sweep_stale(Path(out).parent, of=Path(out).name)  # a killed export's temporary
    doc = _load_weights(p)
    model, cfg = _model_from(doc, str(p))
    model.eval()
    meta = {"format": EXPORT_FORMAT, "version": 1, "method": str(cfg.method), "class_names": list(doc["class_names"]),
            "preprocess": {"size": int(cfg.image_size), "resize": "bicubic, to size x size, RGB",
                           "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "input": "uint8 (B, size, size, 3)"},
            "fingerprint": doc.get("fingerprint", ""), "mask": doc.get("mask", ""), "epoch": doc.get("epoch"),
            "source": p.name}
    if fmt not in ("weights", "torchscript", "exported"):
        raise BadInputError(f"--format {fmt!r}: use weights, torchscript or exported")
    # through a file object: torch then reports a full disk as OSError, not as a RuntimeError or an abort
    atomic_write_with(Path(out), lambda f: _write_model(model, doc, meta, int(cfg.image_size), fmt, f), seal=True,
                      keep_suffix=True)
    return meta


def _write_model(model, doc: dict[str, Any], meta: dict[str, Any], size: int, fmt: str, f) -> None:
    if fmt == "weights":
        torch.save({**meta, "model": model.state_dict(), "config": doc["config"]}, f)
        return
    graph = _Graph(model).eval()
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    blob = json.dumps(meta)
    with torch.no_grad():
        if fmt == "torchscript":
            with _quiet_jit():
                torch.jit.save(torch.jit.trace(graph, example, check_trace=False), f, _extra_files={META_NAME: blob})
        else:
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.export.export(graph, (example,), dynamic_shapes={"images": {0: batch}})
            torch.export.save(program, f, extra_files={META_NAME: blob})


# ---- inputs ---------------------------------------------------------------------------------------------

def image_inputs(inputs: list[str]) -> Iterator[tuple[str, Any]]:
    """(key, image) of each input: an image file, a folder (its images, recursively, sorted), or a
    dataset (folder with dataset.json, or URL): its test shards."""
    for item in inputs:
        p = Path(local_path(item))
        if is_remote(item) or (p.is_dir() and (p / DATASET_JSON).is_file()):
            yield from _dataset_images(item)
        elif p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
            if not found:
                raise BadInputError(f"{p}: holds no image ({', '.join(IMAGE_SUFFIXES)})")
            yield from ((str(q), q) for q in found)
        elif p.is_file():
            yield str(p), p
        else:
            raise BadInputError(f"{item}: no such image, folder or dataset")


def _dataset_images(dataset: str) -> Iterator[tuple[str, Any]]:
    from mlrpl_data.shards import read_index, shard_urls

    from .loader import read_samples

    urls = shard_urls(dataset, "test", read_index(dataset))
    for s in read_samples(urls):
        if "jpg" in s:
            yield s["__key__"], s["jpg"]


# ---- predictions as a table ------------------------------------------------------------------------------

@dataclass
class Predictions:
    keys: list[str]
    scores: np.ndarray  # (N, C) probabilities
    class_names: list[str]

    def top(self, k: int, threshold: float | None = None) -> list[list[tuple[str, float]]]:
        """Per image, its k most probable classes (those at or above `threshold`, when given)."""
        order = np.argsort(-self.scores, axis=1, kind="stable")[:, :k]
        return [[(self.class_names[j], float(row[j])) for j in idx if threshold is None or row[j] >= threshold]
                for row, idx in zip(self.scores, order)]

    def write_parquet(self, path: Path, k: int, threshold: float | None) -> None:
        """key, scores (every class, in class order), top_k classes and their scores, above_threshold."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tops = self.top(k)
        cut = 0.5 if threshold is None else threshold
        above = [[self.class_names[j] for j in np.flatnonzero(row >= cut)] for row in self.scores]
        table = pa.table({
            "key": pa.array(self.keys, pa.string()),
            "scores": pa.array(list(self.scores.astype(np.float32)), pa.list_(pa.float32())),
            "top_k": pa.array([[c for c, _ in t] for t in tops], pa.list_(pa.string())),
            "top_k_scores": pa.array([[s for _, s in t] for t in tops], pa.list_(pa.float32())),
            "above_threshold": pa.array(above, pa.list_(pa.string())),
        }, metadata={"class_names": json.dumps(self.class_names), "threshold": str(cut), "mlrpl": "predictions"})
        atomic_write_with(Path(path), lambda f: pq.write_table(table, f))


def check_output(out: Path, model: str | Path, inputs: list[str]) -> None:
    """predict --out: never onto the model, its run's files or an input (file or folder), and it
    replaces only an earlier predictions file; checked before any work."""
    from mlrpl_data.ownership import claim_file, parquet_kind, refuse_overlap, sweep_stale

    found: dict[str, Any] = {**run_inputs(model)}
    found.update({"the input" if len(inputs) == 1 else f"input {k + 1}": item for k, item in enumerate(inputs)})
    refuse_overlap(Path(out), found, "--out", file=True)
    claim_file(Path(out), "--out", lambda p: parquet_kind(p) == "predictions", "a predictions file")
    sweep_stale(Path(out).parent, of=Path(out).name)


def predict_inputs(predictor: Predictor, inputs: list[str], progress: bool = False) -> Predictions:
    """Scores of every image of `inputs` (see image_inputs), batched, with a progress bar."""
    from mlrpl_data.progress import progress_bar

    keys: list[str] = []

    def images():
        for key, image in image_inputs(inputs):
            keys.append(key)
            yield image

    with progress_bar(None, "predict", "img", progress) as bar:
        scores = predictor.predict(images(), progress=bar.update)
    if not keys:
        raise BadInputError("no image to predict")
    return Predictions(keys, scores, predictor.class_names)
