"""Open Images V6 human-verified image-level labels -> Manifest, with the labels partial as released.

Reads, from --root (the layout of the official download tools):
  {train,validation,test}-annotations-human-imagelabels-boxable.csv  ImageID,Source,LabelName,Confidence
  class-descriptions-boxable.csv (no header) and/or oidv6-class-descriptions.csv  LabelName,DisplayName
  train/, validation/, test/  <ImageID>.jpg
Confidence 1 -> 1 (verified present), 0 -> -1 (verified absent), no row -> 0 (unknown); when one
image has both for a class, present wins. The label CSVs (9M rows for train) are read in blocks
with pyarrow's streaming CSV reader: the memory of the (image, class, value) triples, never of
the whole text. mlrpl datasets have a train and a test split: train is read as train, and
--test-split picks which released split becomes test (hold out training images for validation
with `train --val-fraction`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import BadInputError
from .options import allow_missing_field, check_ranges, choices, opt, progress_field
from .rawfiles import read_csv
from .declare import BuildCommand, SourceTerms

# the source's licence and citation, for the dataset card (formats.source_terms)
TERMS = {"openimages": SourceTerms(
    "cc-by-4.0", "Open Images: the annotations are CC BY 4.0, the images are listed as CC BY 2.0 "
    "(https://storage.googleapis.com/openimages/web/factsfigures.html); check each image's own licence.",
    "Kuznetsova et al., The Open Images Dataset V4, IJCV 2020.")}

LABELS_CSV = "{split}-annotations-human-imagelabels-boxable.csv"
BOXABLE = "class-descriptions-boxable.csv"
ALL_CLASSES = "oidv6-class-descriptions.csv"
TestSplit = choices("TestSplit", "test validation", __name__)


@dataclass
class OpenImagesConfig:
    root: Path = field(metadata=opt("Holds the label CSVs, the class descriptions and train/ validation/ test/"))
    version: str = field(default="v6", metadata=opt("Release (the V6 file names; V5's image-level files are the same)"))
    classes: str = field(default="boxable", metadata=opt(
        "Vocabulary: boxable (the 601 of class-descriptions-boxable.csv), all (oidv6-class-descriptions.csv), or "
        "a file of LabelNames, one per line"))
    min_positives: int = field(default=0, metadata=opt("Drop classes with fewer train positives than this", min=0))
    test_split: TestSplit = field(default=TestSplit.test, metadata=opt("Which released split becomes the test split"))
    name: str | None = field(default=None, metadata=opt("Dataset name and key prefix (default openimages-<version>)"))
    allow_missing: bool = allow_missing_field()
    progress: bool = progress_field()

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.version not in ("v5", "v6"):
            raise BadInputError(f"--version {self.version!r}: use v6 (or v5, whose image-level label files are alike)")


def read_descriptions(path: Path) -> dict[str, str]:
    """LabelName -> DisplayName from a class-descriptions CSV (oidv6's has a header row, boxable's not)."""
    out: dict[str, str] = {}
    _, rows = read_csv(path, "class descriptions", header=["LabelName", "DisplayName"])
    for n, row in rows:
        if len(row) < 2 or not row[0]:
            raise BadInputError(f"{path}: line {n}: expected LabelName,DisplayName")
        if row[0] in out:
            raise BadInputError(f"{path}: line {n}: LabelName {row[0]} is described twice")
        out[row[0]] = row[1]
    if not out:
        raise BadInputError(f"{path}: no class")
    return out


def vocabulary(cfg: OpenImagesConfig) -> tuple[list[str], dict[str, str], list[Path]]:
    """(LabelNames in order, LabelName -> display name, the files read)."""
    root = Path(cfg.root)
    files = {f: read_descriptions(root / f) for f in (BOXABLE, ALL_CLASSES) if (root / f).is_file()}
    names = {k: v for d in files.values() for k, v in d.items()}
    read = [root / f for f in files]
    if cfg.classes in ("boxable", "all"):
        fname = BOXABLE if cfg.classes == "boxable" else ALL_CLASSES
        if fname not in files:
            raise BadInputError(f"{root / fname}: not found (needed by --classes {cfg.classes})")
        ids = list(files[fname])
    else:
        path = Path(cfg.classes)
        if not path.is_file():
            raise BadInputError(f"--classes {cfg.classes}: use boxable, all, or a file of LabelNames (not found)")
        ids = [row[0] for _, row in read_csv(path, "class file", header=["LabelName"])[1]]
        read.append(path)
        unknown = [i for i in ids if names and i not in names]
        if unknown:
            raise BadInputError(f"{path}: {len(unknown)} LabelName(s) not in the class descriptions, e.g. {unknown[0]}")
    if len(set(ids)) != len(ids):
        raise BadInputError(f"--classes {cfg.classes}: a LabelName is listed twice")
    return ids, names, read


def read_image_labels(path: Path, class_ids: list[str], block_size: int = 1 << 24):
    """(image ids, row, column, value) of every row whose class is in `class_ids`; images in the
    order the file first names them. ImageID and LabelName are parsed straight into dictionaries,
    so each block's class lookup is over its few distinct names, not its rows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    want = ["ImageID", "LabelName", "Confidence"]
    text = pa.dictionary(pa.int32(), pa.string())
    try:
        reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=block_size, use_threads=True),
                                convert_options=pacsv.ConvertOptions(
                                    include_columns=want, column_types={"ImageID": text, "LabelName": text,
                                                                        "Confidence": pa.float64()}))
    except FileNotFoundError:
        raise BadInputError(f"{path}: not found") from None
    except (pa.ArrowInvalid, pa.ArrowKeyError) as e:
        raise BadInputError(f"{path}: not an Open Images image-level label CSV (needs columns {', '.join(want)}: "
                            f"{e})") from None
    value_set = pa.array(class_ids, pa.string())
    ids, cols, conf = [], [], []
    try:
        for batch in reader:
            names = batch.column(1)
            per_name = np.asarray(pc.index_in(pc.utf8_trim_whitespace(names.dictionary), value_set=value_set)
                                  .fill_null(-1), dtype=np.int32)
            cls = per_name[names.indices.to_numpy(zero_copy_only=False)]
            keep = cls >= 0
            ids.append(batch.column(0).filter(pa.array(keep)))
            cols.append(cls[keep])
            conf.append(batch.column(2).to_numpy(zero_copy_only=False)[keep])
    except pa.ArrowInvalid as e:
        raise BadInputError(f"{path}: malformed CSV ({e})") from None
    if not ids:
        return [], np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int8)
    confidence = np.concatenate(conf)
    bad = ~np.isin(confidence, (0.0, 1.0))
    if bad.any():
        raise BadInputError(f"{path}: Confidence {float(confidence[bad][0]):g}: must be 1 (present) or 0 (absent)")
    unified = pa.chunked_array(ids, text).unify_dictionaries()  # one dictionary over every block
    rows = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in unified.chunks]).astype(np.int64)
    dictionary = unified.chunk(0).dictionary
    used = np.bincount(rows, minlength=len(dictionary)) > 0  # drop images named only with other classes
    renumber = np.cumsum(used) - 1
    image_ids = dictionary.filter(pa.array(used)).to_pylist()
    return image_ids, renumber[rows].astype(np.int32), np.concatenate(cols), np.where(confidence > 0, 1, -1).astype(np.int8)


def label_matrix(n: int, c: int, rows, cols, vals) -> np.ndarray:
    labels = np.zeros(n * c, np.int8)
    flat = rows.astype(np.int64) * c + cols  # one flat index: a cheaper scatter than (rows, cols)
    neg = vals < 0
    labels[flat[neg]] = -1
    labels[flat[~neg]] = 1  # present wins over absent
    return labels.reshape(n, c)


def build_openimages(cfg: OpenImagesConfig):
    from .assemble import assemble, source_record

    root = Path(cfg.root)
    ids, display, read = vocabulary(cfg)
    name = cfg.name or f"openimages-{cfg.version}"
    frames, blocks, sources = [], [], [source_record(p, root) for p in read]
    for split, release in (("train", "train"), ("test", str(cfg.test_split))):
        path = root / LABELS_CSV.format(split=release)
        images, r, c, v = read_image_labels(path, ids)
        sources.append(source_record(path, root))
        if not images:
            raise BadInputError(f"{path}: no row has a class of the vocabulary (--classes {cfg.classes})")
        frames.append(pd.DataFrame({"key": [f"{name}_{i}" for i in images], "split": split,
                                    "path": [f"{release}/{i}.jpg" for i in images]}))
        blocks.append(label_matrix(len(images), len(ids), r, c, v))
    both = set(frames[0]["key"]).intersection(frames[1]["key"])
    if both:  # one image trained on and tested on
        key = min(both)
        raise BadInputError(f"{sources[-1]['file']}: image {key.removeprefix(name + '_')} is also in "
                            f"{sources[-2]['file']}; the released splits are disjoint (a file copied over another?)")
    labels = np.concatenate(blocks)
    rows = pd.concat(frames, ignore_index=True)
    keep = np.ones(len(ids), bool)
    if cfg.min_positives:
        keep = (labels[rows["split"].to_numpy() == "train"] == 1).sum(axis=0) >= cfg.min_positives
        if not keep.any():
            raise BadInputError(f"--min-positives {cfg.min_positives}: no class has that many train positives")
        labels = labels[:, keep]
        known = (labels != 0).any(axis=1)  # an image left without any known label says nothing
        rows, labels = rows[known].reset_index(drop=True), labels[known]
    kept = [i for i, k in zip(ids, keep) if k]
    return assemble(name=name, version=cfg.version, classes=[display.get(i, i) for i in kept], source_ids=kept,
                    rows=rows, labels=labels, root=root, sources=sources, allow_missing=cfg.allow_missing,
                    progress=cfg.progress,
                    options={"format": "openimages", "classes": cfg.classes if cfg.classes in ("boxable", "all")
                             else Path(cfg.classes).name, "min_positives": cfg.min_positives,
                             "test_split": str(cfg.test_split)})


COMMAND = BuildCommand("build-openimages", OpenImagesConfig, build_openimages,
                       "Build from Open Images' human-verified image-level labels: 1 verified present, -1 verified absent, 0 unknown.",
                       "mlrpl build-openimages --root /data/openimages --out /data/mlrpl/openimages-v6")
