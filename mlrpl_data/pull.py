"""`mlrpl pull URL DIR`: mirror a published dataset, every byte checked.

What is copied comes from the source's files.json (the manifest, the masks, the card, the
index) and shards/index.json (the shards), each with its size and sha256. Every file is written
under a temporary name, checked, then renamed; a file already in DIR with the right size and
sha256 is kept, so a killed pull resumes. dataset.json is removed first when anything is to
change and written last: a half-pulled folder reads as incomplete. A transfer that fails or
arrives altered is fetched again (a bounded number of times, with backoff); a file the source
lacks (404) stops the pull naming it, and what was already fetched stays for the next run.
A whole copy keeps the source's README.md, masks/README.md and files.json byte for byte; a subset
(--no-shards, --split, --masks) fetches neither card and gets its own cards and files.json
(DatasetFolder.refresh), declaring only what it holds.
"""

from __future__ import annotations

import hashlib
import re
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from . import retry
from .errors import BadInputError, MlrplError
from .fsutil import CHUNK, atomic_path, atomic_write_bytes, sha256_file
from .folder import CARD, DATASET_ENTRIES, DATASET_JSON, DERIVED_ENTRIES, FILES, INDEX, MASKS_CARD, SHARDS_DIR, DatasetFolder
from .options import check_ranges, opt, progress_field
from .progress import progress_bar
from .readers import MissingFileError, file_size, join, open_binary, read_bytes
from .shards import ShardSplit
from .ownership import releasing
from .timeouts import describe

_SHA = re.compile(r"^[0-9a-f]{64}$")


class PullError(MlrplError):
    """A file that could not be fetched whole (names its URL)."""


@dataclass
class PullConfig:
    jobs: int = field(default=4, metadata=opt("Files downloaded in parallel", min=1, max=64))
    split: ShardSplit = field(default=ShardSplit.all, metadata=opt("Whose shards to copy"))
    masks: str | None = field(default=None, metadata=opt(
        "Comma-separated mask names to copy (default: all; '' for none)"))
    shards: bool = field(default=True, metadata=opt("Copy the shards (--no-shards: the manifest and masks only)",
                                                    flags="--shards/--no-shards"))
    progress: bool = progress_field("Progress bar in bytes")

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class Wanted:
    path: str  # relative, with "/"
    bytes: int
    sha256: str


@dataclass
class PullResult:
    fetched: list[str]
    kept: list[str]
    bytes_fetched: int


@releasing
def pull(url: str, out: Path, cfg: PullConfig) -> PullResult:
    from .ownership import MARKER, claim, mark, refuse_overlap, sweep_stale

    url, out = str(url).rstrip("/"), Path(out)
    refuse_overlap(out, {"URL": url}, "DIR")
    listing_bytes = read_bytes(join(url, FILES), 64 * 2**20)
    files = _check_listing(listing_bytes, join(url, FILES))
    plan = _select(files, cfg)
    # a subset (some masks, no shards, one split) gets cards and a listing of what it holds, written here:
    # the source's would declare files it lacks (datasets: DataFilesNotFoundError)
    subset = len(plan) < len(files) or (cfg.shards and cfg.split != "all")
    if subset:
        plan = [w for w in plan if w.path not in (CARD, MASKS_CARD)]
    index_entry = next((w for w in plan if w.path == f"{SHARDS_DIR}/{INDEX}"), None)
    if cfg.shards and index_entry is None:
        raise BadInputError(f"{join(url, FILES)}: lists no {SHARDS_DIR}/{INDEX}: the source has no shards yet "
                            f"(pull it with --no-shards)")
    if cfg.shards:
        plan += _shards(url, index_entry, cfg.split)
    card = next(w for w in plan if w.path == DATASET_JSON)
    if (out / DATASET_JSON).is_file() and not _matches(out / DATASET_JSON, card):
        raise BadInputError(f"{out}: holds another dataset (or another version of this one): its dataset.json differs "
                            f"from {join(url, DATASET_JSON)}; pull into an empty folder")
    claim(out, "dataset", "DIR")
    sweep_stale(out)
    if cfg.shards:
        (out / SHARDS_DIR).mkdir(exist_ok=True)
        sweep_stale(out / SHARDS_DIR)
        if not (out / SHARDS_DIR / MARKER).exists():
            mark(out / SHARDS_DIR, "shards")

    todo = [w for w in plan if not _matches(out / w.path, w)]
    if todo or not subset and (not (out / FILES).is_file() or (out / FILES).read_bytes() != listing_bytes):
        (out / DATASET_JSON).unlink(missing_ok=True)  # from here on the folder reads as incomplete ...
        if card not in todo:
            todo.append(card)  # ... until dataset.json is written again, last
    kept = [w.path for w in plan if w not in todo]
    # the index and SHA256SUMS after the shards they describe, dataset.json after everything
    last = {f"{SHARDS_DIR}/{INDEX}": 1, f"{SHARDS_DIR}/SHA256SUMS": 1, DATASET_JSON: 2}
    bar = progress_bar(sum(w.bytes for w in todo), "pull", "B", cfg.progress, unit_scale=True)
    with bar:
        for stage in (0, 1, 2):
            _fetch_all(url, out, [w for w in todo if last.get(w.path, 0) == stage], cfg.jobs, bar)
            if stage == 1 and not subset:
                atomic_write_bytes(out / FILES, listing_bytes)
    if subset:
        DatasetFolder(out).refresh()  # after dataset.json: the cards and files.json of this copy
    return PullResult(fetched=[w.path for w in todo], kept=kept, bytes_fetched=sum(w.bytes for w in todo))


def _check_listing(data: bytes, where: str) -> list[Wanted]:
    from .jsonio import parse_json
    from .readers import check_fields

    doc = parse_json(data, where)
    check_fields(doc, {"files": list}, where)
    files = []
    for i, f in enumerate(doc["files"]):
        check_fields(f, {"path": str, "bytes": int, "sha256": str}, f"{where}: entry {i}")
        files.append(_wanted(f["path"], f["bytes"], f["sha256"], where))
    if DATASET_JSON not in {f.path for f in files}:
        raise BadInputError(f"{where}: does not list {DATASET_JSON}: not a dataset mlrpl published")
    return files


def _wanted(path: str, size: int, sha: str, where: str) -> Wanted:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or "\\" in path or not path or path.startswith("."):
        raise BadInputError(f"{where}: refuses the path {path!r} (only plain relative paths inside the dataset)")
    top = p.parts[0]
    if top not in DATASET_ENTRIES + DERIVED_ENTRIES:
        raise BadInputError(f"{where}: {path!r} is not a file an mlrpl dataset holds")
    if size < 0 or not _SHA.match(sha):
        raise BadInputError(f"{where}: {path!r}: bad size or sha256")
    return Wanted(path, size, sha)


def _select(files: list[Wanted], cfg: PullConfig) -> list[Wanted]:
    names = None if cfg.masks is None else {n.strip() for n in cfg.masks.split(",") if n.strip()}
    if names:
        have = {PurePosixPath(w.path).stem for w in files if w.path.startswith("masks/") and w.path != MASKS_CARD}
        unknown = sorted(names - have)
        if unknown:
            raise BadInputError(f"--masks: the source has no mask {', '.join(unknown)} (it has {', '.join(sorted(have)) or 'none'})")
    chosen = []
    for w in files:
        if (w.path.startswith("masks/") and w.path != MASKS_CARD and names is not None
                and PurePosixPath(w.path).stem not in names):
            continue
        if w.path.startswith(f"{SHARDS_DIR}/") and not cfg.shards:
            continue
        chosen.append(w)
    return chosen


def _shards(url: str, index_entry: Wanted, split: str) -> list[Wanted]:
    from .jsonio import parse_json
    from .shards import check_index

    where = join(url, SHARDS_DIR, INDEX)
    try:
        data = retry.with_retries(lambda: _checked(read_bytes(where, 64 * 2**20), index_entry, where))
    except MlrplError:
        raise
    except Exception as e:
        raise _not_whole(where, e) from None
    index = check_index(parse_json(data, where), where)
    return [_wanted(f"{SHARDS_DIR}/{s['name']}", s["bytes"], s["sha256"], where)
            for s in index["shards"] if split in ("all", s["split"])]


def _checked(data: bytes, w: Wanted, where: str) -> bytes:
    got = hashlib.sha256(data).hexdigest()
    if len(data) != w.bytes or got != w.sha256:
        raise retry.Corrupted(f"{where}: arrived with {len(data):,} bytes / sha256 {got[:12]}…, "
                              f"the listing says {w.bytes:,} / {w.sha256[:12]}…")
    return data


def _matches(path: Path, w: Wanted) -> bool:
    return path.is_file() and path.stat().st_size == w.bytes and sha256_file(path) == w.sha256


def _fetch_all(url: str, out: Path, todo: list[Wanted], jobs: int, bar) -> None:
    if not todo:
        return
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=min(jobs, len(todo))) as pool:
        futures = [pool.submit(_fetch, join(url, *w.path.split("/")), out / w.path, w, bar, stop) for w in todo]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f.done() and f.exception() is not None]
            if failed:
                raise failed[0].exception()
        except BaseException:  # a failed file, Ctrl-C or SIGTERM: the other transfers stop and remove their temporaries
            stop.set()
            for f in futures:
                f.cancel()
            wait(futures)
            raise


def _fetch(src: str, dest: Path, w: Wanted, bar, stop: threading.Event) -> None:
    """One file: streamed to a temporary name, checked against its size and sha256, renamed."""
    if stop.is_set():
        return
    # the folder is made here, not by atomic_path: a failed file must not remove it under a parallel transfer
    dest.parent.mkdir(parents=True, exist_ok=True)
    counted = [0]

    def once(tmp: Path) -> None:
        if stop.is_set():  # stopped while waiting to retry
            raise PullError(f"{src}: stopped (another file failed, or the pull was interrupted)")
        bar.update(-counted[0])  # a retry counts its bytes again
        counted[0] = 0
        h = hashlib.sha256()
        try:
            file_size(src)  # a regular file or object: never a device, never unbounded
            with open_binary(src) as f, open(tmp, "wb") as t:
                while chunk := f.read(CHUNK):
                    if stop.is_set():
                        raise PullError(f"{src}: stopped (another file failed, or the pull was interrupted)")
                    if counted[0] + len(chunk) > w.bytes:
                        raise retry.Corrupted(f"{src}: more than the {w.bytes:,} bytes the listing says")
                    h.update(chunk)
                    t.write(chunk)
                    counted[0] += len(chunk)
                    bar.update(len(chunk))
        except FileNotFoundError:
            raise MissingFileError(f"{src}: not found, though the source lists it: the source is incomplete") from None
        if counted[0] != w.bytes or h.hexdigest() != w.sha256:
            raise retry.Corrupted(f"{src}: arrived with {counted[0]:,} bytes / sha256 {h.hexdigest()[:12]}…, the listing "
                                  f"says {w.bytes:,} / {w.sha256[:12]}…")

    try:
        with atomic_path(dest) as tmp:
            retry.with_retries(lambda: once(tmp))
    except MlrplError:
        raise
    except Exception as e:
        raise _not_whole(src, e) from None


def _not_whole(src: str, e: Exception) -> PullError:
    """One line for a file that did not arrive whole: altered in transit (its sha256 or size differ
    from the listing's) or unreadable, and after how many tries."""
    what = f"altered in transit: {e}" if isinstance(e, retry.Corrupted) else describe(e)
    tries = f" after {retry.attempts()} tries" if retry.is_transient(e) else ""  # else it was tried once
    return PullError(f"{src}: could not be fetched whole{tries} ({what}); re-run mlrpl pull to resume")


def summary(r: PullResult) -> dict[str, Any]:
    return {"fetched": len(r.fetched), "kept": len(r.kept), "bytes_fetched": r.bytes_fetched}
