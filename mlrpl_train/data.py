"""What a run trains and evaluates on, resolved once: the manifest card, the shard index and the
mask, every fingerprint checked against the manifest's; each file of the dataset folder read once
(mlrpl_data.folder.DatasetFolder)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from mlrpl_data.errors import BadInputError
from mlrpl_data.folder import INDEX, SHARDS_DIR, DatasetFolder
from mlrpl_data.manifest import check_fingerprint
from mlrpl_data.folder import read_manifest
from mlrpl_data.masks import read_mask
from mlrpl_data.shards import read_index, sample_order, shard_urls


VAL_SALT = "mlrpl-validation"


def validation_keys(keys, fraction: float) -> frozenset[str]:
    """The held-out keys: k is held out iff u(k) < fraction, u uniform in [0, 1) from a hash of the key
    alone, so the same images are held out in every run, mask, seed and machine (and the set at 5%
    is inside the set at 10%)."""
    if fraction <= 0:
        return frozenset()
    limit = int(fraction * 2**64)
    return frozenset(k for k in keys if int.from_bytes(
        hashlib.blake2b(f"{VAL_SALT}\x00{k}".encode(), digest_size=8).digest(), "little") < limit)


@dataclass
class DataSpec:
    """Where the data is and what it holds."""

    dataset: str
    fingerprint: str
    num_classes: int
    class_names: list[str]
    train_urls: list[str]
    test_urls: list[str]
    train_samples: int
    test_samples: int
    partial: dict[str, np.ndarray] | None = None  # key -> partial labels of the mask (training)
    mask_name: str | None = None
    val_keys: frozenset[str] = frozenset()  # training keys held out for choosing best.pt
    train_counts: list[int] | None = None  # samples per shard (index.json), as train_urls
    test_counts: list[int] | None = None
    train_held: list[int] | None = None  # held-out keys per train shard (None: not known, an older index)
    folder: DatasetFolder | None = None  # the dataset folder as read (its card: folder.card), None without one

    def fit_counts(self) -> tuple[list[int] | None, int]:
        """(samples per train shard the model learns from, how many of those may yet be held out)."""
        if not self.val_keys or self.train_counts is None:
            return self.train_counts, 0
        if self.train_held is not None:
            return [c - h for c, h in zip(self.train_counts, self.train_held)], 0
        return self.train_counts, len(self.val_keys)

    @property
    def fit_samples(self) -> int:
        """Training images the model learns from (the validation ones are held out)."""
        return self.train_samples - len(self.val_keys)

    def fit_partial(self) -> np.ndarray | None:
        """(N, C) partial labels of the images the model learns from (for DSRB's label graph)."""
        if not self.partial:
            return None
        return np.stack([row for k, row in self.partial.items() if k not in self.val_keys])


def resolve_data(dataset: str, mask: str | None, val_fraction: float = 0.0) -> DataSpec:
    """Read the manifest card, shard index and mask; refuse any fingerprint mismatch. With a mask and
    `val_fraction` > 0, hold out that fraction of its keys for validation."""
    dataset = str(dataset)
    folder = DatasetFolder(dataset)
    card = folder.card
    manifest = read_manifest(folder)  # the manifest itself intact (fingerprint, rows); cheap next to training
    index = read_index(dataset)
    where = folder.path(SHARDS_DIR, INDEX)
    check_fingerprint(index["fingerprint"], card["fingerprint"], where, "rebuild the shards (mlrpl write-shards)")
    # cheap consistency of the index with the manifest (mlrpl verify checks every sample)
    skipped = [s.get("split") for s in index["skipped"] if isinstance(s, dict)]
    for split, count in card["counts"].items():
        listed = int(index["splits"].get(split, 0))
        if listed + skipped.count(split) != count:
            raise BadInputError(f"{where}: lists {listed} {split} samples but the manifest has {count}"
                                f"{f' ({skipped.count(split)} skipped as bad)' if skipped.count(split) else ''}: "
                                f"shards are missing or foreign; run mlrpl verify {dataset}")
    partial = None
    if mask:
        m = read_mask(folder, mask, fingerprint=card["fingerprint"])
        if m.meta["split"] != "train":
            raise BadInputError(f"--masks {mask}: covers split {m.meta['split']}; training needs a mask of the train "
                                f"split (mlrpl make-masks {dataset} --split train)")
        partial = {k: row for k, row in zip(m.keys, m.labels)}
        if m.labels.size and not m.labels.any():  # every loss term would be 0: nothing to learn from
            raise BadInputError(f"--masks {mask}: holds no known label (every entry is 0, unknown); make a mask "
                                f"with a larger proportion (mlrpl make-masks {dataset} --proportion 0.1)")
    splits = index.get("splits", {})
    val_keys = validation_keys(partial, val_fraction) if partial else frozenset()
    counts = {sp: [s["samples"] for s in index["shards"] if s["split"] == sp] for sp in ("train", "test")}
    return DataSpec(train_counts=counts["train"], test_counts=counts["test"],
                    train_held=held_out_per_shard(manifest, index, val_keys) if val_keys else None,
                    dataset=dataset, fingerprint=card["fingerprint"], num_classes=int(card["num_classes"]),
                    class_names=folder.class_names, train_urls=shard_urls(dataset, "train", index),
                    test_urls=shard_urls(dataset, "test", index), train_samples=int(splits.get("train", 0)),
                    test_samples=int(splits.get("test", 0)), partial=partial, mask_name=mask,
                    val_keys=val_keys, folder=folder)


def held_out_per_shard(m, index: dict, held: frozenset[str]) -> list[int] | None:
    """Held-out keys in each train shard, from index.json alone: a shard holds the keys from its
    first to its last in write-shards' fixed order, less the skipped ones (None when the index does
    not say: an older one without first/last keys, or counts that do not add up)."""
    keys = m.keys[m.split_rows("train")]
    order = keys[sample_order(keys, m.fingerprint)]
    pos = {str(k): i for i, k in enumerate(order)}
    skipped = {s.get("key") for s in index["skipped"] if isinstance(s, dict)}
    out = []
    for s in (s for s in index["shards"] if s["split"] == "train"):
        if s["samples"] == 0:
            out.append(0)
            continue
        a, b = pos.get(str(s.get("first_key"))), pos.get(str(s.get("last_key")))
        if a is None or b is None or b < a:
            return None
        mine = [str(k) for k in order[a:b + 1] if str(k) not in skipped]
        if len(mine) != s["samples"]:
            return None
        out.append(sum(k in held for k in mine))
    return out


def dataloader(dataset: str, mask: str | None = None, split: str = "train", batch_size: int = 32,
               image_size: int = 448, augment: bool | None = None, workers: int = 0, seed: int = 0):
    """A torch DataLoader over a dataset's shards (a folder or URL), each image once per pass, in
    shard order. Batches hold "keys", "images" (B, size, size, 3) uint8 RGB, "labels" (the full
    labels: 1 present, -1 absent) and "partial" (the mask's labels, 0 unknown; the full labels
    without a mask). `augment` (default: on for train) is the training crop and flip. `mlrpl train`
    itself shuffles and cycles the training stream instead. With `workers` > 0, a script needs the
    `if __name__ == "__main__":` guard: workers start from a forkserver (loader.worker_context)."""
    from .loader import StreamConfig, make_loader

    if split not in ("train", "test"):
        raise BadInputError(f"split {split!r}: use train or test")
    spec = resolve_data(dataset, mask if split == "train" else None)
    sc = StreamConfig(urls=spec.train_urls if split == "train" else spec.test_urls, num_classes=spec.num_classes,
                      train=False, image_size=image_size, batch_size=batch_size, seed=seed, partial=spec.partial,
                      counts=spec.train_counts if split == "train" else spec.test_counts,
                      augment=split == "train" if augment is None else augment)
    return make_loader(sc, workers)
