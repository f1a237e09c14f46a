"""PASCAL VOC 2007 devkit tree -> Manifest.

Splits come from ImageSets/Main/trainval.txt (-> "train") and test.txt (-> "test"),
never from the per-class lists beside them (`train_test.txt` is the class "train").
Labels come from Annotations/*.xml parsed with defusedxml (entity bombs are refused).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET
from xml.etree.ElementTree import ParseError

from .errors import BadInputError
from .fsutil import sha256_file
from .assemble import make_manifest
from .manifest import Manifest
from .options import allow_missing_field, choices, check_ranges, opt, progress_field
from .progress import progress_bar
from .rawfiles import read_lines
from .missing import drop_missing
from .specs import load_spec, voc20_names
from .declare import BuildCommand, SourceTerms

# the source's licence and citation, for the dataset card (formats.source_terms)
TERMS = {"voc": SourceTerms(
    "other", "PASCAL VOC 2007: the images are Flickr photos under the Flickr terms of use; the annotations "
    "are for research use (http://host.robots.ox.ac.uk/pascal/VOC/voc2007/).",
    "Everingham et al., The PASCAL Visual Object Classes (VOC) Challenge, IJCV 2010.")}

SPLIT_FILES = {"train": "trainval.txt", "test": "test.txt"}
SOURCE_NAMES = {"train": "trainval", "test": "test"}
Difficult = choices("Difficult", "negative ignore", __name__)


@dataclass
class VocConfig:
    root: Path = field(metadata=opt("VOCdevkit/VOC2007, VOCdevkit, or the folder holding it"))
    difficult: Difficult = field(default=Difficult.negative, metadata=opt(
        "A class seen only in difficult objects: negative (-1, the published protocol) or ignore (0, skipped by "
        "evaluation)"))
    allow_missing: bool = allow_missing_field("listed images whose JPEG or XML is missing")
    subset: bool = field(default=False, metadata=opt(
        "The lists are a deliberate subset of VOC 2007: skip the official image-count check"))
    progress: bool = progress_field()

    def __post_init__(self) -> None:
        check_ranges(self)


def find_voc2007(root: Path) -> Path:
    """Accept VOCdevkit/VOC2007 itself, or a folder holding VOC2007 or VOCdevkit/VOC2007."""
    root = Path(root)
    for cand in (root, root / "VOC2007", root / "VOCdevkit" / "VOC2007"):
        if (cand / "ImageSets" / "Main").is_dir() and (cand / "Annotations").is_dir():
            return cand
    raise BadInputError(f"{root}: no VOC2007 tree found (need ImageSets/Main and Annotations under it, VOC2007/ or VOCdevkit/VOC2007/)")


def read_image_set(path: Path) -> tuple[list[str], str]:
    """Ids of a main split list (one id per line; BOM, CRLF, blank lines and spaces accepted);
    returns (ids, sha256 of the file)."""
    ids, line_of = [], {}
    for n, line in read_lines(path, "split list"):
        parts = line.split()
        if len(parts) != 1:
            raise BadInputError(f"{path}:{n}: {line!r} is not an image id (a per-class list, not a split?)")
        if parts[0] in line_of:
            raise BadInputError(f"{path}: image id {parts[0]} listed twice (lines {line_of[parts[0]]} and {n})")
        line_of[parts[0]] = n
        ids.append(parts[0])
    if not ids:
        raise BadInputError(f"{path}: the split is empty")
    return ids, sha256_file(path)


def parse_annotation(path: Path, class_index: dict[str, int], difficult: str) -> tuple[np.ndarray, int, int]:
    """One XML -> (labels int8[C], width, height)."""
    try:
        tree = SafeET.parse(path, forbid_dtd=True)
    except DefusedXmlException as e:
        raise BadInputError(f"{path}: refused XML ({type(e).__name__}: entity or DTD declarations, a possible XML bomb)") from None
    except ParseError as e:
        raise BadInputError(f"{path}: malformed XML at line {e.position[0]}, column {e.position[1]}") from None
    root = tree.getroot()
    try:
        width = int(root.findtext("size/width"))
        height = int(root.findtext("size/height"))
    except (TypeError, ValueError):
        raise BadInputError(f"{path}: missing or non-integer <size><width>/<height>") from None
    present = np.zeros(len(class_index), dtype=bool)
    difficult_only = np.zeros(len(class_index), dtype=bool)
    for k, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in class_index:
            raise BadInputError(f"{path}: object {k} has unknown class name {name!r} (VOC classes: manifests/voc20.json)")
        c = class_index[name]
        if (obj.findtext("difficult") or "0").strip() == "1":
            difficult_only[c] = True
        else:
            present[c] = True
    labels = np.where(present, 1, -1).astype(np.int8)
    if difficult == "ignore":
        labels[difficult_only & ~present] = 0
    return labels, width, height


def _split_ids(voc: Path, split: str, fname: str, listed_in: dict[str, str], sources: list[dict],
               checks: dict[str, str], subset: bool) -> list[str]:
    """The image ids of one split's ImageSets/Main list; records the list in `sources`, its count against
    manifests/voc20.json in `checks` and its ids in `listed_in`. BadInputError naming the list for an id
    another split lists, or a count other than the official one unless `subset`."""
    list_path = voc / "ImageSets" / "Main" / fname
    ids, sha = read_image_set(list_path)
    clash = next((i for i in ids if i in listed_in), None)
    if clash is not None:  # one image in both splits would be trained on and tested on
        raise BadInputError(f"{list_path}: image id {clash} is also in {listed_in[clash]}; an image belongs to "
                            f"one split")
    listed_in.update((i, fname) for i in ids)
    sources.append({"file": f"ImageSets/Main/{fname}", "sha256": sha, "bytes": list_path.stat().st_size})
    want = load_spec("voc20")["expected_counts"][SOURCE_NAMES[split]]
    if len(ids) != want and not subset:
        raise BadInputError(
            f"{list_path}: {len(ids):,} ids, manifests/voc20.json expects {want:,}; pass --subset if deliberate"
        )
    checks[SOURCE_NAMES[split]] = f"{len(ids)} listed, official {want}"
    return ids


def build_voc07(cfg: VocConfig) -> Manifest:
    """Build the VOC 2007 manifest (rows in trainval.txt, then test.txt order)."""
    voc = find_voc2007(cfg.root)
    names = voc20_names()
    class_index = {n: i for i, n in enumerate(names)}
    jpegs = {p.name for p in (voc / "JPEGImages").glob("*")} if (voc / "JPEGImages").is_dir() else set()
    rows, label_rows, on_disk, no_xml, sources, checks, listed_in = [], [], [], [], [], {}, {}
    bar = progress_bar(None, "build-voc07", "xml", cfg.progress)
    for split, fname in SPLIT_FILES.items():
        ids = _split_ids(voc, split, fname, listed_in, sources, checks, cfg.subset)
        for image_id in ids:
            key = f"voc2007_{SOURCE_NAMES[split]}_{image_id}"
            rel = f"JPEGImages/{image_id}.jpg"
            xml = voc / "Annotations" / f"{image_id}.xml"
            no_xml.append(not xml.exists())
            on_disk.append(not no_xml[-1] and f"{image_id}.jpg" in jpegs)
            if not on_disk[-1]:  # a row to drop (or refuse): no labels to read
                rows.append((key, split, rel, 0, 0))
                label_rows.append(np.zeros(len(names), np.int8))
                continue
            labels, w, h = parse_annotation(xml, class_index, cfg.difficult)
            rows.append((key, split, rel, w, h))
            label_rows.append(labels)
            bar.update(1)
    bar.close()
    images, labels, missing = drop_missing(pd.DataFrame(rows, columns=["key", "split", "path", "width", "height"]),
                                           np.stack(label_rows) if label_rows else np.zeros((0, len(names)), np.int8),
                                           on_disk, cfg.allow_missing, voc, "listed image(s) lack their JPEG or XML",
                                           root=voc, notes={"annotation_missing": no_xml})
    if not len(images):
        raise BadInputError(f"{voc}: no image has both its XML and JPEG")
    for split in SPLIT_FILES:
        if not images["split"].eq(split).any():
            raise BadInputError(f"{voc}: split {split} ({SPLIT_FILES[split]}) has no image left")
    return make_manifest(
        voc,
        name="voc2007",
        version="2007",
        category_names=names,
        category_source_ids=names,
        images=images,
        labels=labels,
        options={"format": "voc", "difficult": cfg.difficult},
        sources=sources,
        extra={"vocabulary": "voc20", "spec_checks": checks, "missing": missing},
    )


COMMAND = BuildCommand("build-voc07", VocConfig, build_voc07,
                       "Build a manifest from the PASCAL VOC 2007 devkit (trainval -> train, test -> test).",
                       "mlrpl build-voc07 --root /data/VOCdevkit --out /data/mlrpl/voc2007")
