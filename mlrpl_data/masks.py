"""Partial-label masks: which (image, class) labels are known, per scheme, proportion and seed.

A mask file DIR/masks/<scheme>-p0.30-s0.parquet holds `key` and `labels` (list<int8> in
{-1, 0, 1}: the full label where known, 0 where unknown) for the images of one split, with
a JSON sidecar (manifest fingerprint, scheme, seed, proportion, content hash, stats).

Schemes:
- uniform: entry known iff u(seed, key, class) < p, u a counter-based hash in [0, 1). A pure
  function of (seed, key, class): other images never change an image's mask, and for one
  seed the known sets are nested across p.
- hcp: bit-identical to the published HCP-MLR-PL code: np.random.seed(seed);
  np.random.random((N, C)) < p over the manifest's (reference) image order.
- per-image: exactly max(1, round(p*C)) known entries per image (the smallest u), nested.
- single-positive: one known positive per image (the one with the smallest u), all else
  unknown; an image with no positive is fully unknown (Cole et al. 2021).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .errors import AlreadyExistsError, BadInputError
from .folder import MASKS_DIR, DatasetFolder
from .fsutil import atomic_write_bytes
from .manifest import Manifest, check_fingerprint, labels_from_arrow, labels_to_arrow
from .folder import read_manifest
from .options import check_ranges, choices, opt
from .ownership import sweep_stale
from .readers import MissingFileError, read_parquet

Scheme = choices("Scheme", "uniform hcp per-image single-positive", __name__)
MaskSplit = choices("MaskSplit", "train test all", __name__)


SCHEMES = tuple(s.value for s in Scheme)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


MAX_PROPORTIONS = 1000  # masks one --proportion may ask for (a 0.001 step over (0, 1])
DECIMALS = 6  # a mask name spells the proportion exactly, to this many decimals


def parse_proportions(text: str) -> list[float]:
    """'0.3', '0.1,0.5,0.9' or 'start:stop:step' (stop included) -> proportions in (0, 1], each with at
    most 6 decimals (so its name, e.g. p0.000001, is its value), at most MAX_PROPORTIONS of them."""
    text = text.strip()
    usage = f"--proportion {text!r}: use 0.3, 0.1,0.5,0.9 or 0.1:0.9:0.1"
    try:
        if ":" in text:
            start, stop, step = (_exact(x) for x in text.split(":"))
            if step <= 0:
                raise ValueError
            n = math.floor((stop - start) / step + 1e-9) + 1
            if n < 1:
                raise BadInputError(f"--proportion {text!r}: the start is above the stop")
            if n > MAX_PROPORTIONS:  # counted before any value is made
                raise BadInputError(f"--proportion {text!r}: {n:,} proportions; at most {MAX_PROPORTIONS:,} masks at "
                                    f"once (use a larger step)")
            values = [round(start + i * step, DECIMALS) for i in range(n)]
        else:
            values = [_exact(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadInputError(usage) from None
    if len(values) > MAX_PROPORTIONS:
        raise BadInputError(f"--proportion: {len(values):,} proportions; at most {MAX_PROPORTIONS:,} masks at once")
    for p in values:
        if not 0 < p <= 1:
            raise BadInputError(f"--proportion {p:g}: a proportion of known labels must be in (0, 1]")
    if not values:
        raise BadInputError("--proportion: no value given")
    seen: set[str] = set()
    for name in map(proportion_text, values):  # linear: a set, not a count per value
        if name in seen:
            raise BadInputError(f"--proportion {text!r}: {name} is given twice")
        seen.add(name)
    return values


def _exact(text: str) -> float:
    """A finite number with at most DECIMALS decimals (1e-12 would be named p0.00: refused, not rounded)."""
    v = float(text)
    if not math.isfinite(v):
        raise ValueError
    if round(v, DECIMALS) != v:
        raise BadInputError(f"--proportion {text.strip()}: at most {DECIMALS} decimals (a mask's name spells its "
                            f"proportion: p0.000001 is the finest)")
    return v


def proportion_text(p: float) -> str:
    """0.3 -> '0.30', 0.304 -> '0.304': two decimals at least, as many as the value needs (up to 6),
    so two proportions never share a mask name."""
    text = f"{p:.{DECIMALS}f}".rstrip("0")
    if float(text) != p:  # a value parse_proportions would refuse (a library caller's): never a false name
        raise BadInputError(f"proportion {p!r}: at most {DECIMALS} decimals, so that its mask name says its value")
    return text if len(text.split(".")[1]) >= 2 else f"{p:.2f}"


def mask_name(scheme: str, proportion: float | None, seed: int, split: str = "train") -> str:
    """The one writer of the grammar `<scheme>-p<proportion>-s<seed>[-test|-all]`: uniform-p0.30-s0; a
    mask of another split than train says so: uniform-p0.30-s0-test; single-positive (no proportion)
    is single-positive-s0. parse_mask_name reads it back."""
    base = f"{scheme}-s{seed}" if scheme == "single-positive" else f"{scheme}-p{proportion_text(proportion)}-s{seed}"
    return base if split == "train" else f"{base}-{split}"


MASK_NAME = re.compile(r"^(?P<scheme>[a-z][a-z0-9-]*?)(-p(?P<p>\d\.\d+))?-s(?P<seed>\d+)(-(?P<split>test|all))?$")


def parse_mask_name(name: str) -> dict[str, Any] | None:
    """The one reader of mask_name's grammar: {"scheme", "proportion" (the name's spelling as a float, or
    None), "seed", "split"}, or None when `name` is not such a name. The proportion a mask was made
    with is its sidecar's ("proportion"): read it there (DatasetFolder.mask_sidecar) when the mask is
    at hand; the name's is for names without a mask (a sweep's run folders)."""
    m = MASK_NAME.match(name)
    if not m:
        return None
    return {"scheme": m["scheme"], "proportion": float(m["p"]) if m["p"] else None, "seed": int(m["seed"]),
            "split": m["split"] or "train"}


def mask_proportion(dataset: "str | Path | DatasetFolder", name: str) -> float | None:
    """The known proportion of mask `name`: its sidecar's in `dataset` (the value it was made with);
    the name's (parse_mask_name) only when no sidecar can be read (a dataset moved or copied without its
    masks); None for a scheme without one (single-positive) or a name that is not a mask's."""
    try:
        return DatasetFolder.of(dataset).mask_sidecar(name).get("proportion")
    except BadInputError:
        parsed = parse_mask_name(name)
        return parsed["proportion"] if parsed else None


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised (uint64 arithmetic wraps, as it should)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def entry_hashes(keys, num_classes: int, seed: int) -> np.ndarray:
    """(N, C) uint64: a uniform hash of (seed, key, class), independent of the other keys."""
    key_h = np.fromiter(
        (int.from_bytes(hashlib.blake2b(f"{seed}\x00{k}".encode(), digest_size=8).digest(), "little") for k in keys),
        dtype=np.uint64,
        count=len(keys),
    )
    with np.errstate(over="ignore"):
        cls = _splitmix64(np.arange(num_classes, dtype=np.uint64))
        return _splitmix64(key_h[:, None] ^ cls[None, :])


def _threshold(p: float) -> np.uint64:
    """Entries with hash < threshold are known: P = p (to 2^-64); p = 1 knows everything."""
    return np.uint64(min(int(p * 2.0**64), 2**64 - 1))


def uniform_known(hashes: np.ndarray, p: float) -> np.ndarray:
    return hashes < _threshold(p) if p < 1 else np.ones(hashes.shape, dtype=bool)


def hcp_known(n: int, c: int, p: float, seed: int = 0) -> np.ndarray:
    """The published protocol, bit for bit: np.random.seed(seed); np.random.random((N, C)) < p."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return np.random.random((n, c)) < p
    finally:
        np.random.set_state(state)


def per_image_known(hashes: np.ndarray, p: float) -> np.ndarray:
    c = hashes.shape[1]
    k = max(1, int(math.floor(p * c + 0.5)))
    ranks = np.argsort(np.argsort(hashes, axis=1, kind="stable"), axis=1, kind="stable")
    return ranks < k


def single_positive_known(hashes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    pos = labels == 1
    masked = np.where(pos, hashes, np.uint64(2**64 - 1))
    pick = masked.argmin(axis=1)
    known = np.zeros(labels.shape, dtype=bool)
    rows = np.flatnonzero(pos.any(axis=1))
    known[rows, pick[rows]] = True
    return known


def mask_stats(partial: np.ndarray, category_names: list[str]) -> dict[str, Any]:
    n, c = partial.shape
    known = partial != 0
    pos_per_class = (partial == 1).sum(axis=0)
    return {
        "images": int(n),
        "entries": int(n * c),
        "known_proportion": float(known.mean()) if n else 0.0,
        "known_positives": int((partial == 1).sum()),
        "known_negatives": int((partial == -1).sum()),
        "images_without_known_label": int((~known.any(axis=1)).sum()),
        "classes_without_known_positive": [category_names[i] for i in np.flatnonzero(pos_per_class == 0)],
    }


def content_hash(keys, partial: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update("\x1f".join(keys).encode())
    h.update(np.asarray(partial.shape, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(partial, dtype=np.int8).tobytes())
    return h.hexdigest()


def _show_proportions(values) -> str:
    return ",".join(f"{p:g}" for p in values)


@dataclass
class MaskConfig:
    proportions: list[float] = field(default_factory=lambda: [0.3], metadata=opt(
        "Known proportion(s): 0.3, 0.1,0.5,0.9 or 0.1:0.9:0.1 (single-positive takes none)", flags="--proportion",
        parse=lambda t: parse_proportions(t), show=_show_proportions))
    seed: int = field(default=0, metadata=opt("Seed of which labels are known", min=0))
    scheme: Scheme = field(default=Scheme.uniform, metadata=opt(
        "uniform (the paper's protocol), hcp (bit-identical to the published files), per-image (a fixed count per "
        "image) or single-positive"))
    split: MaskSplit = field(default=MaskSplit.train, metadata=opt("Which split the mask covers"))
    force: bool = field(default=False, metadata=opt("Replace an existing mask of the same name with other content"))

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.scheme == Scheme.single_positive:
            self.proportions = []


@dataclass
class Mask:
    """Partial labels of one split: `labels` (N, C) int8 in {-1, 0, 1}, rows aligned with `keys`."""

    keys: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.meta["name"]


def compute_masks(m: Manifest, cfg: MaskConfig) -> list[Mask]:
    """The masks of `m` for every proportion of `cfg` (in memory)."""
    rows = m.split_rows(cfg.split)
    if len(rows) == 0:
        raise BadInputError(f"{m.name}: split {cfg.split} has no images")
    keys = m.keys[rows]
    labels = m.labels[rows]
    n, c = labels.shape
    hashes = None if cfg.scheme == "hcp" else entry_hashes(keys, c, cfg.seed)
    fingerprint = m.fingerprint  # computed once: it hashes the whole manifest
    proportions = [None] if cfg.scheme == "single-positive" else cfg.proportions
    out = []
    for p in proportions:
        if cfg.scheme == "uniform":
            known = uniform_known(hashes, p)
        elif cfg.scheme == "hcp":
            known = hcp_known(n, c, p, cfg.seed)
        elif cfg.scheme == "per-image":
            known = per_image_known(hashes, p)
        else:
            known = single_positive_known(hashes, labels)
        partial = labels * known.astype(np.int8)
        name = mask_name(cfg.scheme, p, cfg.seed, cfg.split)
        meta = {
            "name": name,
            "fingerprint": fingerprint,
            "dataset": m.name,
            "scheme": cfg.scheme,
            "seed": cfg.seed,
            "proportion": p,
            "split": cfg.split,
            "num_classes": c,
            "mlrpl_version": __version__,
            "content_sha256": content_hash(keys, partial),
            "stats": mask_stats(partial, m.category_names),
        }
        out.append(Mask(keys=keys, labels=partial, meta=meta))
    return out


def write_mask(dataset_dir: Path, mask: Mask, force: bool = False) -> str:
    """Write atomically: "written", "unchanged" (identical content there, checked by reading it back),
    "repaired" (the same mask, but a file was damaged); other content needs --force ("replaced")."""
    pq_path, js_path = map(Path, DatasetFolder(dataset_dir).mask_files(mask.name))
    sweep_stale(pq_path.parent)
    state = "written"
    if js_path.exists() or pq_path.exists():
        try:
            old = read_mask(dataset_dir, mask.name, fingerprint=mask.meta["fingerprint"])
            same = old.meta.get("content_sha256") == mask.meta["content_sha256"]
        except BadInputError:  # damaged or half-written: its sidecar (if readable) says which mask it was
            old = None
            same = not js_path.exists() or _sidecar_hash(js_path) == mask.meta["content_sha256"]
        if same and old is not None:
            return "unchanged"
        if same:
            state = "repaired"
        elif not force:
            raise AlreadyExistsError(
                f"{pq_path}: exists with other content (another proportion, seed or manifest); pass --force to replace it")
        else:
            state = "replaced"
    table = pa.table({"key": pa.array(list(mask.keys), type=pa.string()), "labels": labels_to_arrow(mask.labels)})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", compression_level=1)
    # parquet first, sidecar last: a reader needs both and checks one against the other
    atomic_write_bytes(pq_path, buf.getvalue())
    atomic_write_bytes(js_path, (json.dumps(mask.meta, indent=2) + "\n").encode())
    return state


def _sidecar_hash(js_path: Path) -> str | None:
    try:
        doc = json.loads(js_path.read_text())
        return doc.get("content_sha256") if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None


def make_masks(dataset_dir: Path, cfg: MaskConfig) -> list[tuple[Mask, str]]:
    """Compute and write the masks of `cfg` (each with write_mask's state), then refresh the folder's card."""
    m = read_manifest(dataset_dir)
    results = [(mask, write_mask(dataset_dir, mask, cfg.force)) for mask in compute_masks(m, cfg)]
    DatasetFolder(dataset_dir).refresh()
    return results


def read_mask(dataset: str | Path | DatasetFolder, name: str, fingerprint: str | None = None) -> Mask:
    """Read a mask by name (with or without .parquet), checked: sidecar fields, its manifest's
    fingerprint, the Parquet schema, values in {-1, 0, 1}, unique keys, and the content hash."""
    folder = DatasetFolder.of(dataset)
    name = name.removesuffix(".parquet").removesuffix(".json")
    where = folder.path(MASKS_DIR, name)
    if parse_mask_name(name) is None:
        raise BadInputError(f"--masks {name!r}: not a mask name (e.g. uniform-p0.30-s0; `mlrpl masks DIR` lists them)")
    try:
        meta = folder.mask_sidecar(name)
        table = read_parquet(folder.mask_files(name)[0], {"key": "string", "labels": "list<item: int8>"})
    except MissingFileError:
        raise BadInputError(f"{where}: mask not found (make it with `mlrpl make-masks`; `mlrpl masks DIR` lists them)") from None
    if meta["name"] != name:
        raise BadInputError(f"{where}.json: names mask {meta['name']!r}, not {name!r} (renamed? remake it)")
    expected = fingerprint or folder.card["fingerprint"]
    check_fingerprint(meta["fingerprint"], expected, where, "remake the mask (mlrpl make-masks)")
    keys = np.asarray(table.column("key").to_pylist(), dtype=object)
    if len(set(keys)) != len(keys):
        raise BadInputError(f"{where}.parquet: a key appears twice; remake the mask")
    labels = labels_from_arrow(table.column("labels"), meta["num_classes"], f"{where}.parquet")
    bad = ~np.isin(labels, (-1, 0, 1))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise BadInputError(f"{where}.parquet: row {r} ({keys[r]}) class {c} holds {labels[r, c]}, not -1, 0 or 1")
    if content_hash(keys, labels) != meta["content_sha256"]:
        raise BadInputError(f"{where}.parquet: content does not match its sidecar (altered or half-written); remake it")
    return Mask(keys=keys, labels=labels, meta=meta)


def format_mask_stats(metas: list[dict[str, Any]]) -> str:
    head = f"{'mask':<28}{'split':>6}{'images':>9}{'known':>8}{'known +':>10}{'known -':>11}{'no label':>10}  classes w/o known +"
    lines = [head, "-" * len(head)]
    for meta in metas:
        s = meta["stats"]
        missing = s["classes_without_known_positive"]
        lines.append(
            f"{meta['name']:<28}{meta['split']:>6}{s['images']:>9,}{s['known_proportion']:>8.3f}{s['known_positives']:>10,}"
            f"{s['known_negatives']:>11,}{s['images_without_known_label']:>10,}  "
            + (f"{len(missing)}: {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}" if missing else "none")
        )
    return "\n".join(lines)
