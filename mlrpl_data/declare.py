"""What each builder declares about itself, beside its code: its source's licence and citation
(`TERMS`, for the dataset card) and its `build-*` command (`COMMAND`, for the CLI); formats.py
collects them."""

from __future__ import annotations

from typing import Callable, NamedTuple


class SourceTerms(NamedTuple):
    """What the dataset card says of a raw release."""

    licence: str  # the card's `license:` (a Hugging Face licence id; "other" when none fits)
    text: str  # the card's Licence section
    citation: str | None = None  # the card's "The dataset:" citation line (None: no line)


UNKNOWN = SourceTerms("other", "See the source.")


class BuildCommand(NamedTuple):
    """A builder's `mlrpl build-*` command: the CLI makes one option per field of `config` (a
    dataclass of mlrpl_data.options fields) and writes what `build(config)` returns (a Manifest)."""

    name: str  # e.g. "build-coco"
    config: type
    build: Callable
    doc: str  # the command's one-line help
    example: str  # a runnable example, shown in --help
