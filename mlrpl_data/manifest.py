"""The manifest in memory: the schema of dataset.json + categories.parquet + images.parquet, its
validation and its fingerprint (folder.py writes and reads it in a dataset folder; the builders make it).

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .errors import BadInputError, FingerprintMismatchError

SCHEMA_VERSION = 1  # of dataset.json + categories.parquet + images.parquet
SPLITS = ("train", "test")
SHOWN = 10  # classes named in a warning


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
            "mlrpl_version": __version__,
            **self.extra,
            "warnings": self.warnings(),
        }

    def warnings(self) -> list[str]:
        """The builder's warnings and what the labels themselves warn of (label_warnings)."""
        return list(dict.fromkeys([*self.extra.get("warnings", []), *label_warnings(self)]))


def label_warnings(m: Manifest) -> list[str]:
    """What the labels hide that a user must hear at build (kept in dataset.json; `stats` shows it):
    no known negative anywhere (a 0/1 export read with 0 as unknown?), or classes without a known
    negative in the test split (their AP is 1 whatever the scores)."""
    if m.labels.size and not (m.labels == -1).any():
        return ["no label is a known negative (-1): every 0 is unknown, so training and evaluation see positives "
                "only; if the source's 0 means absent, rebuild with that reading (build-csv: --zero-means absent)"]
    test = m.labels[m.split_rows("test")]
    if not len(test):
        return []
    none = [n for n, has in zip(m.category_names, (test == -1).any(axis=0)) if not has]
    if not none:
        return []
    more = f" and {len(none) - SHOWN} more" if len(none) > SHOWN else ""
    return [f"{len(none)} class(es) have no known negative in the test split (their AP is 1 whatever the scores): "
            f"{', '.join(none[:SHOWN])}{more}"]


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
    if col.null_count or col.flatten().null_count:
        raise BadInputError(f"{where}: a labels list or value is null; every row needs {num_classes} labels")
    lengths = col.value_lengths().to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(lengths != num_classes)
    if len(bad):
        raise BadInputError(f"{where}: row {int(bad[0])} has {int(lengths[bad[0]])} labels, expected {num_classes}")
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.int8)
    return flat.reshape(len(col), num_classes)


def table_bytes(table: pa.Table) -> bytes:
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


def is_safe_relative(path: str) -> bool:
    """A path that stays inside the raw root: relative, no '..', no empty or drive parts."""
    if not path or path.startswith(("/", "\\")) or "\\" in path or ":" in path.split("/")[0]:
        return False
    return all(part not in ("", "..") for part in path.split("/"))


def validate(m: Manifest, where: str) -> None:
    """Contract checks every builder and every reader relies on: unique dot-free keys, known splits,
    labels in {-1, 0, 1}, positive sizes, image paths that stay inside the raw root."""
    keys = m.images["key"]
    if keys.isna().any() or not all(isinstance(k, str) and k for k in keys):
        raise BadInputError(f"{where}: an image key is empty or not text")
    dup = keys[keys.duplicated()]
    if len(dup):
        raise BadInputError(f"{where}: duplicate image key {dup.iloc[0]!r}")
    dotted = keys[keys.str.contains(".", regex=False) | keys.str.contains("/", regex=False)]
    if len(dotted):
        raise BadInputError(f"{where}: key {dotted.iloc[0]!r} contains a dot or a slash (WebDataset splits names at dots)")
    unknown = set(m.images["split"]) - set(SPLITS)
    if unknown:
        raise BadInputError(f"{where}: unknown split(s) {sorted(map(str, unknown))}: use {', '.join(SPLITS)}")
    if m.num_classes == 0:
        raise BadInputError(f"{where}: no categories")
    bad = ~np.isin(m.labels, (-1, 0, 1))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise BadInputError(f"{where}: label {int(m.labels[r, c])} of {keys.iloc[r]!r} class {c} not in {{-1,0,1}}")
    for col in ("width", "height"):
        values = pd.to_numeric(m.images[col], errors="coerce")
        bad_rows = np.flatnonzero(~(values > 0))  # NaN compares False: refused too
        if len(bad_rows):
            r = int(bad_rows[0])
            raise BadInputError(f"{where}: row {r} ({keys.iloc[r]!r}) has {col} {m.images[col].iloc[r]}: "
                                f"must be a positive integer")
    unsafe = [p for p in m.images["path"] if not (isinstance(p, str) and is_safe_relative(p))]
    if unsafe:
        raise BadInputError(f"{where}: image path {unsafe[0]!r} leaves the raw root (absolute, '..' or empty); "
                            f"paths must be relative to it")
