"""The committed dataset specs in `manifests/`: vocabularies, expected counts, archive checksums."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

SPECS_DIR = Path(__file__).resolve().parent.parent / "manifests"


@lru_cache(maxsize=None)
def load_spec(name: str) -> dict[str, Any]:
    """`coco80`, `voc20` or `vg200/rules`."""
    return json.loads((SPECS_DIR / f"{name}.json").read_text())


def coco80_ids() -> list[int]:
    return [c["source_id"] for c in load_spec("coco80")["categories"]]


def coco80_names() -> list[str]:
    return [c["name"] for c in load_spec("coco80")["categories"]]


def voc20_names() -> list[str]:
    return [c["name"] for c in load_spec("voc20")["categories"]]
