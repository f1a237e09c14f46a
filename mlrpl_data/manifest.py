"""The manifest: dataset.json + categories.parquet + images.parquet, and its fingerprint.

A manifest is one dataset version. Its fingerprint is a sha256 over the canonical content
(name, version, schema, build options, categories, and every image row in order), so the
same raw files built with the same options give the same fingerprint on any machine.
Paths on the building machine (the raw root) are recorded but never hashed.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .errors import AlreadyExistsError, BadInputError, FingerprintMismatchError
from .fsutil import publish_dir, staging_dir

SCHEMA_VERSION = 1
SPLITS = ("train", "test")
DATASET_JSON = "dataset.json"
CATEGORIES_PARQUET = "categories.parquet"
IMAGES_PARQUET = "images.parquet"


@dataclass
class Manifest:
    """One dataset version in memory. `labels` is (N, C) int8: 1 present, -1 absent, 0 ignored."""

    name: str
    version: str
    category_names: list[str]
    category_source_ids: list[str]
    images: pd.DataFrame  # key, split, path, width, height (row order = reference order)
    labels: np.ndarray
    options: dict[str, Any] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)
    root: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.ascontiguousarray(self.labels, dtype=np.int8)
        n, c = len(self.images), len(self.category_names)
        if self.labels.shape != (n, c):
            raise ValueError(f"labels shape {self.labels.shape} != ({n}, {c})")
        self.images = self.images.reset_index(drop=True)

    @property
    def num_classes(self) -> int:
        return len(self.category_names)

    @property
    def keys(self) -> np.ndarray:
        return self.images["key"].to_numpy()

    def split_rows(self, split: str) -> np.ndarray:
        """Row indices of one split ("all" for every row), in manifest order."""
        if split == "all":
            return np.arange(len(self.images))
        return np.flatnonzero(self.images["split"].to_numpy() == split)

    def counts(self) -> dict[str, int]:
        vc = self.images["split"].value_counts()
        return {s: int(vc.get(s, 0)) for s in SPLITS}

    @functools.cached_property
    def fingerprint(self) -> str:
        """Computed once (it hashes every row); a Manifest is not changed after it is built."""
        return compute_fingerprint(self)

    def dataset_card(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "schema_version": SCHEMA_VERSION,
            "fingerprint": self.fingerprint,
            "num_classes": self.num_classes,
            "counts": self.counts(),
            "sources": self.sources,
            "options": self.options,
            "root": self.root,
            "mlrpl_version": __version__,
            **self.extra,
        }


def check_fingerprint(found: str | None, expected: str, what: str, fix: str) -> None:
    """The one check that an artefact (`what`: a mask, a shard index, a run) was made from the
    manifest it is used with; FingerprintMismatchError names both fingerprints and the fix."""
    if found != expected:
        raise FingerprintMismatchError(f"{what}: made from manifest {found} but the dataset is {expected}; {fix}")


def _hash_strings(h: "hashlib._Hash", values) -> None:
    blob = "\x1f".join(str(v) for v in values).encode("utf-8")
    h.update(len(blob).to_bytes(8, "little"))
    h.update(blob)


def compute_fingerprint(m: Manifest) -> str:
    """sha256 over canonical content; independent of machine, time and file layout."""
    h = hashlib.sha256()
    header = {
        "schema_version": SCHEMA_VERSION,
        "name": m.name,
        "version": m.version,
        "options": m.options,
        "categories": [[i, n, s] for i, (n, s) in enumerate(zip(m.category_names, m.category_source_ids))],
    }
    h.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    for col in ("key", "split", "path"):
        _hash_strings(h, m.images[col].tolist())
    for col in ("width", "height"):
        h.update(m.images[col].to_numpy().astype("<i8").tobytes())
    h.update(np.asarray(m.labels.shape, dtype="<i8").tobytes())
    h.update(m.labels.tobytes())
    return h.hexdigest()


def labels_to_arrow(labels: np.ndarray) -> pa.ListArray:
    """(N, C) int8 -> list<int8> without a Python loop."""
    n, c = labels.shape
    offsets = pa.array(np.arange(0, (n + 1) * c, c, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(labels).reshape(-1), type=pa.int8()))


def labels_from_arrow(col: pa.ChunkedArray | pa.ListArray, num_classes: int, where: str) -> np.ndarray:
    """list<int8> -> (N, C) int8; every row must have length C."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    lengths = col.value_lengths().to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(lengths != num_classes)
    if len(bad):
        raise BadInputError(f"{where}: row {int(bad[0])} has {int(lengths[bad[0]])} labels, expected {num_classes}")
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.int8)
    return flat.reshape(len(col), num_classes)


def _table_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def images_table(m: Manifest) -> pa.Table:
    return pa.table(
        {
            "key": pa.array(m.images["key"].tolist(), type=pa.string()),
            "split": pa.array(m.images["split"].tolist(), type=pa.string()),
            "path": pa.array(m.images["path"].tolist(), type=pa.string()),
            "width": pa.array(m.images["width"].to_numpy(), type=pa.int32()),
            "height": pa.array(m.images["height"].to_numpy(), type=pa.int32()),
            "labels": labels_to_arrow(m.labels),
        }
    )


def categories_table(m: Manifest) -> pa.Table:
    return pa.table(
        {
            "index": pa.array(range(m.num_classes), type=pa.int32()),
            "name": pa.array(m.category_names, type=pa.string()),
            "source_id": pa.array(m.category_source_ids, type=pa.string()),
        }
    )


def validate(m: Manifest, where: str) -> None:
    """Contract checks every builder relies on: unique dot-free keys, known splits, no empty split."""
    keys = m.images["key"]
    dup = keys[keys.duplicated()]
    if len(dup):
        raise BadInputError(f"{where}: duplicate image key {dup.iloc[0]!r}")
    dotted = keys[keys.str.contains(".", regex=False)]
    if len(dotted):
        raise BadInputError(f"{where}: key {dotted.iloc[0]!r} contains a dot (WebDataset splits names at dots)")
    unknown = set(m.images["split"]) - set(SPLITS)
    if unknown:
        raise BadInputError(f"{where}: unknown split(s) {sorted(unknown)}")
    if m.num_classes == 0:
        raise BadInputError(f"{where}: no categories")
    bad = ~np.isin(m.labels, (-1, 0, 1))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise BadInputError(f"{where}: label {int(m.labels[r, c])} of {keys.iloc[r]!r} class {c} not in {{-1,0,1}}")


def write_manifest(m: Manifest, out: Path, force: bool = False) -> str:
    """Write atomically to `out`; returns "written", or "unchanged" when the same content is there."""
    out = Path(out)
    card = m.dataset_card()
    existing = out / DATASET_JSON
    if existing.exists():
        try:
            old = json.loads(existing.read_text())
        except (json.JSONDecodeError, OSError):
            old = {}
        if old.get("fingerprint") == card["fingerprint"] and not force:
            return "unchanged"
        if not force:
            raise AlreadyExistsError(
                f"{out}: holds another dataset (fingerprint {old.get('fingerprint', '?')[:12]}…, "
                f"new {card['fingerprint'][:12]}…); pass --force to replace it (its masks and shards go too)"
            )
    elif out.exists() and any(out.iterdir()) and not force:
        raise AlreadyExistsError(f"{out}: exists, is not empty and holds no dataset.json; pass --force to replace it")
    staged = staging_dir(out)
    try:
        (staged / CATEGORIES_PARQUET).write_bytes(_table_bytes(categories_table(m)))
        (staged / IMAGES_PARQUET).write_bytes(_table_bytes(images_table(m)))
        # dataset.json last: its presence marks a complete manifest
        (staged / DATASET_JSON).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
        publish_dir(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return "written"


def _open(url: str, name: str):
    import fsspec

    return fsspec.open(f"{url.rstrip('/')}/{name}", "rb").open()


def read_manifest(url: str | Path, verify: bool = True) -> Manifest:
    """Read a manifest from a directory or any fsspec URL; refuse incomplete or altered ones."""
    url = str(url)
    where = url.rstrip("/")
    try:
        with _open(url, DATASET_JSON) as f:
            card = json.loads(f.read())
    except FileNotFoundError:
        raise BadInputError(
            f"{where}: no {DATASET_JSON}: not a complete dataset (was the build interrupted? re-run it)"
        ) from None
    except json.JSONDecodeError as e:
        raise BadInputError(f"{where}/{DATASET_JSON}: malformed JSON at line {e.lineno}: {e.msg}") from None
    if card.get("schema_version") != SCHEMA_VERSION:
        raise BadInputError(
            f"{where}/{DATASET_JSON}: schema_version {card.get('schema_version')!r}, this mlrpl reads {SCHEMA_VERSION}"
        )
    try:
        with _open(url, CATEGORIES_PARQUET) as f:
            cats = pq.read_table(f)
        with _open(url, IMAGES_PARQUET) as f:
            imgs = pq.read_table(f)
    except FileNotFoundError as e:
        raise BadInputError(f"{where}: missing {Path(str(e.filename or e)).name}: incomplete dataset") from None
    c = cats.num_rows
    labels = labels_from_arrow(imgs.column("labels"), c, f"{where}/{IMAGES_PARQUET}")
    images = imgs.drop(["labels"]).to_pandas()
    known = {"name", "version", "schema_version", "fingerprint", "num_classes", "counts", "sources", "options", "root", "mlrpl_version"}
    m = Manifest(
        name=card["name"],
        version=card["version"],
        category_names=cats.column("name").to_pylist(),
        category_source_ids=cats.column("source_id").to_pylist(),
        images=images,
        labels=labels,
        options=card.get("options", {}),
        sources=card.get("sources", []),
        root=card.get("root", ""),
        extra={k: v for k, v in card.items() if k not in known},
    )
    if verify and m.fingerprint != card["fingerprint"]:
        raise BadInputError(
            f"{where}: content fingerprint {m.fingerprint[:12]}… does not match dataset.json "
            f"{card['fingerprint'][:12]}…: the files were altered or mixed from two builds"
        )
    return m


def read_card(url: str | Path) -> dict[str, Any]:
    """dataset.json alone (cheap): name, fingerprint, counts."""
    try:
        with _open(str(url), DATASET_JSON) as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise BadInputError(f"{str(url).rstrip('/')}: no {DATASET_JSON}: not a complete dataset") from None
