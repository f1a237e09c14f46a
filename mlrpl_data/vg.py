"""Visual Genome -> VG-200 Manifest, from the raw release or from SSGRL's benchmark split.

Raw release (objects.json + image_data.json, v1.2 or v1.4; rules in manifests/vg200/rules.json):
an object's name is its first `names` entry (or `name`), lower-cased with whitespace
collapsed and mapped through object_alias.txt when the release has one; the vocabulary
is the 200 names held by most images (ties by name); the test split is the `test_size`
images with the smallest sha256(f"{seed}:{image_id}"), so it does not depend on file order.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import BadInputError
from .jsonio import check_records, load_json
from .assemble import make_manifest
from .manifest import Manifest
from .options import allow_missing_field, check_ranges, opt, progress_field
from .progress import progress_bar
from .rawfiles import raw_path, read_lines, refuse_duplicates
from .missing import drop_missing, listdir_names
from .fsutil import sha256_file
from .declare import SourceTerms

# the source's licence and citation, for the dataset card (formats.source_terms)
TERMS = {
    "vg-raw": SourceTerms(
        "cc-by-4.0", "Visual Genome: CC BY 4.0 (https://homes.cs.washington.edu/~ranjay/visualgenome/).",
        "Krishna et al., Visual Genome: Connecting Language and Vision Using Crowdsourced Dense Image "
        "Annotations, IJCV 2017."),
    "vg-ssgrl": SourceTerms(
        "cc-by-4.0", "Visual Genome: CC BY 4.0; the benchmark split lists come from SSGRL "
        "(https://github.com/HCPLab-SYSU/SSGRL).",
        "Krishna et al., Visual Genome, IJCV 2017; Chen et al., Learning Semantic-Specific Graph "
        "Representation for Multi-Label Image Recognition (SSGRL), ICCV 2019."),
}

IMAGE_FOLDERS = ("VG_100K", "VG_100K_2")
MISSING_WHAT = f"image(s) missing from {'/, '.join(IMAGE_FOLDERS)}/"
_WS = re.compile(r"\s+")


@dataclass
class VgConfig:
    root: Path = field(metadata=opt("Holds objects.json, image_data.json and the VG_100K/, VG_100K_2/ images"))
    num_classes: int = field(default=200, metadata=opt("Classes: the names held by most images", min=1))
    test_size: int = field(default=10000, metadata=opt("Images in the seeded test split", min=1))
    seed: int = field(default=0, metadata=opt("Seed of the test split", min=0))
    aliases: Path | None = field(default=None, metadata=opt("object_alias.txt (default ROOT/object_alias.txt when "
                                                             "present)"))
    vocabulary: Path | None = field(default=None, metadata=opt(
        "A JSON list of class names to use instead of ranking (pins a lab's vocabulary)"))
    allow_missing: bool = allow_missing_field()
    progress: bool = progress_field()

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class SsgrlConfig:
    root: Path
    train_list: Path
    test_list: Path
    labels: Path
    num_classes: int = 200
    allow_missing: bool = False
    label_classes: int | None = None  # classes the labels file indexes: 200, 500, or None (read from the file)


VG200_BENCHMARK = "vg200-ssgrl"  # the card's `benchmark` of the papers' VG-200 (published rows apply)


def ssgrl_label_classes(labels_map: dict, path: Path, given: int | None) -> int:
    """How many classes SSGRL's labels file indexes: 200 (vg_category_200_labels_index.json, the file
    the authors' code reads for VG-200: HCP-MLR-PL utils/dataloader.py) or 500
    (vg_category_500_labels_index.json, VG-500). `given` (--ssgrl-classes) decides; without it an
    index >= 200 makes it a VG-500 file, which is refused (its first 200 classes are not shown to be
    the benchmark's 200), and a file named *500* with no such index is ambiguous and refused too."""
    top = max((k for v in labels_map.values() if isinstance(v, list) for k in v if isinstance(k, int)), default=-1)
    if given not in (None, 200, 500):
        raise BadInputError(f"--ssgrl-classes {given}: use 200 (vg_category_200_labels_index.json) or 500 "
                            f"(vg_category_500_labels_index.json)")
    if given == 200 and top >= 200:
        raise BadInputError(f"{path}: indexes class {top}, so it is not a 200-class labels file; pass "
                            f"vg_category_200_labels_index.json, or --ssgrl-classes 500 for a VG-500 file")
    if given is not None:
        return given
    if top >= 200:
        raise BadInputError(f"{path}: indexes classes up to {top}: a VG-500 labels file. The papers' VG-200 is "
                            f"vg_category_200_labels_index.json (what the authors' code reads): pass that file, or "
                            f"--ssgrl-classes 500 to keep classes 0..199 of VG-500 (not the published benchmark: "
                            f"no published rows)")
    if "500" in Path(path).name:
        raise BadInputError(f"{path}: named like a VG-500 file but indexes no class >= 200: say which it is "
                            f"with --ssgrl-classes 200 or --ssgrl-classes 500")
    return 200


def normalise_name(name: str) -> str:
    return _WS.sub(" ", name.strip().lower())


def read_aliases(path: Path) -> dict[str, str]:
    """object_alias.txt: each line `canonical,alias,...`; every term maps to the line's first."""
    out: dict[str, str] = {}
    for _, line in read_lines(Path(path), "alias file"):
        terms = [normalise_name(t) for t in line.split(",") if t.strip()]
        if not terms:
            continue
        target = out.get(terms[0], terms[0])
        for t in terms:
            out[t] = target
    return out


def object_name(obj: dict, where: str) -> str | None:
    """The object's primary name (None for an object with no name at all)."""
    names = obj.get("names")
    if names is None and "name" in obj:
        names = [obj["name"]]
    if not names:
        return None
    if not isinstance(names, list) or not isinstance(names[0], str):
        raise BadInputError(f"{where}: object {obj.get('object_id')} has malformed names {names!r}")
    return normalise_name(names[0]) or None


def _image_id(rec: dict, where: str) -> int:
    if not isinstance(rec, dict):
        raise BadInputError(f"{where}: an image record is {type(rec).__name__}, not an object")
    i = rec.get("image_id", rec.get("id"))
    if not isinstance(i, int):
        raise BadInputError(f"{where}: record without an integer image_id: {str(rec)[:80]}")
    return i


def split_test_ids(image_ids: list[int], test_size: int, seed: int) -> set[int]:
    """The seeded, order-free test split: smallest sha256(f'{seed}:{id}')."""
    if not 0 < test_size < len(image_ids):
        raise BadInputError(f"--test-size {test_size} must be between 1 and {len(image_ids) - 1} (there are {len(image_ids)} images)")
    ranked = sorted(image_ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    return set(ranked[:test_size])


def _resolve_paths(root: Path, file_names: list[str], hinted: list[str | None]) -> list[str | None]:
    """Relative path of each image in VG_100K/ or VG_100K_2/ (or ROOT), None when absent."""
    listing = {folder: listdir_names(root / folder) for folder in IMAGE_FOLDERS}
    listing[""] = listdir_names(root)
    out = []
    for name, hint in zip(file_names, hinted):
        if "/" in name:  # a list naming the folder itself (VG_100K/1.jpg)
            out.append(name if (root / name).is_file() else None)
            continue
        order = ([hint] if hint in listing else []) + [f for f in (*IMAGE_FOLDERS, "") if f != hint]
        found = next((f for f in order if name in listing[f]), None)
        out.append(None if found is None else (f"{found}/{name}" if found else name))
    return out


def _names_per_image(objects: list, obj_path: Path, ids: list[int], aliases: dict[str, str],
                     progress: bool) -> list[set[str]]:
    """The normalised object names (aliases applied) of each image, in `ids` order; BadInputError
    naming objects.json for an image listed twice or absent from image_data.json, or a bad record."""
    row_of = {i: r for r, i in enumerate(ids)}
    names_per_image: list[set[str]] = [set() for _ in ids]
    seen_obj_images: set[int] = set()
    for rec in progress_bar(len(objects), "build-vg200", "img", progress, iterable=objects):
        i = _image_id(rec, str(obj_path))
        if i in seen_obj_images:
            raise BadInputError(f"{obj_path}: image_id {i} appears twice")
        seen_obj_images.add(i)
        if i not in row_of:
            raise BadInputError(f"{obj_path}: image_id {i} is not in image_data.json")
        where = f"{obj_path} image {i}"
        objs = rec.get("objects", [])
        if not isinstance(objs, list) or not all(isinstance(o, dict) for o in objs):
            raise BadInputError(f"{where}: 'objects' must be a list of objects")
        for obj in objs:
            name = object_name(obj, where)
            if name:
                names_per_image[row_of[i]].add(aliases.get(name, name))
    return names_per_image


def _vocabulary(cfg: VgConfig, image_counts: Counter) -> list[str]:
    """The classes: --vocabulary's names (normalised), else the cfg.num_classes names held by most
    images (ties by name)."""
    if cfg.vocabulary:
        listed = load_json(Path(cfg.vocabulary))
        if not isinstance(listed, list) or not listed or not all(isinstance(n, str) and n.strip() for n in listed):
            raise BadInputError(f"{cfg.vocabulary}: a vocabulary is a JSON list of class names")
        vocab = [normalise_name(n) for n in listed]
        if len(set(vocab)) != len(vocab):
            raise BadInputError(f"{cfg.vocabulary}: a class name is listed twice (after normalising)")
    else:
        ranked = sorted(image_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        vocab = [n for n, _ in ranked[: cfg.num_classes]]
    return vocab


def _labels_of(names_per_image: list[set[str]], vocab: list[str]) -> np.ndarray:
    """(N, C) int8: 1 where the image holds an object of the class, -1 elsewhere (VG is annotated densely)."""
    col_of = {n: c for c, n in enumerate(vocab)}
    labels = np.full((len(names_per_image), len(vocab)), -1, dtype=np.int8)
    for r, names in enumerate(names_per_image):
        cols = [col_of[n] for n in names if n in col_of]
        labels[r, cols] = 1
    return labels


def _raw_frame(ids: list[int], image_data: list[dict], test_ids: set[int]) -> tuple[pd.DataFrame, list[str | None]]:
    """The images' rows (key, split, path in the folder the record's URL names, width, height) and those
    folder hints, in image_data.json order."""
    urls = [str(rec.get("url") or rec.get("image_url") or "") for rec in image_data]
    hints = [next((f for f in IMAGE_FOLDERS if f"/{f}/" in u), None) for u in urls]
    frame = pd.DataFrame(
        {
            "key": [f"vg_{i}" for i in ids],
            "split": ["test" if i in test_ids else "train" for i in ids],
            "path": [f"{h or IMAGE_FOLDERS[0]}/{i}.jpg" for i, h in zip(ids, hints)],
            "width": [rec["width"] for rec in image_data],
            "height": [rec["height"] for rec in image_data],
        }
    )
    return frame, hints


def build_vg200(cfg: VgConfig) -> Manifest:
    """Build VG-200 from the raw release (rows in image_data.json order)."""
    root = Path(cfg.root)
    img_path, obj_path = root / "image_data.json", root / "objects.json"
    image_data = load_json(img_path)
    objects = load_json(obj_path)
    if not isinstance(image_data, list) or not isinstance(objects, list):
        raise BadInputError(f"{root}: image_data.json and objects.json must each hold a list of image records")
    alias_path = cfg.aliases or (root / "object_alias.txt")
    aliases = read_aliases(alias_path) if Path(alias_path).exists() else {}

    ids = [_image_id(r, str(img_path)) for r in image_data]
    check_records(img_path, "image_data", image_data, {"width": int, "height": int})
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise BadInputError(f"{img_path}: duplicate image_id {dup}")
    names_per_image = _names_per_image(objects, obj_path, ids, aliases, cfg.progress)
    image_counts = Counter(n for s in names_per_image for n in s)
    vocab = _vocabulary(cfg, image_counts)
    if not vocab:
        raise BadInputError(f"{obj_path}: no object names found")
    warnings = [] if len(vocab) >= cfg.num_classes else [
        f"only {len(vocab)} distinct names in {obj_path.name}: the vocabulary has fewer than {cfg.num_classes} classes"]
    labels = _labels_of(names_per_image, vocab)
    frame, hints = _raw_frame(ids, image_data, split_test_ids(ids, cfg.test_size, cfg.seed))
    paths = _resolve_paths(root, [f"{i}.jpg" for i in ids], hints)
    frame, labels, missing = drop_missing(frame, labels, [p is not None for p in paths], cfg.allow_missing, root,
                                          MISSING_WHAT, root=root)
    frame["path"] = [p for p in paths if p is not None] if missing else paths
    return make_manifest(
        root,
        name="vg200",
        version="raw",
        category_names=vocab,
        category_source_ids=vocab,
        images=frame,
        labels=labels,
        options={"format": "vg-raw", "num_classes": cfg.num_classes, "test_size": cfg.test_size, "seed": cfg.seed,
                 "aliases": bool(aliases), "fixed_vocabulary": bool(cfg.vocabulary)},
        sources=[{"file": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}
                 for p in (img_path, obj_path, Path(alias_path)) if p.exists()],
        extra={"vocabulary": "vg200-raw", "benchmark": None, "image_counts": {n: image_counts[n] for n in vocab}, "missing": missing,
               "warnings": warnings},
    )


def read_name_list(path: Path) -> list[tuple[str, str]]:
    """(image file name, where it is listed) of each line of an SSGRL list."""
    names = [(raw_path(line, f"{path}:{n}"), f"{path}:{n}") for n, line in read_lines(Path(path), "list file")]
    if not names:
        raise BadInputError(f"{path}: the split is empty")
    refuse_duplicates(names, "image")
    return names


def ssgrl_lists_match(train: list[str], test: list[str]) -> bool:
    """Are these SSGRL's lists (HCPLab-SYSU/SSGRL data/VG/{train,test}_list_500.txt)? The md5 of the
    names one per line (LF, so a CRLF or BOM copy still matches) against manifests/vg200/rules.json."""
    from .specs import load_spec

    want = load_spec("vg200/rules")["benchmark_split"]

    def md5(names: list[str]) -> str:
        return hashlib.md5(("\n".join(names) + "\n").encode()).hexdigest()

    return md5(train) == want["train_list_md5"] and md5(test) == want["test_list_md5"]


def _ssgrl_sizes(root: Path) -> dict[int, tuple[int, int]]:
    """image id -> (width, height) from ROOT/image_data.json; empty without that file."""
    sizes = {}
    if (root / "image_data.json").exists():
        records = load_json(root / "image_data.json")
        if not isinstance(records, list):
            raise BadInputError(f"{root / 'image_data.json'}: must hold a list of image records")
        check_records(root / "image_data.json", "image_data", records, {"width": int, "height": int})
        sizes = {_image_id(r, "image_data.json"): (r["width"], r["height"]) for r in records}
    return sizes


def _ssgrl_rows(cfg: SsgrlConfig, train: list[str], test: list[str], labels_map: dict, label_classes: int,
                sizes: dict[int, tuple[int, int]]) -> tuple[pd.DataFrame, np.ndarray]:
    """The listed images' rows (train list, then test list; width and height -1 where `sizes` lacks the
    image) and their labels (N, cfg.num_classes) int8 1/-1; BadInputError naming the labels file for an
    image it lacks or an index outside 0..label_classes-1."""
    c = cfg.num_classes
    rows, label_rows = [], []
    for split, names, src in (("train", train, cfg.train_list), ("test", test, cfg.test_list)):
        for name in names:
            if name not in labels_map:
                raise BadInputError(f"{cfg.labels}: no labels for {name} (listed in {src})")
            idx = labels_map[name]
            if not isinstance(idx, list) or not all(isinstance(k, int) and 0 <= k < label_classes for k in idx):
                raise BadInputError(f"{cfg.labels}: {name}: labels must be class indices 0..{label_classes - 1}, "
                                    f"got {str(idx)[:60]}")
            lab = np.full(c, -1, dtype=np.int8)
            lab[[k for k in idx if k < c]] = 1
            stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            rows.append([f"vg_{stem}", split, name, *sizes.get(int(stem) if stem.isdigit() else -1, (-1, -1))])
            label_rows.append(lab)
    return pd.DataFrame(rows, columns=["key", "split", "path", "width", "height"]), np.stack(label_rows)


def _fill_header_sizes(frame: pd.DataFrame, root: Path) -> None:
    """Width and height (in place) of the rows that have none (-1: no image_data.json), read from the
    image headers under `root`, as the other builders do."""
    unknown = frame["width"].to_numpy() < 0
    if unknown.any():
        from .images import header_size

        for r in np.flatnonzero(unknown):
            size = header_size(root / frame["path"].iat[r])
            frame.iloc[r, frame.columns.get_loc("width")], frame.iloc[r, frame.columns.get_loc("height")] = size


def build_vg200_ssgrl(cfg: SsgrlConfig) -> Manifest:
    """VG-200 as the papers' benchmark: SSGRL's lists + a labels JSON (image name -> class indices).

    With SSGRL's own lists (their md5, ssgrl_lists_match) and the 200-class file
    (vg_category_200_labels_index.json, as the authors' code) the card's `benchmark` is
    "vg200-ssgrl" and the published rows apply; other lists give `benchmark` null; with a VG-500 file, only when
    --ssgrl-classes 500 says so, classes 0..num_classes-1 of VG-500 are kept and the card's
    `benchmark` is null (see ssgrl_label_classes)."""
    root = Path(cfg.root)
    train_at, test_at = read_name_list(cfg.train_list), read_name_list(cfg.test_list)
    refuse_duplicates([*train_at, *test_at], "image")
    train, test = [n for n, _ in train_at], [n for n, _ in test_at]
    labels_map = load_json(Path(cfg.labels))
    if not isinstance(labels_map, dict):
        raise BadInputError(f"{cfg.labels}: expected an object mapping image name -> class indices")
    label_classes = ssgrl_label_classes(labels_map, Path(cfg.labels), cfg.label_classes)
    if label_classes == 200 and cfg.num_classes != 200:
        raise BadInputError(f"--num-classes {cfg.num_classes}: a 200-class labels file ({cfg.labels}) gives 200 "
                            f"classes; drop --num-classes")
    c = cfg.num_classes
    frame, labels = _ssgrl_rows(cfg, train, test, labels_map, label_classes, _ssgrl_sizes(root))
    paths = _resolve_paths(root, frame["path"].tolist(), [None] * len(frame))
    frame, labels, missing = drop_missing(frame, labels, [p is not None for p in paths], cfg.allow_missing, root,
                                          MISSING_WHAT, root=root)
    frame["path"] = [p for p in paths if p is not None]
    _fill_header_sizes(frame, root)
    names = [f"vg{label_classes}_class_{k:03d}" for k in range(c)]
    # the benchmark is SSGRL's lists with a 200-class labels file: other lists of the same sizes are not
    same_lists = ssgrl_lists_match(train, test)
    benchmark = VG200_BENCHMARK if label_classes == 200 and same_lists else None
    return make_manifest(
        root,
        name="vg200",
        version="ssgrl",
        category_names=names,
        category_source_ids=[str(k) for k in range(c)],
        images=frame,
        labels=labels,
        options={"format": "vg-ssgrl", "num_classes": c, "label_classes": label_classes},
        sources=[{"file": Path(p).name, "sha256": sha256_file(Path(p)), "bytes": Path(p).stat().st_size}
                 for p in (cfg.train_list, cfg.test_list, cfg.labels)],
        extra={"vocabulary": "vg200 (SSGRL's 200-class labels)" if benchmark else f"vg500[0:{c}] (SSGRL's VG-500 labels)",
               "benchmark": benchmark, "ssgrl_lists": same_lists, "missing": missing},
    )


COMMAND = None  # build-vg200 has options of its own (SSGRL's lists and labels): cli.py writes it by hand
