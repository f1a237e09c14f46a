"""Nothing is deleted that mlrpl did not create.

A folder mlrpl creates (a dataset, its shards/, a run) holds a marker file naming its kind. An
existing folder without the marker is never written into or deleted, even with --force; with
the marker, --force removes only the entries mlrpl writes there and keeps anything else. An
output equal to, inside, or holding an input folder is refused. Temporary files of a process
that no longer runs (a kill -9, a full disk) are swept the next time the folder is written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from .errors import AlreadyExistsError, BadInputError
from .readers import is_remote

MARKER = ".mlrpl-owner.json"
_TEMP = re.compile(r"^\..+\.(?:tmp|building|old)-(\d+)$")


def mark(folder: Path, kind: str) -> None:
    """Record that mlrpl made `folder` as a `kind` (dataset, shards, run)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"kind": kind, "made_by": "mlrpl"}) + "\n")


def owner(folder: Path) -> str | None:
    """The kind mlrpl recorded for `folder`, or None when it did not make it."""
    try:
        doc = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return doc.get("kind") if isinstance(doc, dict) and doc.get("made_by") == "mlrpl" else None


def is_empty(folder: Path) -> bool:
    folder = Path(folder)
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def claim(folder: Path, kind: str, what: str) -> None:
    """Make sure mlrpl may write `folder` as a `kind`: absent or empty (it is then marked), or
    already marked as that kind. Anything else is refused, naming the way out."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise AlreadyExistsError(f"{folder}: is a file, not a folder; choose another {what}")
    if is_empty(folder):
        mark(folder, kind)
        return
    found = owner(folder)
    if found != kind:
        made = f"an mlrpl {found}" if found else "not made by mlrpl (no " + MARKER + ")"
        raise AlreadyExistsError(
            f"{folder}: exists, is not empty and is {made}: mlrpl will not write into it or delete anything "
            f"in it, even with --force; choose another {what} (or empty the folder yourself)")


def remove_owned(folder: Path, entries: tuple[str, ...]) -> list[str]:
    """Delete the `entries` mlrpl writes in a folder it owns; returns the names it kept (not mlrpl's)."""
    folder = Path(folder)
    for name in entries:
        p = folder / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    return sorted(p.name for p in folder.iterdir() if p.name not in entries and p.name != MARKER and not _TEMP.match(p.name))


def refuse_overlap(out: Path, inputs: dict[str, str | Path | None], flag: str) -> None:
    """An output equal to, inside, or holding an input (local folders) would overwrite or delete it."""
    o = Path(out).resolve()
    for name, inp in inputs.items():
        if not inp or is_remote(str(inp)):
            continue
        i = Path(inp).resolve()
        if o == i or i in o.parents or o in i.parents:
            relation = "is" if o == i else ("is inside" if i in o.parents else "holds")
            raise BadInputError(f"{flag} {out} {relation} {name} {inp}: an output must be apart from its inputs")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(folder: Path) -> list[str]:
    """Remove temporary files and staging folders left in `folder` by processes that are gone."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed
