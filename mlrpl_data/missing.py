"""Images referenced by annotations but absent on disk: refused, or dropped and recorded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import BadInputError

SHOWN = 5


def listdir_names(folder: Path) -> set[str]:
    """File names in `folder` (one scandir, not one stat per image); empty when absent."""
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it}
    except FileNotFoundError:
        return set()


def drop_missing(rows: pd.DataFrame, labels: np.ndarray, on_disk: np.ndarray, allow_missing: bool, where, what: str,
                 root: Path | None = None, notes: dict[str, Sequence] | None = None,
                 ) -> tuple[pd.DataFrame, np.ndarray, list[dict]]:
    """Every builder's policy for images the annotations name but the disk lacks.

    `rows`: one per image of the annotations (columns key, split, path, ...), `labels` (N, C) in the
    same order, `on_disk` (N,) bool. With every image on disk, returns them unchanged and no record.
    Otherwise refuses (refuse_missing's BadInputError: `where`, the count, the first SHOWN paths, a
    name differing only in case under `root`, the way out) unless `allow_missing`; then returns the
    rows and labels on disk (index reset) and a record {key, split, path, plus `notes`' fields} per
    dropped image in row order, which dataset.json lists under "missing"."""
    on_disk = np.asarray(on_disk, dtype=bool)
    if on_disk.all():
        return rows, labels, []
    records = [{"key": rows["key"].iat[i], "split": rows["split"].iat[i], "path": rows["path"].iat[i],
                **{k: v[i] for k, v in (notes or {}).items()}} for i in np.flatnonzero(~on_disk)]
    if not allow_missing:
        refuse_missing(records, where, what, root=root)
    return rows[on_disk].reset_index(drop=True), labels[on_disk], records


def refuse_missing(records: list[dict], where, what: str, root: Path | None = None) -> None:
    """The one error every builder gives for missing files: how many, the first few, the way out;
    with `root` (what the paths are relative to), a file whose name differs only in case is named."""
    from .rawfiles import near_miss

    shown = ", ".join(r["path"] for r in records[:SHOWN])
    more = f" and {len(records) - SHOWN:,} more" if len(records) > SHOWN else ""
    near = next((f"{r['path']} is not there but {n} is (the name differs in case: rename one to match); "
                 for r in records[:SHOWN] if (n := near_miss(root, r["path"]))), "") if root is not None else ""
    raise BadInputError(f"{where}: {len(records):,} {what}: {shown}{more}; {near}"
                        f"pass --allow-missing to drop them (they are listed in dataset.json)")
