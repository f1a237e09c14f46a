"""The committed dataset specs in `manifests/`: vocabularies, expected counts, archive checksums.

In a checkout they are the repo's top-level manifests/; installed, the same files are package
data of `mlrpl.manifests` (pyproject.toml maps the folder there). Either way they are found
through that package's path, never beside the source by a relative guess.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import MlrplError


@lru_cache(maxsize=1)
def specs_dir() -> Path:
    try:
        import mlrpl.manifests as pkg
    except ImportError:
        raise MlrplError("the mlrpl.manifests package data is missing: reinstall mlrpl") from None
    for p in pkg.__path__:  # a namespace package: its path may also hold an editable-install placeholder
        if (Path(p) / "coco80.json").is_file():
            return Path(p)
    raise MlrplError(f"manifests/coco80.json not found in {list(pkg.__path__)}: reinstall mlrpl")


@lru_cache(maxsize=None)
def load_spec(name: str) -> dict[str, Any]:
    """`coco80`, `voc20` or `vg200/rules`."""
    return json.loads((specs_dir() / f"{name}.json").read_text())


def voc20_names() -> list[str]:
    return [c["name"] for c in load_spec("voc20")["categories"]]
