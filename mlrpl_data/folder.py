"""One dataset folder: its layout, its file names, and each of its files read once.

A dataset folder (a local path or an fsspec URL such as s3://bucket/coco2014) holds:

    dataset.json, categories.parquet, images.parquet   the manifest (write_manifest, here)
    masks/<scheme>-p<proportion>-s<seed>.parquet + .json   partial labels and their sidecars (masks.py)
    shards/<split>-NNNNNN.tar, shards/index.json, shards/SHA256SUMS   WebDataset shards (shards.py)
    label_embeddings.npy + .json   CSRL's label embeddings (embeddings.py)
    README.md, files.json   the dataset card and the listing `mlrpl pull` copies (card.py renders the card)
    masks/README.md   the masks' dataset card (one Hugging Face config per mask; card.py)
    .mlrpl-local.json   this machine's raw root: never shared

The names are declared here and every other module takes them from here. `DatasetFolder` reads
each file at most once (cached on the object) and answers the card (dataset.json), the categories
and class names, the manifest's tables, the masks' sidecars, the shard index and the label
embeddings path; the Manifest, a Mask and the checked shard index are built from these reads by
read_manifest (here), masks.read_mask and shards.read_index. A local path is opened as a local
path (`a::b`, `#` or `?` in a folder name are just characters), a URL through fsspec: the one rule
is readers.is_remote. `refresh()` is the one place README.md and files.json are rewritten.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .card import dataset_card, masks_card
from .errors import AlreadyExistsError, BadInputError
from .fsutil import atomic_write_text, publish_dir, sha256_file, staging_dir
from .manifest import (SCHEMA_VERSION, Manifest, categories_table, images_table, labels_from_arrow, table_bytes,
                       validate)
from .ownership import (MARKER, claim, is_empty_but_temporaries, mark, refuse_overlap, releasing, remove_owned,
                        sweep_stale, unclaim)
from .readers import MissingFileError, is_remote, join, local_path, read_json, read_json_object, read_parquet
from .timeouts import storage_options

DATASET_JSON = "dataset.json"
CATEGORIES_PARQUET = "categories.parquet"
IMAGES_PARQUET = "images.parquet"
MASKS_DIR = "masks"
SHARDS_DIR = "shards"
INDEX = "index.json"
SUMS = "SHA256SUMS"
EMBEDDINGS_NPY, EMBEDDINGS_JSON = "label_embeddings.npy", "label_embeddings.json"
CARD = "README.md"
MASKS_CARD = f"{MASKS_DIR}/{CARD}"  # the masks' own card: datasets reads one file format per folder
FILES = "files.json"
LOCAL = ".mlrpl-local.json"  # this machine's raw root: never shared (not in files.json, not pulled)

# what a dataset folder holds that mlrpl wrote: --force replaces these and nothing else
DATASET_ENTRIES = (DATASET_JSON, CATEGORIES_PARQUET, IMAGES_PARQUET)
DERIVED_ENTRIES = (MASKS_DIR, SHARDS_DIR, EMBEDDINGS_NPY, EMBEDDINGS_JSON, CARD, FILES)
# files.json lists these (when present) and every mask file; the shards are listed by shards/index.json
SHARED_FILES = (DATASET_JSON, CATEGORIES_PARQUET, IMAGES_PARQUET, CARD, EMBEDDINGS_NPY, EMBEDDINGS_JSON,
                f"{SHARDS_DIR}/{INDEX}", f"{SHARDS_DIR}/{SUMS}", MASKS_CARD)

CARD_FIELDS = {"name": str, "version": str, "schema_version": int, "fingerprint": str, "num_classes": int,
               "counts": dict}
SIDECAR_FIELDS = {"name": str, "fingerprint": str, "scheme": str, "seed": int, "split": str, "num_classes": int,
                  "content_sha256": str, "stats": dict}


class DatasetFolder:
    """A dataset folder at `location` (a local path, `file://` path or fsspec URL). Nothing is read
    until asked; each file is then read once and kept (the object describes the folder as it was
    when read: make a new one after writing). Errors: BadInputError (a MissingFileError for a file
    that is not there) naming the file and what is wrong."""

    def __init__(self, location: str | Path) -> None:
        self.url = str(location).rstrip("/") or "/"
        self.remote = is_remote(self.url)
        self._sidecars: dict[str, dict[str, Any]] = {}

    @classmethod
    def of(cls, dataset: "str | Path | DatasetFolder") -> "DatasetFolder":
        """`dataset` itself when it is a DatasetFolder (its reads are reused), else a new one."""
        return dataset if isinstance(dataset, DatasetFolder) else cls(dataset)

    def __str__(self) -> str:
        return self.url

    def path(self, *parts: str) -> str:
        """The location of a file inside the folder (a URL for a remote folder)."""
        return join(self.url, *parts)

    @property
    def local(self) -> Path:
        """The folder as a local Path (BadInputError for a remote folder: writing needs a local one)."""
        if self.remote:
            raise BadInputError(f"{self.url}: a remote dataset; this needs a local folder")
        return Path(local_path(self.url))

    # ---- the manifest's files --------------------------------------------------------------------------

    @functools.cached_property
    def card(self) -> dict[str, Any]:
        """dataset.json, its fields checked: name, version, schema_version, fingerprint, num_classes, counts."""
        where = self.path(DATASET_JSON)
        try:
            card = read_json_object(where, CARD_FIELDS)
        except MissingFileError:
            raise BadInputError(f"{self.url}: no {DATASET_JSON}: not a complete dataset "
                                f"(was the build interrupted? re-run it)") from None
        if card["schema_version"] != SCHEMA_VERSION:
            raise BadInputError(f"{where}: schema_version {card['schema_version']!r}, this mlrpl reads {SCHEMA_VERSION}")
        if card["num_classes"] < 1 or not all(isinstance(v, int) and v >= 0 for v in card["counts"].values()):
            raise BadInputError(f"{where}: num_classes and counts must be non-negative integers")
        return card

    @functools.cached_property
    def categories(self):
        """categories.parquet as a pyarrow Table (columns name, source_id: strings)."""
        return read_parquet(self.path(CATEGORIES_PARQUET), {"name": "string", "source_id": "string"})

    @property
    def class_names(self) -> list[str]:
        """The C class names in class order (categories.parquet's `name` column)."""
        return self.categories.column("name").to_pylist()

    @functools.cached_property
    def images(self):
        """images.parquet as a pyarrow Table (key, split, path, width, height, labels list<int8>)."""
        return read_parquet(self.path(IMAGES_PARQUET), {"key": "string", "split": "string", "path": "string",
                                                         "width": "int32", "height": "int32",
                                                         "labels": "list<item: int8>"})

    @property
    def local_root(self) -> str:
        """The raw root recorded on this machine, else "" (a pulled or remote dataset has none)."""
        if self.remote:
            return ""
        try:
            return str(json.loads((self.local / LOCAL).read_text()).get("root", ""))
        except (OSError, ValueError, AttributeError):
            return ""

    # ---- masks -----------------------------------------------------------------------------------------

    def mask_files(self, name: str) -> tuple[str, str]:
        """(Parquet, sidecar) locations of the mask `name` (names hold dots, p0.30: never with_suffix)."""
        return self.path(MASKS_DIR, f"{name}.parquet"), self.path(MASKS_DIR, f"{name}.json")

    def mask_sidecar(self, name: str) -> dict[str, Any]:
        """masks/<name>.json, its fields checked (MissingFileError when absent)."""
        if name not in self._sidecars:
            self._sidecars[name] = read_json_object(self.mask_files(name)[1], SIDECAR_FIELDS)
        return self._sidecars[name]

    def mask_names(self) -> list[str]:
        """Names of the masks with a sidecar, in their files' order (`-test.json` before `.json`, as the card
        has always listed them), from the masks/ listing (a local folder listed as one;
        s3, ... through fsspec; a store that cannot list, plain http, has none)."""
        if not self.remote:
            folder = self.local / MASKS_DIR
            return [p.name[: -len(".json")] for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
        import fsspec

        try:
            fs, path = fsspec.core.url_to_fs(self.path(MASKS_DIR), **storage_options(self.url))
            found = fs.glob(f"{path}/*.json")
        except Exception:  # no listing: nothing listed (masks are checked again when read)
            return []
        return [p[: -len(".json")] for p in sorted(p.rsplit("/", 1)[-1] for p in found)]

    def mask_sidecars(self, skip_bad: bool = False) -> list[dict[str, Any]]:
        """The sidecars of every mask, in mask_names' order, each checked for its fields (a bad one raises,
        or with skip_bad is left out)."""
        metas = []
        for name in self.mask_names():
            try:
                metas.append(self.mask_sidecar(name))
            except BadInputError:
                if not skip_bad:
                    raise
        return metas

    # ---- shards and embeddings -------------------------------------------------------------------------

    @functools.cached_property
    def index(self) -> dict[str, Any] | None:
        """shards/index.json as written (None when there is none yet); shards.read_index checks every
        entry: use it before reading shards."""
        try:
            doc = read_json(self.path(SHARDS_DIR, INDEX))
        except MissingFileError:
            return None
        if not isinstance(doc, dict):
            raise BadInputError(f"{self.path(SHARDS_DIR, INDEX)}: expected a JSON object, got {type(doc).__name__}")
        return doc

    def held_splits(self) -> list[str]:
        """The splits, sorted, whose every shard the index lists is in this local folder (all of the
        index's splits in a folder write-shards made; train only in a `pull --split train` copy)."""
        if not self.index:
            return []
        shards = self.index.get("shards", [])
        held = {s["split"] for s in shards}
        return sorted(sp for sp in held if all((self.local / SHARDS_DIR / s["name"]).is_file()
                                              for s in shards if s["split"] == sp))

    @property
    def embeddings_path(self) -> str:
        """Where the label embeddings (C, E) float32 .npy are (present or not)."""
        return self.path(EMBEDDINGS_NPY)

    # ---- the card and the listing ----------------------------------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        """Every shared file of the folder other than the shards, with its size (bytes) and sha256."""
        folder = self.local
        paths = [folder / n for n in SHARED_FILES]
        masks = folder / MASKS_DIR
        if masks.is_dir():
            paths += sorted(p for p in masks.iterdir() if p.suffix in (".json", ".parquet") and not p.name.startswith("."))
        return [{"path": str(p.relative_to(folder)), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
                for p in paths if p.is_file()]

    def refresh(self) -> None:
        """Rewrite README.md, masks/README.md (removed when no mask is left) and files.json from what the
        folder holds now (after a command wrote into it): the one place they are written. Reads the folder
        afresh."""
        fresh = DatasetFolder(self.url)
        atomic_write_text(fresh.local / CARD, dataset_card(fresh))
        masks_text = masks_card(fresh)
        if masks_text is not None:
            atomic_write_text(fresh.local / MASKS_CARD, masks_text)
        else:
            (fresh.local / MASKS_CARD).unlink(missing_ok=True)
        atomic_write_text(fresh.local / FILES, json.dumps({"files": fresh.listing()}, indent=1) + "\n")


def read_card(dataset: "str | Path | DatasetFolder") -> dict[str, Any]:
    """dataset.json of a folder or URL, checked (DatasetFolder.card; a DatasetFolder's own read is reused)."""
    return DatasetFolder.of(dataset).card


# ---- the manifest in a folder: written atomically, read verified ----------------------------------------------

def write_local_root(folder: Path, root: str) -> None:
    """Record where this machine's raw release is (write-shards reads the images there)."""
    if root:
        atomic_write_text(Path(folder) / LOCAL, json.dumps({"root": str(root)}) + "\n")


def _existing(out: Path, card: dict[str, Any], force: bool) -> str:
    """What writing `card`'s dataset into the existing folder `out` does: "unchanged" (the same dataset,
    intact), "repaired" (the same dataset, a file damaged) or "replaced" (another one, with --force;
    AlreadyExistsError without)."""
    try:
        old_fp = DatasetFolder(out).card.get("fingerprint")
    except BadInputError:
        old_fp = None
    if old_fp == card["fingerprint"]:
        try:
            read_manifest(out)
            return "unchanged"
        except BadInputError:
            return "repaired"  # the same dataset with a damaged file: rewrite the manifest, keep masks and shards
    if not force:
        raise AlreadyExistsError(
            f"{out}: holds another dataset (fingerprint {str(old_fp)[:12]}…, new {card['fingerprint'][:12]}…); "
            f"pass --force to replace it (its masks and shards go too)")
    return "replaced"


@releasing
def write_manifest(m: Manifest, out: Path, force: bool = False) -> str:
    """Write atomically to `out`: "written", "unchanged" (the same dataset is there, intact),
    "repaired" (the same dataset, but a file was damaged: rewritten) or "replaced" (--force).

    A folder mlrpl did not make is never written into (ownership.claim); the raw root is never
    the output. Replacing removes only mlrpl's entries (with the old masks and shards). The folder's
    README.md and files.json are rewritten (DatasetFolder.refresh)."""
    out = Path(out)
    refuse_overlap(out, {"the raw root": m.root}, "--out")
    sweep_stale(out.parent)
    # claimed (atomically, and locked) before anything is removed: a build started beside it is refused
    made = claim(out, "dataset", "--out")
    sweep_stale(out)
    card = m.dataset_card()
    state = "written" if made or is_empty_but_temporaries(out, MARKER) else _existing(out, card, force)
    if state == "unchanged":
        return state
    staged = staging_dir(out)
    try:
        (staged / CATEGORIES_PARQUET).write_bytes(table_bytes(categories_table(m)))
        (staged / IMAGES_PARQUET).write_bytes(table_bytes(images_table(m)))
        # dataset.json last: its presence marks a complete manifest
        (staged / DATASET_JSON).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
        if state == "written":
            mark(staged, "dataset")
            write_local_root(staged, m.root)
            publish_dir(staged, out)
        else:
            (out / DATASET_JSON).unlink(missing_ok=True)  # from here on the folder reads as incomplete
            kept = remove_owned(out, DATASET_ENTRIES + (DERIVED_ENTRIES if state == "replaced" else ()))
            for name in (CATEGORIES_PARQUET, IMAGES_PARQUET, DATASET_JSON):
                os.replace(staged / name, out / name)
            staged.rmdir()
            write_local_root(out, m.root)
            if kept and state == "replaced":
                state += f" (kept {len(kept)} entr{'y' if len(kept) == 1 else 'ies'} mlrpl did not make: {', '.join(kept[:5])})"
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        if state == "written":
            unclaim(out)
        raise
    DatasetFolder(out).refresh()
    return state


def read_manifest(dataset: str | Path | DatasetFolder, verify: bool = True) -> Manifest:
    """Read a manifest from a directory, any fsspec URL or a DatasetFolder (whose reads are reused);
    refuse incomplete, altered or invalid ones (BadInputError naming the file)."""
    folder = DatasetFolder.of(dataset)
    where = folder.url
    card = folder.card
    cats = folder.categories
    imgs = folder.images
    c = cats.num_rows
    if c != card["num_classes"]:
        raise BadInputError(f"{where}: {CATEGORIES_PARQUET} has {c} classes, {DATASET_JSON} says {card['num_classes']}")
    labels = labels_from_arrow(imgs.column("labels"), c, f"{where}/{IMAGES_PARQUET}")
    images = imgs.select(["key", "split", "path", "width", "height"]).to_pandas(use_threads=False)  # threads abort exits
    known = {"name", "version", "schema_version", "fingerprint", "num_classes", "counts", "sources", "options", "root",
             "mlrpl_version"}
    m = Manifest(
        name=card["name"],
        version=card["version"],
        category_names=cats.column("name").to_pylist(),
        category_source_ids=cats.column("source_id").to_pylist(),
        images=images,
        labels=labels,
        options=card.get("options", {}),
        sources=card.get("sources", []),
        root=folder.local_root or card.get("root", ""),  # "root" in dataset.json: an mlrpl before 0.2
        extra={k: v for k, v in card.items() if k not in known},
    )
    validate(m, f"{where}/{IMAGES_PARQUET}")
    if verify and m.fingerprint != card["fingerprint"]:
        raise BadInputError(
            f"{where}: content fingerprint {m.fingerprint[:12]}… does not match dataset.json "
            f"{card['fingerprint'][:12]}…: the files were altered or mixed from two builds"
        )
    if {k: int(v) for k, v in card["counts"].items()} != m.counts():
        raise BadInputError(f"{where}/{DATASET_JSON}: counts {card['counts']} differ from the images {m.counts()}")
    return m


def list_masks(dataset: str | Path | DatasetFolder, skip_bad: bool = False) -> list[dict[str, Any]]:
    """Every mask's sidecar (name, scheme, proportion, seed, split, stats, ...) of a dataset folder, in
    file order; a damaged sidecar raises BadInputError naming it, or with skip_bad is left out. The public
    form of DatasetFolder.mask_sidecars (`from mlrpl_data import list_masks`)."""
    return DatasetFolder.of(dataset).mask_sidecars(skip_bad=skip_bad)
