"""The builders, and which one made a dataset of each `format` (the string a builder writes into
dataset.json's options). Each builder declares, next to its code (declare.py), its source's licence
and citation as `TERMS: dict[format, SourceTerms]` (the dataset card's) and its command as
`COMMAND: BuildCommand` (the CLI makes one `build-*` command per builder listed here); a new builder
adds its module to BUILDERS.

The builders are imported here, statically: none of them imports the card or the folder (a builder
returns a Manifest, manifest.py is the in-memory schema; folder.py writes it), so the card can depend
on them without an import cycle (tests/test_imports.py checks it).
"""

from __future__ import annotations

from . import coco, csvlabels, digits, lvis, nuswide, openimages, vg, voc
from .declare import UNKNOWN, SourceTerms

BUILDERS = (coco, voc, vg, openimages, lvis, nuswide, csvlabels)
# format -> its builder's terms (vg declares two formats: the raw release and SSGRL's benchmark lists)
FORMATS: dict[str, SourceTerms] = {fmt: terms for builder in BUILDERS for fmt, terms in builder.TERMS.items()}


def source_terms(fmt: str, dataset_name: str) -> SourceTerms:
    """The licence and citation of a dataset of format `fmt` named `dataset_name` (a name starting with
    "digits" is mlrpl's embedded digits data, built as COCO under terms of its own: digits.TERMS);
    UNKNOWN for a format no builder here declares."""
    if dataset_name.startswith("digits"):
        return digits.TERMS["digits"]
    return FORMATS.get(fmt, UNKNOWN)
