"""What a dataset card says of a raw release: its licence and how to cite it. Each builder declares
its own (`TERMS` beside its code); formats.py collects them."""

from __future__ import annotations

from typing import NamedTuple


class SourceTerms(NamedTuple):
    """What the dataset card says of a raw release."""

    licence: str  # the card's `license:` (a Hugging Face licence id; "other" when none fits)
    text: str  # the card's Licence section
    citation: str | None = None  # the card's "The dataset:" citation line (None: no line)


UNKNOWN = SourceTerms("other", "See the source.")
