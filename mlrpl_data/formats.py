"""Which builder made a dataset of each `format` (the string a builder writes into dataset.json's
options), so the dataset card can give its source's licence and citation. Each builder declares them
itself, next to its code, as `TERMS: dict[format, SourceTerms]`; a new builder adds its format here.

FORMATS names the builder modules instead of importing them: a builder imports the manifest, whose
folder renders the card, so a static import of the builders from the card would close an import
cycle. A builder's module is imported when the card of one of its datasets is written.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple


class SourceTerms(NamedTuple):
    """What the dataset card says of a raw release."""

    licence: str  # the card's `license:` (a Hugging Face licence id; "other" when none fits)
    text: str  # the card's Licence section
    citation: str | None = None  # the card's "The dataset:" citation line (None: no line)


# format -> the module under mlrpl_data that builds it (and declares its TERMS)
FORMATS = {"coco": "coco", "voc": "voc", "vg-raw": "vg", "vg-ssgrl": "vg", "openimages": "openimages",
           "lvis": "lvis", "nuswide": "nuswide", "csv": "csvlabels"}
DIGITS = "digits"  # the embedded digits: built as COCO, under terms of their own (digits.TERMS)
UNKNOWN = SourceTerms("other", "See the source.")


def source_terms(fmt: str, dataset_name: str) -> SourceTerms:
    """The licence and citation of a dataset of format `fmt` named `dataset_name` (a name starting with
    "digits" is mlrpl's embedded digits data); UNKNOWN for a format no builder here declares."""
    if dataset_name.startswith("digits"):
        fmt, module = DIGITS, DIGITS
    else:
        module = FORMATS.get(fmt)
    if module is None:
        return UNKNOWN
    return importlib.import_module(f"{__package__}.{module}").TERMS[fmt]
