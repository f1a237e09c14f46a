"""The common end of the builders whose annotations hold no image sizes (Open Images, NUS-WIDE, a
CSV): drop or refuse the images missing on disk, read each size from its file header (in threads),
and make the validated Manifest."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import BadInputError
from .images import header_size
from .manifest import Manifest, validate
from .missing import drop_missing
from .progress import progress_bar


def assemble(*, name: str, version: str, classes: list[str], source_ids: list[str], rows: pd.DataFrame,
             labels: np.ndarray, root: Path, options: dict[str, Any], sources: list[dict[str, Any]],
             allow_missing: bool, progress: bool, extra: dict[str, Any] | None = None, workers: int = 8) -> Manifest:
    """`rows`: key, split, path (relative to `root`), one per row of `labels`."""
    root = Path(root)
    exists = np.fromiter(((root / p).is_file() for p in rows["path"]), dtype=bool, count=len(rows))
    rows, labels, missing = drop_missing(rows, labels, exists, allow_missing, root,
                                         "image(s) of the annotations missing on disk", root=root)
    if not len(rows):
        raise BadInputError(f"{root}: no image of the annotations is on disk")
    with progress_bar(len(rows), f"{name}: image sizes", "img", progress) as bar, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        def size(p: str) -> tuple[int, int]:
            wh = header_size(root / p)
            bar.update(1)
            return wh

        sizes = list(pool.map(size, rows["path"]))
    images = rows.assign(width=[w for w, _ in sizes], height=[h for _, h in sizes])[
        ["key", "split", "path", "width", "height"]]
    return make_manifest(root, name=name, version=version, category_names=list(classes),
                         category_source_ids=list(source_ids), images=images, labels=labels, options=options,
                         sources=sources, extra={**(extra or {}), "missing": missing})


def make_manifest(root: Path, *, name: str, version: str, category_names: list[str], category_source_ids: list[str],
                  images: pd.DataFrame, labels: np.ndarray, options: dict[str, Any], sources: list[dict[str, Any]],
                  extra: dict[str, Any]) -> Manifest:
    """Every builder's last step: the Manifest of these fields (manifest.Manifest's: images key, split,
    path relative to `root`, width, height; labels (N, C) int8 1/-1/0; extra in the order dataset.json
    writes it), its raw root `root` as this machine's absolute path, validated (manifest.validate:
    BadInputError naming `root` for a manifest that breaks the schema)."""
    m = Manifest(name=name, version=version, category_names=category_names, category_source_ids=category_source_ids,
                 images=images, labels=labels, options=options, sources=sources, root=str(Path(root).resolve()),
                 extra=extra)
    validate(m, str(root))
    return m


_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def file_key(prefix: str, name: str) -> str:
    """An image key from a file name: the prefix, then the name with every character WebDataset or
    a path would split on (dots, slashes, ...) made '_'."""
    return f"{prefix}_{_KEY_CHARS.sub('_', name)}"


def source_record(path: Path, root: Path) -> dict[str, Any]:
    """A raw file as dataset.json records it: its path relative to the root (its name when it lies
    elsewhere, e.g. a --classes file: no local path in a shared card), sha256 and size."""
    from .fsutil import sha256_file

    path = Path(path)
    name = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
    return {"file": name.as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size}
