"""Images referenced by annotations but absent on disk: refused, or dropped and recorded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

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


def check_missing(
    frame: pd.DataFrame,
    present: set[str],
    folder: Path,
    allow_missing: bool,
    name_of: Callable[[str], str],
) -> tuple[np.ndarray, list[dict]]:
    """Boolean mask of rows whose file exists, and the records of those that do not."""
    keep = np.fromiter((name_of(p) in present for p in frame["path"]), dtype=bool, count=len(frame))
    if keep.all():
        return keep, []
    gone = frame[~keep]
    records = [{"key": k, "split": s, "path": p} for k, s, p in zip(gone["key"], gone["split"], gone["path"])]
    if not allow_missing:
        refuse_missing(records, folder, "referenced image(s) missing on disk", root=folder.parent)
    return keep, records


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
