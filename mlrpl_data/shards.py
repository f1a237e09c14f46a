"""WebDataset shards that two labs can build to the same sha256.

DIR/shards/<split>-000000.tar ... are plain uncompressed USTAR tars of samples `<key>.jpg`
(original bytes, or re-encoded with --resize) + `<key>.json` (full labels, size, source,
real format). Samples follow a shuffled order fixed by the manifest fingerprint, so reading
the shards in sequence is already a random order. Member metadata is fixed (mtime 0, uid/gid
0, mode 0444, empty user/group names): the same inputs give the same bytes anywhere, with any
number of workers.

Each shard is written to a temporary name, renamed when complete, and recorded in
shards/.records/<shard>.json (plan hash, sha256). A re-run keeps shards whose record matches
the plan and whose sha256 still matches, and writes only the rest. index.json and SHA256SUMS
are written once every planned shard exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from . import __version__
from .errors import BadInputError, check_interrupt
from .folder import INDEX, SHARDS_DIR, SUMS, DatasetFolder
from .fsutil import atomic_path, atomic_write_bytes, sha256_file
from .images import BadImageError, probe, reencode
from .manifest import Manifest
from .folder import read_manifest
from .options import check_ranges, choices, opt, progress_field
from .progress import progress_bar
from .ownership import MARKER
from .tar import TarWriter
from .ownership import releasing

RECORDS_DIR = ".records"
# index.json's format: 1 is the first (an index without the field was written before it had one and
# is read as 1); a reader refuses a version it does not list here instead of misreading it
FORMAT_VERSION = 1
READS_FORMAT_VERSIONS = (1,)
SAMPLE_OVERHEAD = 3 * 512 + 256  # two headers, padding, the JSON member (for planning by size)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(i?)B?|B?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'512MB' = 512 x 10^6 bytes, '512MiB' = 512 x 2^20, '1.5GB', '200k', '4096' (bytes)."""
    m = _SIZE.match(str(text))
    if not m:
        raise BadInputError(f"--shard-size {text!r}: use e.g. 512MB (10^6 bytes each) or 512MiB (2^20 bytes each)")
    unit, binary = (m.group(2) or "").upper(), bool(m.group(3))
    power = "_KMGT".index(unit) if unit else 0
    size = int(float(m.group(1)) * (1024 if binary else 1000) ** power)
    if size < 1:
        raise BadInputError(f"--shard-size {text!r}: must be at least one byte")
    return size


def parse_part(text: str | None) -> tuple[int, int] | None:
    """--part i/n -> (i, n): part i of n, counted from 1 (1/8 .. 8/8; as one says "part 3 of 8").
    BadInputError for another form; a 0 (a Slurm task ID, which counts from 0) is refused, never shifted."""
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise BadInputError(f"--part {text!r}: use i/n, e.g. 3/8") from None
    if i == 0 and n > 0:
        raise BadInputError(f"--part {text}: parts count from 1 (1/{n} .. {n}/{n}); a Slurm array task ID counts "
                            f"from 0: leave --part out in an array job (SLURM_ARRAY_TASK_ID is read), or pass "
                            f"--part $((SLURM_ARRAY_TASK_ID + 1))/{n}")
    if not 1 <= i <= n:
        raise BadInputError(f"--part {text}: i must be between 1 and n")
    return i, n


def slurm_part(env: dict[str, str]) -> tuple[int, int] | None:
    """The part (i, n), counted from 1, of the Slurm array task running this (`env`: os.environ), or None
    outside an array job. Task IDs count from SLURM_ARRAY_TASK_MIN (often 0) in SLURM_ARRAY_TASK_STEP
    steps, so `--array=0-15` and `--array=1-16` both give parts 1/16 .. 16/16; n is
    SLURM_ARRAY_TASK_COUNT, else (MAX - MIN) / STEP + 1. BadInputError when the variables disagree."""
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    where = ", ".join(f"{k}={env[k]}" for k in sorted(env) if k.startswith("SLURM_ARRAY_TASK_"))
    try:
        task = int(env["SLURM_ARRAY_TASK_ID"])
        lo, step = int(env.get("SLURM_ARRAY_TASK_MIN", "0")), int(env.get("SLURM_ARRAY_TASK_STEP", "1"))
        if "SLURM_ARRAY_TASK_COUNT" in env:
            n = int(env["SLURM_ARRAY_TASK_COUNT"])
        else:
            n = (int(env["SLURM_ARRAY_TASK_MAX"]) - lo) // step + 1
    except (KeyError, ValueError):
        raise BadInputError(f"a Slurm array task ({where}) needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT "
                            f"(or _MAX) as integers to choose its part: pass --part i/n") from None
    i = (task - lo) // step + 1 if step > 0 else 0
    if not (1 <= i <= n and (task - lo) % step == 0):
        raise BadInputError(f"a Slurm array task ({where}): task {task} is not one of {n} tasks from {lo} in steps "
                            f"of {step}; pass --part i/n")
    return i, n


ShardSplit = choices("ShardSplit", "train test all", __name__)
OnBadImage = choices("OnBadImage", "fail skip", __name__)


@dataclass
class ShardConfig:
    root: Path | None = field(default=None, metadata=opt(
        "The raw release's root, which the manifest's image paths are relative to (default: the one it was built "
        "from on this machine)"))
    split: ShardSplit = field(default=ShardSplit.all, metadata=opt("Which split(s) to write"))
    shard_size: int | None = field(default=512 * 10**6, metadata=opt(
        "Target shard size, planned from the source file sizes: 512MB = 512,000,000 bytes, 512MiB = 512 x 2^20",
        parse=lambda t: parse_size(t), show=lambda v: f"{v // 10**6}MB" if v else ""))
    max_samples: int | None = field(default=None, metadata=opt("Samples per shard instead of --shard-size", min=1))
    workers: int = field(default=1, metadata=opt("Processes writing shards in parallel (same bytes for any number)",
                                                 min=1))
    resize: int | None = field(default=None, metadata=opt(
        "Re-encode as RGB JPEG with the shorter side shrunk to this (never enlarged)", min=1))
    quality: int = field(default=95, metadata=opt("JPEG quality of --resize", min=1, max=100))
    on_bad_image: OnBadImage = field(default=OnBadImage.fail, metadata=opt(
        "A corrupt image stops the build naming the file, or is left out and listed in index.json"))
    part: tuple[int, int] | None = field(default=None, metadata=opt(
        "i/n: write only part i of n, counted from 1 (1/8 .. 8/8): every n-th shard from the i-th; the index is "
        "written by the part that completes the set. Left out in a Slurm array job, the task's part is read from "
        "SLURM_ARRAY_TASK_ID (which counts from 0) and SLURM_ARRAY_TASK_COUNT; --part 1/1 writes every shard there",
        parse=lambda t: parse_part(t),
        show=lambda v: f"{v[0]}/{v[1]}" if v else ""))
    progress: bool = progress_field()

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class ShardPlan:
    name: str
    split: str
    rows: list[int]
    plan_hash: str = ""


@dataclass
class ShardJob:
    """Everything a worker needs to write one shard (picklable, no manifest)."""

    out_dir: str
    name: str
    plan_hash: str
    fingerprint: str
    root: str
    samples: list[dict[str, Any]] = field(default_factory=list)  # key, path, labels, source size
    resize: int | None = None
    quality: int = 95
    on_bad_image: str = "fail"


def member_name(key: str, ext: str) -> str:
    """The tar member of one sample's file: `<key>.<ext>` (ext "jpg" or "json"), WebDataset's grammar."""
    return f"{key}.{ext}"


def split_member(name: str) -> tuple[str, str] | None:
    """A tar member's (key, extension), split at the FIRST dot as WebDataset does (keys hold no dot:
    assemble.file_key); None for a name without a dot, which is no sample's file. The inverse of
    member_name: split_member("coco2014_train_000000000009.json") == ("coco2014_train_000000000009", "json")."""
    if "." not in name:
        return None
    key, ext = name.split(".", 1)
    return key, ext


def sample_order(keys: Iterable[str], fingerprint: str) -> np.ndarray:
    """A shuffled order fixed by the manifest: sort by sha256(fingerprint:key)."""
    digests = [hashlib.sha256(f"{fingerprint}:{k}".encode()).digest()[:8] for k in keys]
    return np.argsort(np.frombuffer(b"".join(digests), dtype=">u8"), kind="stable") if digests else np.array([], int)


def _source_sizes(m: Manifest, rows: np.ndarray) -> np.ndarray:
    root = Path(m.root)
    sizes = np.zeros(len(rows), dtype=np.int64)
    for i, r in enumerate(rows):
        try:
            sizes[i] = os.stat(root / m.images["path"].iat[r]).st_size
        except FileNotFoundError:
            sizes[i] = 0  # reported when the shard is written
    return sizes


def plan_shards(m: Manifest, cfg: ShardConfig) -> list[ShardPlan]:
    """Deterministic shard plan: which rows go in which shard, in which order."""
    if not cfg.max_samples and not cfg.shard_size:
        raise BadInputError("give --shard-size or --max-samples")
    plans = []
    fp, keys = m.fingerprint, m.keys
    for split in (("train", "test") if cfg.split == "all" else (cfg.split,)):
        rows = m.split_rows(split)
        if len(rows) == 0:
            continue
        rows = rows[sample_order(keys[rows], fp)]
        if cfg.max_samples:
            bounds = list(range(0, len(rows), cfg.max_samples)) + [len(rows)]
        else:
            sizes = _source_sizes(m, rows) + SAMPLE_OVERHEAD
            bounds, acc = [0], 0
            for i, s in enumerate(sizes):
                if acc and acc + s > cfg.shard_size:
                    bounds.append(i)
                    acc = 0
                acc += int(s)
            bounds.append(len(rows))
        for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
            plans.append(ShardPlan(name=f"{split}-{k:06d}.tar", split=split, rows=[int(r) for r in rows[a:b]]))
    if not plans:
        raise BadInputError(f"{m.name}: split {cfg.split} has no images")
    opts = {"resize": cfg.resize, "quality": cfg.quality if cfg.resize else None, "on_bad_image": cfg.on_bad_image}
    for p in plans:
        blob = json.dumps({"fingerprint": fp, "name": p.name, "keys": [keys[r] for r in p.rows], **opts})
        p.plan_hash = hashlib.sha256(blob.encode()).hexdigest()
    return plans


def sample_json(key: str, labels: list[int], width: int, height: int, source: str, fmt: str, reencoded: bool) -> bytes:
    doc = {"key": key, "labels": labels, "width": width, "height": height, "source": source,
           "format": fmt, "reencoded": reencoded}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _sample_bytes(s: dict[str, Any], job: ShardJob) -> tuple[bytes, bytes, tuple[int, int]]:
    """(image member, json member, the file's own stored size)."""
    path = Path(job.root) / s["path"]
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadImageError(f"{path}: cannot read ({e.strerror})") from None
    fmt, w, h = probe(data, str(path))
    stored = (w, h)
    if job.resize:
        data, w, h, fmt = reencode(data, str(path), job.resize, job.quality)
    return data, sample_json(s["key"], s["labels"], w, h, s["path"], fmt, bool(job.resize)), stored


def write_shard(job: ShardJob) -> dict[str, Any]:
    """Write one shard atomically; returns its record (sha256, samples, keys, skipped).

    No fsync: a shard is trusted on resume only if its sha256 still matches its record.
    """
    out_dir = Path(job.out_dir)
    skipped, differs, keys, tar = [], [], [], None
    try:
        with atomic_path(out_dir / job.name) as tmp, open(tmp, "wb", buffering=1 << 20) as f:
            tar = TarWriter(f)
            for s in job.samples:
                try:
                    data, meta, stored = _sample_bytes(s, job)
                except BadImageError as e:
                    if job.on_bad_image == "fail":
                        raise
                    skipped.append({"key": s["key"], "split": job.name.split("-")[0], "path": s["path"], "reason": str(e)})
                    continue
                if "size" in s and list(stored) != s["size"]:  # the annotations' size is not the file's: say so
                    differs.append({"key": s["key"], "path": s["path"], "manifest": s["size"], "file": list(stored)})
                tar.add(member_name(s["key"], "jpg"), data)  # members sorted within a sample: .jpg < .json
                tar.add(member_name(s["key"], "json"), meta)
                keys.append(s["key"])
            tar.close()
    except BaseException:
        if tar is not None and tar._t.is_alive():
            tar.abort()
        raise
    record = {"name": job.name, "split": job.name.split("-")[0], "samples": len(keys), "bytes": tar.n,
              "sha256": tar.h.hexdigest(), "first_key": keys[0] if keys else None, "last_key": keys[-1] if keys else None,
              "fingerprint": job.fingerprint, "plan_hash": job.plan_hash, "resize": job.resize, "skipped": skipped,
              "size_differs": differs}
    atomic_write_bytes(out_dir / RECORDS_DIR / f"{job.name}.json", json.dumps(record, indent=1).encode(), fsync=False)
    return record


def _job(m: Manifest, keys: np.ndarray, paths: np.ndarray, fingerprint: str, plan: ShardPlan, out_dir: Path,
         cfg: ShardConfig) -> ShardJob:
    widths, heights = m.images["width"].to_numpy(), m.images["height"].to_numpy()
    return ShardJob(out_dir=str(out_dir), name=plan.name, plan_hash=plan.plan_hash, fingerprint=fingerprint,
                    root=m.root, resize=cfg.resize, quality=cfg.quality, on_bad_image=cfg.on_bad_image,
                    samples=[{"key": keys[r], "path": paths[r], "labels": m.labels[r].tolist(),
                              "size": [int(widths[r]), int(heights[r])]} for r in plan.rows])


def _matching_record(out_dir: Path, plan: ShardPlan, check_bytes: bool = True) -> dict[str, Any] | None:
    """The shard's record when the tar on disk is the one this plan writes: same plan hash, and (with
    `check_bytes`) the recorded size and sha256 still match the file."""
    rec_path, tar = out_dir / RECORDS_DIR / f"{plan.name}.json", out_dir / plan.name
    if not (rec_path.exists() and tar.exists()):
        return None
    try:
        rec = json.loads(rec_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(rec, dict) or rec.get("plan_hash") != plan.plan_hash:
        return None
    if check_bytes and (tar.stat().st_size != rec.get("bytes") or sha256_file(tar) != rec.get("sha256")):
        return None
    return rec


@dataclass
class ShardResult:
    written: list[str]
    kept: list[str]
    complete: bool
    index: dict[str, Any] | None


@releasing
def write_shards(dataset_dir: Path, cfg: ShardConfig) -> ShardResult:
    """Plan, then write the shards that are not already there (in parallel with cfg.workers)."""
    from .ownership import claim, mark, sweep_stale

    m = read_manifest(dataset_dir)
    if cfg.root is not None:
        m.root = str(Path(cfg.root).resolve())
    if not m.root:
        raise BadInputError(f"{dataset_dir}: no raw root is known on this machine (a pulled dataset?): pass --root "
                            f"with the folder the manifest's image paths are relative to")
    out_dir = Path(dataset_dir) / SHARDS_DIR
    if (out_dir / RECORDS_DIR).is_dir() and not (out_dir / MARKER).exists():
        mark(out_dir, "shards")  # made by an mlrpl from before the markers: its .records say so
    claim(out_dir, "shards", "dataset folder (its shards/ is not mlrpl's)")
    (out_dir / RECORDS_DIR).mkdir(parents=True, exist_ok=True)
    sweep_stale(out_dir)
    sweep_stale(out_dir / RECORDS_DIR)
    plans = plan_shards(m, cfg)
    mine = plans if cfg.part is None else [p for k, p in enumerate(plans) if k % cfg.part[1] == cfg.part[0] - 1]
    kept, todo = [], []
    for p in mine:
        (kept if _matching_record(out_dir, p) else todo).append(p)
    keys, paths, fingerprint = m.keys, m.images["path"].to_numpy(), m.fingerprint
    jobs = (_job(m, keys, paths, fingerprint, p, out_dir, cfg) for p in todo)
    written = _write_all(jobs, len(todo), sum(len(p.rows) for p in todo), out_dir, cfg)
    complete = all(_matching_record(out_dir, p, check_bytes=False) for p in plans)
    index = assemble_index(m, out_dir, plans) if complete else None
    if complete:
        DatasetFolder(dataset_dir).refresh()
    return ShardResult(written=sorted(written), kept=[p.name for p in kept], complete=complete, index=index)


def _write_all(jobs: Iterable[ShardJob], shards: int, samples: int, out_dir: Path, cfg: ShardConfig) -> list[str]:
    """Write `shards` shards (`samples` samples in all, for the progress bar), in cfg.workers processes
    when there is more than one shard; returns the names written, in the order they finished."""
    from .ownership import sweep_stale

    bar = progress_bar(samples, "write-shards", "img", cfg.progress)
    written = []
    try:
        if cfg.workers <= 1 or shards <= 1:
            for job in jobs:
                check_interrupt()
                rec = write_shard(job)
                written.append(rec["name"])
                bar.update(len(job.samples))
        else:
            import multiprocessing as mp

            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            try:
                with ctx.Pool(cfg.workers) as pool:
                    for rec in pool.imap_unordered(write_shard, jobs):
                        check_interrupt()
                        written.append(rec["name"])
                        bar.update(rec["samples"] + len(rec["skipped"]))
            except BaseException:  # the pool is terminated: its workers' half-written shards go now, not next run
                sweep_stale(out_dir)
                sweep_stale(out_dir / RECORDS_DIR)
                raise
    finally:
        bar.close()
    return written


def assemble_index(m: Manifest, out_dir: Path, plans: list[ShardPlan]) -> dict[str, Any]:
    """index.json + SHA256SUMS over the planned shards and any other split's current shards."""
    planned = {p.name for p in plans}
    splits = {p.split for p in plans}
    # shards mlrpl wrote (they have a record) for these splits that the plan no longer has (an earlier,
    # larger plan) go; a .tar without a record is not mlrpl's: it stays, and stays out of the index
    for tar in out_dir.glob("*.tar"):
        rec = out_dir / RECORDS_DIR / f"{tar.name}.json"
        if tar.name.split("-")[0] in splits and tar.name not in planned and rec.exists():
            tar.unlink()
            rec.unlink()
    records, fp = [], m.fingerprint
    for rec_path in sorted((out_dir / RECORDS_DIR).glob("*.tar.json")):
        try:
            rec = json.loads(rec_path.read_text())
        except ValueError:
            continue  # a damaged record: its shard is rewritten by the next write-shards
        if isinstance(rec, dict) and rec.get("fingerprint") == fp and (out_dir / str(rec.get("name"))).exists():
            records.append(rec)
    records.sort(key=lambda r: r["name"])
    from PIL import __version__ as pil_version

    index = {
        "format_version": FORMAT_VERSION,
        "dataset": m.name,
        "fingerprint": fp,
        "mlrpl_version": __version__,
        "pillow_version": pil_version,
        "splits": {s: sum(r["samples"] for r in records if r["split"] == s) for s in sorted({r["split"] for r in records})},
        "shards": [{k: r[k] for k in ("name", "split", "samples", "bytes", "sha256", "first_key", "last_key",
                                      "fingerprint", "resize")} for r in records],
        "skipped": [s for r in records for s in r["skipped"]],
        # images whose stored size is not the one the annotations give (the manifest keeps theirs, the
        # sample's JSON the file's): never silently one or the other
        "size_differs": [s for r in records for s in r.get("size_differs", [])],
    }
    atomic_write_bytes(out_dir / SUMS, "".join(f"{r['sha256']}  {r['name']}\n" for r in records).encode())
    atomic_write_bytes(out_dir / INDEX, (json.dumps(index, indent=1) + "\n").encode())
    return index


SHARD_NAME = re.compile(r"^(train|test)-\d{6}\.tar$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
INDEX_FIELDS = {"fingerprint": str, "splits": dict, "shards": list, "skipped": list}
SHARD_FIELDS = {"name": str, "split": str, "samples": int, "bytes": int, "sha256": str}


def read_index(url: str) -> dict[str, Any]:
    """shards/index.json, checked: every shard entry well formed (a name mlrpl writes, its split,
    counts, sha256), no name twice, and the split totals equal the sum of their shards."""
    from .readers import MissingFileError, read_json

    where = f"{str(url).rstrip('/')}/{SHARDS_DIR}/{INDEX}"
    try:
        index = read_json(where)  # its fields are check_index's, after its format version
    except MissingFileError:
        raise BadInputError(f"{where}: no shard index (run `mlrpl write-shards` to completion)") from None
    return check_index(index, where)


def check_index(index: Any, where: str) -> dict[str, Any]:
    """An index document's format version, entries and totals checked (see read_index); `where` names
    the file in the errors (BadInputError, one line)."""
    from .readers import check_fields

    check_format_version(index, where)
    check_fields(index, INDEX_FIELDS, where)
    names = set()
    for k, s in enumerate(index["shards"]):
        check_fields(s, SHARD_FIELDS, f"{where}: shard {k}")
        m = SHARD_NAME.match(s["name"])
        if not m or m.group(1) != s["split"]:
            raise BadInputError(f"{where}: shard {k} is named {s['name']!r} with split {s['split']!r}: not a shard "
                                f"mlrpl writes (<split>-NNNNNN.tar); rebuild the index with mlrpl write-shards")
        if s["samples"] < 0 or s["bytes"] < 1024 or s["bytes"] % 512 or not SHA256.match(s["sha256"]):
            raise BadInputError(f"{where}: shard {s['name']} has impossible samples, bytes or sha256")
        if s["name"] in names:
            raise BadInputError(f"{where}: shard {s['name']} is listed twice")
        names.add(s["name"])
    totals = {sp: sum(s["samples"] for s in index["shards"] if s["split"] == sp) for sp in index["splits"]}
    if any(not isinstance(v, int) or v != totals.get(sp) for sp, v in index["splits"].items()):
        raise BadInputError(f"{where}: split totals {index['splits']} differ from the sum of their shards {totals}")
    return index


def check_format_version(index: Any, where: str) -> int:
    """The index's `format_version` (an index without one predates the field: 1). A version this mlrpl
    does not read raises BadInputError naming `where`, the version found and the versions read."""
    version = index.get("format_version", 1) if isinstance(index, dict) else 1
    if type(version) is not int or version not in READS_FORMAT_VERSIONS:
        reads = ", ".join(str(v) for v in READS_FORMAT_VERSIONS)
        raise BadInputError(f"{where}: shard index format_version {json.dumps(version)[:40]}; this mlrpl {__version__} "
                            f"reads format_version {reads} (written by a newer mlrpl? upgrade mlrpl, or rewrite the "
                            f"shards with this one: mlrpl write-shards)")
    return version


def shard_urls(url: str, split: str, index: dict[str, Any] | None = None) -> list[str]:
    """URLs of the shards of one split (or all), from the index."""
    index = index or read_index(url)
    return [f"{url.rstrip('/')}/{SHARDS_DIR}/{s['name']}" for s in index["shards"] if split in ("all", s["split"])]
