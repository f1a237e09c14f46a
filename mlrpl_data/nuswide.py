"""NUS-WIDE's 81-concept ground truth -> Manifest.

--root holds the release's ground truth and image lists:
  Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt  one 0/1 per line, in list order
  ImageList/TrainImagelist.txt, ImageList/TestImagelist.txt       e.g. actor\\0001_2124494179.jpg
  ConceptsList/Concepts81.txt (optional: the concept order; else the label files' names, sorted)
  Flickr/<folder>/<file>.jpg                                       the images
1 -> 1, 0 -> -1 (the ground truth is complete). Images missing on disk (many NUS-WIDE URLs are
dead) are refused, or dropped with --allow-missing and listed in dataset.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import BadInputError
from .options import allow_missing_field, check_ranges, opt, progress_field

SPLITS = {"train": "Train", "test": "Test"}
LABELS = "Groundtruth/TrainTestLabels/Labels_{concept}_{split}.txt"
LISTS = {"train": "ImageList/TrainImagelist.txt", "test": "ImageList/TestImagelist.txt"}


@dataclass
class NuswideConfig:
    root: Path = field(metadata=opt("Holds Groundtruth/, ImageList/, Flickr/ (and ConceptsList/) of NUS-WIDE"))
    name: str = field(default="nuswide81", metadata=opt("Dataset name and key prefix"))
    allow_missing: bool = allow_missing_field()
    progress: bool = progress_field()

    def __post_init__(self) -> None:
        check_ranges(self)


def _lines(path: Path) -> list[str]:
    try:
        return [x.strip() for x in path.read_text(encoding="utf-8", errors="strict").splitlines() if x.strip()]
    except FileNotFoundError:
        raise BadInputError(f"{path}: not found (the NUS-WIDE ground truth layout: see mlrpl build-nuswide --help)") from None
    except UnicodeDecodeError as e:
        raise BadInputError(f"{path}: not text ({e.reason} at byte {e.start})") from None


def concepts(root: Path) -> list[str]:
    listed = root / "ConceptsList" / "Concepts81.txt"
    if listed.is_file():
        return _lines(listed)
    found = sorted(p.name[len("Labels_"):-len("_Train.txt")]
                   for p in (root / "Groundtruth" / "TrainTestLabels").glob("Labels_*_Train.txt"))
    if not found:
        raise BadInputError(f"{root / 'Groundtruth' / 'TrainTestLabels'}: no Labels_<concept>_Train.txt")
    return found


def build_nuswide(cfg: NuswideConfig):
    from .assemble import assemble, file_key, source_record

    root = Path(cfg.root)
    names = concepts(root)
    frames, blocks, sources = [], [], []
    for split, tag in SPLITS.items():
        list_path = root / LISTS[split]
        paths = [p.replace("\\", "/") for p in _lines(list_path)]
        sources.append(source_record(list_path, root))
        labels = np.empty((len(paths), len(names)), np.int8)
        for j, concept in enumerate(names):
            path = root / LABELS.format(concept=concept, split=tag)
            values = _lines(path)
            if len(values) != len(paths):
                raise BadInputError(f"{path}: {len(values):,} lines, {list_path.name} lists {len(paths):,} images")
            bad = [i for i, v in enumerate(values) if v not in ("0", "1")]
            if bad:
                raise BadInputError(f"{path}: line {bad[0] + 1} is {values[bad[0]]!r}: must be 0 or 1")
            labels[:, j] = np.where(np.array(values) == "1", 1, -1)
            sources.append(source_record(path, root))
        keys = [file_key(cfg.name, Path(p).stem) for p in paths]
        frames.append(pd.DataFrame({"key": keys, "split": split, "path": [f"Flickr/{p}" for p in paths]}))
        blocks.append(labels)
    rows = pd.concat(frames, ignore_index=True)
    dup = rows["key"][rows["key"].duplicated()]
    if len(dup):
        raise BadInputError(f"{root / 'ImageList'}: two images give the key {dup.iloc[0]!r} (the same file name twice)")
    return assemble(name=cfg.name, version="81", classes=names, source_ids=names, rows=rows,
                    labels=np.concatenate(blocks), root=root, sources=sources, allow_missing=cfg.allow_missing,
                    progress=cfg.progress, options={"format": "nuswide"})
