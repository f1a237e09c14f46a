"""`mlrpl verify`: the whole chain, not just checksums.

A forger who edits a shard and re-makes its checksums is caught because every layer is checked
against the one above it: the manifest against its fingerprint; the index against the manifest
(split totals); every shard against the index (size, sha256, sample count, key range) AND
against the manifest (each key in exactly one shard of its own split, once; its labels equal
the manifest's); every mask against the manifest (its split's keys exactly, values in
{-1, 0, 1}, its content hash). Reads are bounded: only regular files, never more bytes than
the index promises (a shard linked to /dev/zero ends the read, it does not hang it).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import retry
from .errors import BadInputError
from .manifest import SPLITS, Manifest
from .folder import read_manifest
from .folder import INDEX, MASKS_DIR, SHARDS_DIR, DatasetFolder
from .masks import read_mask
from .progress import progress_bar
from .readers import MissingFileError, file_size, is_remote, join, open_binary
from .shards import read_index, split_member

JSON_MEMBER_LIMIT = 1 << 20


def verify(url: str, progress: bool = False, split: str = "all") -> list[str]:
    """Every problem found (empty: all is consistent). An unreadable manifest raises instead.
    `split` train or test checks that split's shards only (a `mlrpl pull --split` copy)."""
    url = str(url).rstrip("/")
    m = read_manifest(url)
    try:
        index = read_index(url)
    except BadInputError as e:
        return [str(e)]
    problems: list[str] = []
    if index["fingerprint"] != m.fingerprint:
        problems.append(f"{join(url, SHARDS_DIR, INDEX)}: made from manifest {index['fingerprint']} but the dataset "
                        f"is {m.fingerprint}")
    chain = _Chain(m)
    skipped = {s.get("key") for s in index["skipped"] if isinstance(s, dict)}
    splits = SPLITS if split == "all" else (str(split),)
    shards = [s for s in index["shards"] if s["split"] in splits]
    bar = progress_bar(sum(s["bytes"] for s in shards), "verify", "B", progress, unit_scale=True)
    with bar:
        for s in shards:
            problems += check_shard(join(url, SHARDS_DIR, s["name"]), s, chain, bar.update)
    for sp in SPLITS:
        want = set(m.keys[m.split_rows(sp)]) - skipped
        have = {k for k in chain.placed if chain.split_of.get(k) == sp}
        missing = sorted(want - have)
        if missing and sp in splits:
            problems.append(f"{url}: {len(missing)} {sp} image(s) of the manifest are in no shard "
                            f"(e.g. {', '.join(missing[:3])}); re-run mlrpl write-shards")
        listed = index["splits"].get(sp, 0)
        if listed != len(want):
            problems.append(f"{join(url, SHARDS_DIR, INDEX)}: lists {listed} {sp} samples, the manifest has "
                            f"{len(want)} (besides {len(skipped & set(m.keys[m.split_rows(sp)]))} skipped)")
    problems += check_masks(url, m)
    return problems


class _Chain:
    """What the manifest says, and which shard each key was found in so far."""

    def __init__(self, m: Manifest):
        keys = m.keys
        self.split_of = dict(zip(keys, m.images["split"]))
        self.row_of = {k: i for i, k in enumerate(keys)}
        self.labels = m.labels
        self.placed: dict[str, str] = {}


def check_shard(shard_url: str, entry: dict[str, Any], chain: _Chain, on_read=lambda n: None) -> list[str]:
    """One shard against its index entry and the manifest."""
    problems: list[str] = []
    try:
        size = file_size(shard_url)
    except MissingFileError:
        return [f"{shard_url}: missing"]
    except BadInputError as e:
        return [str(e)]
    if size != entry["bytes"]:
        problems.append(f"{shard_url}: {size:,} bytes, index says {entry['bytes']:,} (truncated or altered)")
    tries = retry.attempts() if is_remote(shard_url) else 1
    read = _Read()

    def cut_short(e: BaseException) -> bool:  # a remote body that ended before the file did: read it again
        return isinstance(e, (tarfile.TarError, EOFError)) and read.n < size

    try:  # a transient remote failure reads the shard again, from the start
        keys, sha256, over = retry.with_retries(lambda: _read_shard(shard_url, entry, chain, size, on_read, read),
                                                tries, also=cut_short)
    except Exception as e:
        if not isinstance(e, (tarfile.TarError, OSError, EOFError)) and not retry.is_transient(e):
            raise
        retried = tries > 1 and (retry.is_transient(e) or cut_short(e))  # else it was read once
        return problems + read.found + [f"{shard_url}: unreadable or truncated tar ({type(e).__name__}: {e})"
                                        + (f" after {tries} tries" if retried else "")]
    return problems + read.found + _against_index(shard_url, entry, chain, keys, sha256, size, over)


@dataclass
class _Read:
    """What the current read of a shard has seen: bytes, and problems of its members."""

    n: int = 0
    found: list[str] = field(default_factory=list)


def _read_shard(shard_url: str, entry: dict[str, Any], chain: _Chain, size: int, on_read,
                read: _Read) -> tuple[list[str], str, bool]:
    """One read of a shard front to back, at most the index's byte count: its sample keys in
    order, its sha256, and whether it holds more than the index says (problems of its members
    go to `read.found`, the bytes read to `read.n`)."""
    h = hashlib.sha256()
    keys: list[str] = []
    members: set[str] = set()
    read.n, read.found = 0, []
    with open_binary(shard_url) as f:
        reader = _Bounded(f, h, entry["bytes"], on_read, read)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                read.found += _check_member(shard_url, tar, member, members, keys, entry["split"], chain)
        while reader.read(1 << 20):  # hash the tar's end padding as well
            pass
        over = reader.exhausted and bool(f.read(1))
    if read.n < min(size, entry["bytes"]):  # the stream ended before the file did: a cut transfer
        raise retry.Corrupted(f"read {read.n:,} of {size:,} bytes")
    return keys, h.hexdigest(), over


def _against_index(shard_url: str, entry: dict[str, Any], chain: _Chain, keys: list[str], sha256: str, size: int,
                   over: bool) -> list[str]:
    """What a whole read of a shard (its keys in order, sha256, size, whether it ran past the index's
    byte count) says against its index entry, and keys placed in two shards (chain.placed)."""
    problems = []
    if over:
        problems.append(f"{shard_url}: holds more than the {entry['bytes']:,} bytes the index says (altered)")
    elif size == entry["bytes"] and sha256 != entry["sha256"]:
        problems.append(f"{shard_url}: sha256 {sha256[:16]}… differs from the index {entry['sha256'][:16]}… (altered)")
    if len(keys) != entry["samples"]:
        problems.append(f"{shard_url}: {len(keys)} samples, index says {entry['samples']}")
    if keys and (keys[0] != entry.get("first_key") or keys[-1] != entry.get("last_key")):
        problems.append(f"{shard_url}: key range {keys[0]}..{keys[-1]} differs from the index")
    for k in keys:
        if k in chain.placed:
            problems.append(f"{shard_url}: key {k} also in {chain.placed[k]}")
        else:
            chain.placed[k] = entry["name"]
    return problems


def _check_member(shard_url, tar, member, members, keys, split, chain: _Chain) -> list[str]:
    name = member.name
    parts = split_member(name) if member.isfile() and "/" not in name else None
    if parts is None:
        return [f"{shard_url}: member {name!r} is not a sample file (<key>.jpg / <key>.json)"]
    if name in members:
        return [f"{shard_url}: member {name} appears twice"]
    members.add(name)
    key, ext = parts
    if ext == "jpg":
        return []
    if ext != "json":
        return [f"{shard_url}: unexpected member {name} (a shard holds only .jpg and .json)"]
    keys.append(key)
    if key not in chain.split_of:
        return [f"{shard_url}: key {key} is not in the manifest"]
    if chain.split_of[key] != split:
        return [f"{shard_url}: key {key} belongs to split {chain.split_of[key]}, not {split}"]
    if member.size > JSON_MEMBER_LIMIT:
        return [f"{shard_url}: {name} is {member.size:,} bytes, too large for a sample's JSON"]
    try:
        doc = json.loads(tar.extractfile(member).read())
        labels = doc["labels"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return [f"{shard_url}: {name} is not a sample's JSON with labels"]
    if not np.array_equal(np.asarray(labels), chain.labels[chain.row_of[key]]):
        return [f"{shard_url}: {key}'s labels differ from the manifest's (altered)"]
    return []


def check_masks(url: str, m: Manifest) -> list[str]:
    """Every mask of the dataset: readable, of this manifest, holding exactly its split's keys."""
    problems = []
    for name in DatasetFolder(url).mask_names():
        try:
            mask = read_mask(url, name, fingerprint=m.fingerprint)
        except BadInputError as e:
            problems.append(str(e))
            continue
        split = mask.meta["split"]
        want = set(m.keys if split == "all" else m.keys[m.split_rows(split)])
        have = set(mask.keys)
        if have != want:
            extra, lacking = sorted(have - want), sorted(want - have)
            detail = (f"{len(extra)} key(s) not of its split, e.g. {extra[0]}" if extra else
                      f"lacks {len(lacking)} key(s) of its split, e.g. {lacking[0]}")
            problems.append(f"{join(url, MASKS_DIR, name)}: {detail} ({split})")
    return problems


class _Bounded(io.RawIOBase):
    """A read-only stream that hashes and counts what is read through it and stops at `limit` bytes."""

    def __init__(self, f, h, limit: int, on_read, read: _Read):
        self.f, self.h, self.limit, self.on_read, self.seen = f, h, limit, on_read, read

    @property
    def n(self) -> int:
        return self.seen.n

    @property
    def exhausted(self) -> bool:
        return self.n >= self.limit

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def read(self, size=-1) -> bytes:
        room = self.limit - self.n
        size = room if size is None or size < 0 else min(size, room)
        data = self.f.read(size) if size > 0 else b""
        self.h.update(data)
        self.seen.n += len(data)
        self.on_read(len(data))
        return data
