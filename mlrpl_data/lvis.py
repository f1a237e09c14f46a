"""LVIS v1 (federated labels) -> Manifest, partial as released.

--root holds lvis_v1_train.json and lvis_v1_val.json (COCO-format) and COCO 2017's train2017/ and
val2017/; each image's folder comes from its coco_url (LVIS val draws on both). A class is 1 when
the image has an annotation of it, -1 when it is in the image's neg_category_ids, 0 otherwise:
LVIS is federated, so everything else is unknown. not_exhaustive_category_ids (positives whose
instances were not all annotated) is recorded per image in dataset.json, not turned into labels.
lvis_v1_train becomes split train, lvis_v1_val split test.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import BadInputError
from .jsonio import check_records, parse_json
from .assemble import make_manifest
from .manifest import Manifest
from .missing import drop_missing
from .options import allow_missing_field, check_ranges, opt, progress_field
from .declare import BuildCommand, SourceTerms

# the source's licence and citation, for the dataset card (formats.source_terms)
TERMS = {"lvis": SourceTerms(
    "cc-by-4.0", "LVIS annotations: CC BY 4.0 (https://www.lvisdataset.org/); the images are COCO 2017's, "
    "Flickr photos under the Flickr terms of use.",
    "Gupta et al., LVIS: A Dataset for Large Vocabulary Instance Segmentation, CVPR 2019.")}

FILES = {"train": "lvis_v1_train.json", "test": "lvis_v1_val.json"}


@dataclass
class LvisConfig:
    root: Path = field(metadata=opt("Holds lvis_v1_{train,val}.json and COCO 2017's train2017/ and val2017/"))
    name: str = field(default="lvis-v1", metadata=opt("Dataset name and key prefix"))
    allow_missing: bool = allow_missing_field()
    progress: bool = progress_field()

    def __post_init__(self) -> None:
        check_ranges(self)


def _folder(image: dict, where: str) -> str:
    url = image.get("coco_url")
    if not isinstance(url, str) or "/" not in url:
        raise BadInputError(f"{where}: image {image.get('id')} has no coco_url to say its COCO folder")
    folder, file_name = url.rstrip("/").split("/")[-2:]
    if folder not in ("train2017", "val2017"):
        raise BadInputError(f"{where}: image {image.get('id')}: coco_url {url!r} names no COCO 2017 folder")
    return f"{folder}/{file_name}"


def read_lvis(path: Path) -> tuple[dict, str, int]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"{path}: not found (expected ROOT/{path.name})") from None
    data = parse_json(raw, path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise BadInputError(f"{path}: not an LVIS file (needs top-level 'images', 'annotations', 'categories')")
    # every field the builder reads, checked per record before any is used (as build-coco does)
    check_records(path, "images", data["images"], {"id": int, "width": int, "height": int, "coco_url": str},
                  optional={"neg_category_ids": list, "not_exhaustive_category_ids": list})
    for k, im in enumerate(data["images"]):
        for f in ("neg_category_ids", "not_exhaustive_category_ids"):
            bad = next((c for c in im.get(f, []) if type(c) is not int), None)
            if bad is not None:
                raise BadInputError(f"{path}: images[{k}] (id {im['id']}) field {f!r} holds {bad!r}, not a category id")
    check_records(path, "annotations", data["annotations"], {"image_id": int, "category_id": int})
    check_records(path, "categories", data["categories"], {"id": int, "name": str})
    ids = [im["id"] for im in data["images"]]
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise BadInputError(f"{path}: image id {dup} appears twice in 'images'")
    return data, hashlib.sha256(raw).hexdigest(), len(raw)


def build_lvis(cfg: LvisConfig) -> Manifest:
    root = Path(cfg.root)
    loaded = {split: read_lvis(root / f) for split, f in FILES.items()}
    cats = sorted(loaded["train"][0]["categories"], key=lambda c: c["id"])
    col = {c["id"]: i for i, c in enumerate(cats)}
    if len(col) != len(cats):
        raise BadInputError(f"{root / FILES['train']}: a category id appears twice in 'categories'")
    if sorted((c["id"], c["name"]) for c in loaded["test"][0]["categories"]) != [(c["id"], c["name"]) for c in cats]:
        raise BadInputError(f"{root / FILES['test']}: its categories differ from those of {FILES['train']}")
    seen_at: dict[str, str] = {}
    rows, blocks, on_disk, not_exhaustive, sources = [], [], [], {}, []
    for split, (data, sha, size) in loaded.items():
        where = str(root / FILES[split])
        sources.append({"file": FILES[split], "sha256": sha, "bytes": size})
        ids = [im["id"] for im in data["images"]]
        row_of = {i: r for r, i in enumerate(ids)}
        labels = np.zeros((len(ids), len(cats)), np.int8)
        for r, im in enumerate(data["images"]):
            for cid in im.get("neg_category_ids", []):
                if cid not in col:
                    raise BadInputError(f"{where}: image {im['id']}: neg_category_ids has unknown category {cid}")
                labels[r, col[cid]] = -1
        for a in data["annotations"]:
            if a.get("image_id") not in row_of or a.get("category_id") not in col:
                raise BadInputError(f"{where}: annotation {a.get('id')} names an unknown image or category")
            r, c = row_of[a["image_id"]], col[a["category_id"]]
            if labels[r, c] == -1:  # both present and verified absent: which one is true is not ours to guess
                raise BadInputError(f"{where}: annotation {a.get('id')} marks category {a['category_id']} present in "
                                    f"image {a['image_id']}, whose neg_category_ids says it is absent; fix one of them")
            labels[r, c] = 1
        for r, im in enumerate(data["images"]):
            key = f"{cfg.name}_{split}_{im['id']}"
            path = _folder(im, where)
            if path in seen_at:  # one COCO image in both files: trained on and tested on
                raise BadInputError(f"{seen_at[path]} and {where}: images[{r}] (id {im['id']}) are the same image "
                                    f"{path}; keep one of them")
            seen_at[path] = f"{where}: images[{r}] (id {im['id']})"
            rows.append((key, split, path, int(im["width"]), int(im["height"])))
            on_disk.append((root / path).is_file())
            if on_disk[-1] and im.get("not_exhaustive_category_ids"):
                not_exhaustive[key] = sorted(col[c] for c in im["not_exhaustive_category_ids"] if c in col)
        blocks.append(labels)
    images, labels, missing = drop_missing(pd.DataFrame(rows, columns=["key", "split", "path", "width", "height"]),
                                           np.concatenate(blocks), on_disk, cfg.allow_missing, root,
                                           "image(s) of the LVIS files missing on disk", root=root)
    return make_manifest(root, name=cfg.name, version="v1", category_names=[c["name"] for c in cats],
                         category_source_ids=[str(c["id"]) for c in cats], images=images, labels=labels,
                         options={"format": "lvis"}, sources=sources,
                         extra={"missing": missing, "not_exhaustive_category_ids": not_exhaustive})


COMMAND = BuildCommand("build-lvis", LvisConfig, build_lvis,
                       "Build from LVIS v1: annotated 1, neg_category_ids -1, everything else 0 (federated labels).",
                       "mlrpl build-lvis --root /data/lvis --out /data/mlrpl/lvis-v1")
