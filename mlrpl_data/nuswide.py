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
from .rawfiles import raw_path, read_lines, refuse_duplicates
from .declare import BuildCommand, SourceTerms

# the source's licence and citation, for the dataset card (formats.source_terms)
TERMS = {"nuswide": SourceTerms(
    "other", "NUS-WIDE: for research use (https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/"
    "nuswide/NUS-WIDE.html); the images are Flickr photos under the Flickr terms of use.",
    "Chua et al., NUS-WIDE: A Real-World Web Image Database from National University of Singapore, "
    "CIVR 2009.")}

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


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise BadInputError(f"{path}: not found (the NUS-WIDE ground truth layout: see mlrpl build-nuswide --help)")
    return read_lines(path, "NUS-WIDE list")


def concepts(root: Path) -> list[str]:
    listed = root / "ConceptsList" / "Concepts81.txt"
    if listed.is_file():
        lines = _lines(listed)
        refuse_duplicates(((c, f"{listed}:{n}") for n, c in lines), "concept")
        return [c for _, c in lines]
    found = sorted(p.name[len("Labels_"):-len("_Train.txt")]
                   for p in (root / "Groundtruth" / "TrainTestLabels").glob("Labels_*_Train.txt"))
    if not found:
        raise BadInputError(f"{root / 'Groundtruth' / 'TrainTestLabels'}: no Labels_<concept>_Train.txt")
    return found


def build_nuswide(cfg: NuswideConfig):
    from .assemble import assemble, file_key, source_record

    root = Path(cfg.root)
    names = concepts(root)
    frames, blocks, sources, where_all, keyed = [], [], [], [], []
    for split, tag in SPLITS.items():
        list_path = root / LISTS[split]
        listed = [(raw_path(p, f"{list_path}:{n}"), f"{list_path}:{n}") for n, p in _lines(list_path)]
        paths = [p for p, _ in listed]
        sources.append(source_record(list_path, root))
        labels = np.empty((len(paths), len(names)), np.int8)
        for j, concept in enumerate(names):
            path = root / LABELS.format(concept=concept, split=tag)
            values = [v for _, v in _lines(path)]
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
        where_all += [(p, w) for p, w in listed]
        keyed += [(k, w) for k, (_, w) in zip(keys, listed)]
    refuse_duplicates(where_all, "image")  # within a list or across the two
    refuse_duplicates(keyed, "image key (the same file name in two folders)")
    rows = pd.concat(frames, ignore_index=True)
    return assemble(name=cfg.name, version="81", classes=names, source_ids=names, rows=rows,
                    labels=np.concatenate(blocks), root=root, sources=sources, allow_missing=cfg.allow_missing,
                    progress=cfg.progress, options={"format": "nuswide"})


COMMAND = BuildCommand("build-nuswide", NuswideConfig, build_nuswide,
                       "Build from NUS-WIDE's 81-concept ground truth (TrainTestLabels, ImageList, Flickr/).",
                       "mlrpl build-nuswide --root /data/nus-wide --out /data/mlrpl/nuswide81 --allow-missing")
