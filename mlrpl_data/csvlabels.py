"""A lab's own data: one CSV row per image -> Manifest.

Columns: `path` (relative to --images), an optional `split` (train or test; without it a
--test-fraction of the images, chosen by a hash of the path, is the test split), then either
one column per class holding 1 (present), -1 (absent), 0 or empty (unknown), or one `labels`
column of ;-joined class names, which are present, every other class absent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import BadInputError
from .options import allow_missing_field, check_ranges, choices, opt, progress_field
from .rawfiles import raw_path, read_csv, refuse_duplicates
from .declare import BuildCommand, SourceTerms

# the source's licence and citation, for the dataset card (formats.source_terms)
TERMS = {"csv": SourceTerms("other", "A lab's own data: see its owners' licence.")}

VALUES = {"1": 1, "-1": -1, "0": 0, "": 0}
ZeroMeans = choices("ZeroMeans", "absent unknown", __name__)


@dataclass
class CsvConfig:
    labels: Path = field(metadata=opt("The CSV: path[,split], then a column per class or a labels column"))
    images: Path = field(metadata=opt("The folder the CSV's paths are relative to"))
    name: str = field(default="custom", metadata=opt("Dataset name and key prefix"))
    version: str = field(default="1", metadata=opt("Dataset version"))
    test_fraction: float = field(default=0.2, metadata=opt(
        "Without a split column: this fraction of the images (by a hash of the path) is the test split",
        min=0, max=1))
    zero_means: ZeroMeans | None = field(default=None, metadata=opt(
        "What 0 in a class column means: unknown (the format's rule; -1 is absent) or absent (a 0/1 export). "
        "Required when the columns hold 0 and 1 but never -1"))
    allow_missing: bool = allow_missing_field()
    progress: bool = progress_field()

    def __post_init__(self) -> None:
        check_ranges(self)


def _read(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    header, rows = read_csv(path, "label CSV", header_required=True)
    if header is None or "path" not in header:
        sep = next((c for c in (";", "\t") if header and c in header[0]), None)
        if sep:  # a spreadsheet's export in a locale whose list separator is not ','
            raise BadInputError(f"{path}: fields are separated by {sep!r}, not ','; export it as comma-separated")
        raise BadInputError(f"{path}: the first row must be a header with a 'path' column")
    return header, rows


def _split(path: str, fraction: float) -> str:
    u = int.from_bytes(hashlib.blake2b(path.encode(), digest_size=8).digest(), "little") / 2**64
    return "test" if u < fraction else "train"


def _classes(header: list[str], col: dict[str, int], body: list, where: str) -> list[str]:
    """The class names: the header's columns other than path/split, or (with a labels column) every
    ;-joined name it holds, sorted. BadInputError naming the CSV for both forms at once, an unnamed
    column or no class at all."""
    classes = [h for h in header if h not in ("path", "split", "labels")]
    if "labels" in col:
        if classes:
            raise BadInputError(f"{where}: use either a labels column or one column per class, not both "
                                f"(also found {', '.join(classes[:3])})")
        classes = sorted({n.strip() for _, r in body for n in r[col["labels"]].split(";") if n.strip()})
    if "" in classes:
        raise BadInputError(f"{where}: column {header.index('') + 1} has no name in the header; name it or remove it")
    if not classes:
        raise BadInputError(f"{where}: no class (a column per class, or a labels column of ;-joined names)")
    return classes


def _apply_zero_means(cfg: CsvConfig, labels: np.ndarray, body: list, col: dict[str, int], classes: list[str],
                      where: str) -> None:
    """--zero-means on a CSV of class columns: `absent` turns its 0 cells to -1 in `labels` (N, C) in
    place; a 0/1 CSV (0s, never a -1) without the option is a BadInputError asking which it means."""
    zeros = any(r[col[c]] == "0" for _, r in body for c in classes)
    if cfg.zero_means is None and zeros and not (labels == -1).any():
        raise BadInputError(f"{where}: the class columns hold 0 and 1 but never -1, so 0 may mean absent (a 0/1 "
                            f"export) or unknown; say which: --zero-means absent or --zero-means unknown")
    if cfg.zero_means == "absent":
        zero = np.array([[r[col[c]] == "0" for c in classes] for _, r in body], bool).reshape(labels.shape)
        labels[zero] = -1


def build_csv(cfg: CsvConfig):
    from .assemble import assemble, file_key, source_record

    header, body = _read(cfg.labels)
    where = str(cfg.labels)
    if not body:
        raise BadInputError(f"{where}: no image row")
    col = {h: i for i, h in enumerate(header)}
    if len(col) != len(header):
        raise BadInputError(f"{where}: a column name is repeated in the header")
    named = "labels" in col
    classes = _classes(header, col, body, where)
    index = {c: j for j, c in enumerate(classes)}
    labels = np.zeros((len(body), len(classes)), np.int8)
    paths, splits, lines = [], [], []
    for i, (line, r) in enumerate(body):
        if len(r) != len(header):
            raise BadInputError(f"{where}: line {line} has {len(r)} fields, the header {len(header)}")
        p = raw_path(r[col["path"]], f"{where}: line {line}", "--images")  # ./a.jpg is a.jpg: one key
        paths.append(p)
        lines.append(f"{where}: line {line}")
        s = r[col["split"]].lower() if "split" in col else _split(p, cfg.test_fraction)
        if s not in ("train", "test"):
            raise BadInputError(f"{where}: line {line}: split {s!r} must be train or test")
        splits.append(s)
        if named:
            labels[i] = -1
            for n in r[col["labels"]].split(";"):
                if n.strip():
                    labels[i, index[n.strip()]] = 1
        else:
            for j, c in enumerate(classes):
                v = r[col[c]]
                if v not in VALUES:
                    raise BadInputError(f"{where}: line {line}, column {c!r}: {v!r} must be 1, -1, 0 or empty")
                labels[i, j] = VALUES[v]
    if not named:
        _apply_zero_means(cfg, labels, body, col, classes, where)
    refuse_duplicates(zip(paths, lines), "image")  # one file in two rows (or two splits)
    keys = [file_key(cfg.name, p.rsplit(".", 1)[0]) for p in paths]
    refuse_duplicates(zip(keys, lines), "image key (paths differing only in '.', '/' or the extension)")
    rows = pd.DataFrame({"key": keys, "split": splits, "path": paths})
    for s in ("train", "test"):
        if s not in splits:
            raise BadInputError(f"{where}: no {s} image (set a split column or --test-fraction)")
    src = source_record(cfg.labels, Path(cfg.labels).parent)
    return assemble(name=cfg.name, version=cfg.version, classes=classes, source_ids=classes, rows=rows, labels=labels,
                    root=Path(cfg.images), sources=[src], allow_missing=cfg.allow_missing, progress=cfg.progress,
                    options={"format": "csv", "test_fraction": cfg.test_fraction if "split" not in col else None,
                             **({"zero_means": str(cfg.zero_means)} if cfg.zero_means is not None else {})})


COMMAND = BuildCommand("build-csv", CsvConfig, build_csv,
                       "Build from a lab's own CSV: path[,split], then a column per class (1/-1/0/empty) or a ;-joined labels column.",
                       "mlrpl build-csv --labels labels.csv --images /data/lab/images --out /data/mlrpl/lab")
