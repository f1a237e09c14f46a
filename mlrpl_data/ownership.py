"""Nothing is deleted that mlrpl did not create.

A folder mlrpl creates (a dataset, its shards/, a run) holds a marker file naming its kind. An
existing folder without the marker is never written into or deleted, even with --force; with
the marker, --force removes only the entries mlrpl writes there and keeps anything else. An
output equal to or inside an input, or a folder output holding one, is refused (refuse_overlap);
an output file replaces only a file mlrpl wrote (claim_file). Temporary files of a process
that no longer runs (a kill -9, a full disk) are swept the next time the folder is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from .errors import AlreadyExistsError, BadInputError
from .readers import is_remote

MARKER = ".mlrpl-owner.json"
_TEMP = re.compile(r"^\..+\.(?:tmp|building|old)-(\d+)(?:\.[A-Za-z0-9]+)?$")  # with the suffix a writer kept (.pt2)


def _marker_bytes(kind: str) -> bytes:
    return (json.dumps({"kind": kind, "made_by": "mlrpl"}) + "\n").encode()


def mark(folder: Path, kind: str) -> None:
    """Record that mlrpl made `folder` as a `kind` (dataset, shards, run)."""
    from .fsutil import atomic_write_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / MARKER, _marker_bytes(kind), fsync=False)


def _mark_first(folder: Path, kind: str) -> bool:
    """Create the marker only if none is there, whole, in one step (a link fails when the name
    exists): of two commands that found the folder empty, exactly one gets True."""
    from .fsutil import atomic_write_bytes, temp_name

    tmp = temp_name(folder / MARKER)
    atomic_write_bytes(tmp, _marker_bytes(kind), fsync=False)
    try:
        os.link(tmp, folder / MARKER)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


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


_HELD: dict[tuple[int, int], int] = {}  # (device, inode) of a locked marker -> its open descriptor
_MADE: dict[Path, str] = {}  # folders whose claim this process made -> "folder" or "marker"


def claim(folder: Path, kind: str, what: str) -> str | None:
    """Make sure mlrpl may write `folder` as a `kind`: absent or empty (it is then marked), or
    already marked as that kind. Anything else is refused, naming the way out.

    The claim is atomic and held: the marker is created in one step, and the folder stays locked
    (flock on the marker, released when the command ends or its process dies), so of two commands
    started together on one folder the second is refused before it writes or removes anything.
    Returns "folder" or "marker" when this call made the claim (created the folder, or marked an
    empty one), None when the folder was already mlrpl's: only a maker may undo a claim (unclaim)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise AlreadyExistsError(f"{folder}: is a file, not a folder; choose another {what}")
    made, parents = None, []
    if not folder.exists():
        from .fsutil import make_parents

        parents = make_parents(folder)  # the folders above it this call makes, to remove on a failure
        try:
            folder.mkdir()
            made = "folder"
        except FileExistsError:
            pass
    if not (folder / MARKER).exists() and is_empty_but_temporaries(folder):
        try:
            first = _mark_first(folder, kind)
        except BaseException:  # a full disk: the folder this call made goes too (no empty folder left)
            if made == "folder":
                from .fsutil import remove_empty

                remove_empty([folder, *parents])
            raise
        made = (made or "marker") if first else None
    elif made == "folder":
        made = None  # another process filled it between our mkdir and now
    found = owner(folder)
    if found != kind:
        made_by = f"an mlrpl {found}" if found else "not made by mlrpl (no " + MARKER + ")"
        raise AlreadyExistsError(
            f"{folder}: exists, is not empty and is {made_by}: mlrpl will not write into it or delete anything "
            f"in it, even with --force; choose another {what} (or empty the folder yourself)")
    _lock(folder, what)
    if made:
        _MADE[folder.resolve()] = made
    return made


def is_empty_but_temporaries(folder: Path, *also: str) -> bool:
    """Empty, or holding only the temporaries of writes in progress (a marker being made) and `also`."""
    folder = Path(folder)
    return all(_TEMP.match(p.name) or p.name in also for p in folder.iterdir()) if folder.is_dir() else True


def made_here(folder: Path) -> bool:
    """Whether this process made the claim of `folder` (and so may remove it on failure)."""
    return Path(folder).resolve() in _MADE


def unclaim(folder: Path) -> None:
    """Undo a claim this process made, once its own entries are gone: the marker, then the folder
    when it is empty. Does nothing for a claim it did not make."""
    folder = Path(folder)
    if not made_here(folder):
        return
    _release(folder)
    (folder / MARKER).unlink(missing_ok=True)
    if _MADE.pop(folder.resolve()) == "folder" and is_empty(folder):
        folder.rmdir()


def _lock(folder: Path, what: str) -> None:
    import fcntl

    try:
        fd = os.open(folder / MARKER, os.O_RDONLY)
    except FileNotFoundError:  # replaced (a build publishing) since it was read: the next claim locks it
        return
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    if key in _HELD:  # this process holds it already (a sweep's run, a resume in the same process)
        os.close(fd)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        other = "" if what == "--resume" else f", or choose another {what}"  # a resume has only this folder
        raise AlreadyExistsError(f"{folder}: another mlrpl command is writing it now; wait for it to end{other}") from None
    _HELD[key] = fd


def _release(folder: Path) -> None:
    try:
        st = os.stat(Path(folder) / MARKER)
    except OSError:
        return
    fd = _HELD.pop((st.st_dev, st.st_ino), None)
    if fd is not None:
        os.close(fd)


def releasing(fn):
    """The folder locks `fn` takes (claim) are released when it returns or fails."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        held, made = set(_HELD), set(_MADE)
        try:
            return fn(*args, **kwargs)
        finally:
            for key in set(_HELD) - held:
                os.close(_HELD.pop(key))
            for path in set(_MADE) - made:
                del _MADE[path]

    return wrapper


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


def refuse_overlap(out: Path, inputs: dict[str, str | Path | None], flag: str, file: bool = False) -> None:
    """The one overlap rule of every output: an output may not be an input, nor lie inside an input
    folder; a folder output (a command may clean it) may not hold an input either. Paths are compared
    resolved (symlinks, `..`), and an existing output also by inode (a hard link). URLs are skipped."""
    o = Path(out).resolve()
    for name, inp in inputs.items():
        if not inp or is_remote(str(inp)):
            continue
        i = Path(inp).resolve()
        same = o == i or (o.exists() and i.exists() and os.path.samefile(o, i))
        inside = i in o.parents and i.is_dir()
        holds = not file and o in i.parents
        if same or inside or holds:
            relation = "is" if same else ("is inside" if inside else "holds")
            raise BadInputError(f"{flag} {out} {relation} {name} {inp}: writing it would replace or delete an input; "
                                f"an output must be apart from its inputs (choose another {flag})")


def option_inputs(cfg: Any) -> dict[str, Path]:
    """The local paths an options dataclass names (a builder's root, CSV, lists...): a command's inputs."""
    found = {}
    for f in dataclasses.fields(cfg):
        values = getattr(cfg, f.name)
        many = isinstance(values, (tuple, list))
        for k, v in enumerate(values if many else (values,)):
            if isinstance(v, Path) and f.name != "out":
                found[f"--{f.name.replace('_', '-')}" + (f" #{k + 1}" if many else "")] = v
    return found


def claim_file(path: Path, flag: str, ours: Callable[[Path], bool], kind: str) -> None:
    """An output file may replace only a file mlrpl wrote as a `kind` (`ours` says), never a folder,
    a device or someone else's file."""
    p = Path(path)
    if not (p.exists() or p.is_symlink()):
        return
    if p.is_dir():
        raise AlreadyExistsError(f"{flag} {path}: is a folder; give a file name")
    if not p.is_file() or p.is_symlink():
        raise AlreadyExistsError(f"{flag} {path}: exists and is not a regular file; choose another {flag}")
    if not ours(p):
        raise AlreadyExistsError(f"{flag} {path}: exists and is not {kind} mlrpl wrote: mlrpl will not replace it; "
                                 f"choose another {flag} (or remove the file yourself)")


def parquet_kind(path: Path) -> str | None:
    """The kind an mlrpl Parquet output records in its metadata ("predictions", "scores"), else None."""
    try:
        import pyarrow.parquet as pq

        meta = pq.read_schema(str(path)).metadata or {}
    except Exception:  # not Parquet, unreadable: not ours
        return None
    return meta.get(b"mlrpl", b"").decode("utf-8", "replace") or None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(folder: Path, of: str | None = None) -> list[str]:
    """Remove temporary files and staging folders left in `folder` by processes that are gone; with
    `of`, only those of that one file (an output file in a folder mlrpl does not own)."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    mine = (f".{of}.", f".{Path(of).stem}.tmp-") if of else None
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        pid = int(m.group(1)) if m else 0
        if m and (mine is None or p.name.startswith(mine)) and pid != os.getpid() and not _alive(pid):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed
