"""MS-COCO instances JSON (2014, 2017, or any COCO-format pair) -> Manifest.

Reference protocol of the MLR-PL papers: every image is kept (an image without
annotations is all -1), a crowd annotation counts as present, classes are the file's
categories ordered by id. train{year} becomes split "train", val{year} split "test".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import BadInputError
from .jsonio import check_records, parse_json
from .assemble import make_manifest
from .manifest import Manifest
from .options import allow_missing_field, check_ranges, opt, progress_field
from .progress import progress_bar
from .missing import drop_missing
from .rawfiles import present_files, raw_path, refuse_duplicates
from .specs import load_spec
from .declare import BuildCommand, SourceTerms

# the source's licence and citation, for the dataset card (formats.source_terms)
TERMS = {"coco": SourceTerms(
    "cc-by-4.0", "COCO annotations: CC BY 4.0 (https://cocodataset.org/#termsofuse); the images are "
    "Flickr photos under the Flickr terms of use.",
    "Lin et al., Microsoft COCO: Common Objects in Context, ECCV 2014.")}

SOURCE_SPLITS = {"train": "train", "val": "test"}


def _parse_splits(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in str(text).split(",") if s.strip())


@dataclass
class CocoConfig:
    root: Path = field(metadata=opt("Holds annotations/instances_{train,val}YEAR.json and the {train,val}YEAR/ images"))
    year: str = field(default="2014", metadata=opt("Release year in the file names (2014: the papers' protocol)"))
    splits: tuple[str, ...] = field(default=("train", "val"), metadata=opt(
        "Source splits to read, comma-separated: train becomes split train, val split test",
        parse=_parse_splits, show=",".join))
    name: str | None = field(default=None, metadata=opt("Dataset name and key prefix (default coco<year>)"))
    include_crowd: bool = field(default=True, metadata=opt(
        "Crowd annotations (iscrowd=1) count as present, as in the published protocol",
        flags="--include-crowd/--exclude-crowd"))
    allow_missing: bool = allow_missing_field()
    subset: bool = field(default=False, metadata=opt(
        "The files are a deliberate subset of COCO: skip the official image-count check"))
    progress: bool = progress_field()

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.splits or any(s not in SOURCE_SPLITS for s in self.splits):
            raise BadInputError(f"--splits {','.join(self.splits)!r}: use train and/or val (e.g. train,val)")


def annotation_path(root: Path, split: str, year: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}{year}.json"


def _load(path: Path) -> tuple[dict, str, int]:
    """The instances file parsed with position-aware errors and its records checked; returns (its JSON
    document, sha256, bytes). BadInputError naming `path` for a missing file or a bad record.

    Read directly, without pycocotools' COCO index: the labels need one pass over the annotations,
    which the index's createIndex makes anyway before any query. On a 20,000-image, 100,000-annotation
    file (2 CPU cores) that pass takes 48 ms, createIndex alone 73 ms, and the labels through the
    index's queries (getAnnIds/loadAnns per image) 302 ms; on the real val2017 fixture (50 images)
    all are under a millisecond."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"{path}: file not found (expected ROOT/annotations/instances_<split><year>.json)") from None
    data = parse_json(raw, path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("categories"), list):
        raise BadInputError(f"{path}: not a COCO instances file (needs top-level 'images' and 'categories' lists)")
    data.setdefault("annotations", [])
    if not isinstance(data["annotations"], list):
        raise BadInputError(f"{path}: 'annotations' must be a list")
    check_records(path, "images", data["images"], {"id": int, "file_name": str, "width": int, "height": int})
    check_records(path, "annotations", data["annotations"], {"image_id": int, "category_id": int})
    check_records(path, "categories", data["categories"], {"id": int, "name": str})
    ids = [im["id"] for im in data["images"]]
    if len(set(ids)) != len(ids):
        seen: set = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise BadInputError(f"{path}: duplicate image id {dup}")
    return data, hashlib.sha256(raw).hexdigest(), len(raw)


def _categories(data: dict, path: Path) -> tuple[list[str], list[str]]:
    cats = sorted(data["categories"], key=lambda c: c["id"])
    ids = [c["id"] for c in cats]
    if len(set(ids)) != len(ids):
        raise BadInputError(f"{path}: duplicate category id")
    return [c["name"] for c in cats], [str(c["id"]) for c in cats]


def _check_coco80(names, ids, path: Path) -> bool:
    """True when the vocabulary is COCO's 80; a near-miss (80 names, other ids) is an error."""
    spec = load_spec("coco80")["categories"]
    spec_ids = [str(c["source_id"]) for c in spec]
    spec_names = [c["name"] for c in spec]
    if ids == spec_ids and names == spec_names:
        return True
    if len(ids) == 80 and (set(names) == set(spec_names) or ids == spec_ids):
        diff = next(i for i, (a, b, x, y) in enumerate(zip(ids, spec_ids, names, spec_names)) if (a, x) != (b, y))
        raise BadInputError(
            f"{path}: categories look like COCO-80 but differ from manifests/coco80.json at index {diff}: "
            f"id {ids[diff]} {names[diff]!r} vs {spec_ids[diff]} {spec_names[diff]!r}"
        )
    return False


def _split_rows(data: dict, path: Path, split: str, year: str, prefix: str, col_of: dict, include_crowd: bool):
    images = data["images"]
    n, c = len(images), len(col_of)
    if n == 0:
        raise BadInputError(f"{path}: split {split}{year} is empty (no images)")
    labels = np.full((n, c), -1, dtype=np.int8)
    row_of = {im["id"]: r for r, im in enumerate(images)}
    rows, cols = [], []
    for ann in data["annotations"]:
        if not include_crowd and ann.get("iscrowd", 0):
            continue
        try:
            rows.append(row_of[ann["image_id"]])
        except KeyError:
            raise BadInputError(f"{path}: annotation {ann.get('id')} refers to unknown image id {ann.get('image_id')}") from None
        try:
            cols.append(col_of[ann["category_id"]])
        except KeyError:
            raise BadInputError(f"{path}: annotation {ann.get('id')} has unknown category id {ann.get('category_id')}") from None
    labels[np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)] = 1
    # file_name may hold sub-folders, './' or Windows '\\': one rule (rawfiles.raw_path) for every builder
    names = [raw_path(im["file_name"], f"{path}: images[{k}] (id {im['id']})") for k, im in enumerate(images)]
    refuse_duplicates(((n, f"{path}: images[{k}] (id {images[k]['id']})") for k, n in enumerate(names)),
                      f"file under {split}{year}/")
    frame = pd.DataFrame(  # the records' fields and types were checked in _load
        {
            "key": [f"{prefix}_{split}_{im['id']:012d}" for im in images],
            "split": SOURCE_SPLITS[split],
            "path": [f"{split}{year}/{n}" for n in names],
            "width": [im["width"] for im in images],
            "height": [im["height"] for im in images],
        }
    )
    return frame, labels


def _count_checks(cfg: CocoConfig, frames: list[pd.DataFrame], missing_all: list[dict]) -> dict[str, str]:
    """Each split's image count (on disk + missing) against manifests/coco80.json's for the year: a
    difference is a BadInputError naming the annotation file unless --subset says it is deliberate."""
    checks = {}
    expected = load_spec("coco80")["expected_counts"].get(str(cfg.year), {})
    for split in cfg.splits:
        got = sum(f["split"].eq(SOURCE_SPLITS[split]).sum() for f in frames) + sum(
            1 for m in missing_all if m["split"] == SOURCE_SPLITS[split]
        )
        want = expected.get(split)
        if want is not None and got != want:
            if not cfg.subset:
                raise BadInputError(
                    f"{annotation_path(Path(cfg.root), split, cfg.year)}: {got:,} images, manifests/coco80.json "
                    f"expects {want:,} for {split}{cfg.year}; pass --subset if this is a deliberate subset"
                )
            checks[f"{split}{cfg.year}"] = f"{got} images, official {want} (subset)"
        elif want is not None:
            checks[f"{split}{cfg.year}"] = f"{got} images, as official"
    return checks


def build_coco(cfg: CocoConfig) -> Manifest:
    """Build the manifest of a COCO-format dataset (images.parquet rows in JSON image order)."""
    root = Path(cfg.root)
    prefix = cfg.name or f"coco{cfg.year}"
    frames, label_blocks, sources, missing_all = [], [], [], []
    vocab = None
    bar = progress_bar(len(cfg.splits), "build-coco", "file", cfg.progress)
    for split in cfg.splits:
        if split not in SOURCE_SPLITS:
            raise BadInputError(f"unknown COCO split {split!r}: use train and/or val")
        path = annotation_path(root, split, cfg.year)
        bar.set_postfix_str(path.name)
        data, sha, nbytes = _load(path)
        names, ids = _categories(data, path)
        if vocab is None:
            vocab = (names, ids, path)
        elif (names, ids) != vocab[:2]:
            raise BadInputError(f"{path}: categories differ from those of {vocab[2]}")
        col_of = {int(i): k for k, i in enumerate(ids)}
        frame, labels = _split_rows(data, path, split, cfg.year, prefix, col_of, cfg.include_crowd)
        folder = root / f"{split}{cfg.year}"
        names_in_folder = [p.split("/", 1)[1] for p in frame["path"]]
        present = present_files(folder, names_in_folder)
        on_disk = np.fromiter((n in present for n in names_in_folder), dtype=bool, count=len(frame))
        frame, labels, missing = drop_missing(frame, labels, on_disk, cfg.allow_missing, folder,
                                              "referenced image(s) missing on disk", root=root)
        missing_all += missing
        frames.append(frame)
        label_blocks.append(labels)
        sources.append({"file": f"annotations/{path.name}", "sha256": sha, "bytes": nbytes})
        bar.update(1)
    bar.close()
    names, ids, _ = vocab
    is_coco80 = _check_coco80(names, ids, vocab[2])
    images = pd.concat(frames, ignore_index=True)
    checks = _count_checks(cfg, frames, missing_all) if is_coco80 else {}
    return make_manifest(
        root,
        name=prefix,
        version=str(cfg.year),
        category_names=names,
        category_source_ids=ids,
        images=images,
        labels=np.concatenate(label_blocks),
        options={"format": "coco", "splits": list(cfg.splits), "include_crowd": cfg.include_crowd},
        sources=sources,
        extra={"vocabulary": "coco80" if is_coco80 else "from-file", "spec_checks": checks, "missing": missing_all},
    )


COMMAND = BuildCommand("build-coco", CocoConfig, build_coco,
                       "Build a manifest from COCO instances JSON files (train -> train, val -> test).",
                       "mlrpl build-coco --root /data/coco --year 2014 --out /data/mlrpl/coco2014")
