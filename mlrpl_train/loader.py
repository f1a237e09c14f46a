"""The streaming loader, as explicit stages (each an iterator in, an iterator out):

shard URLs -> split by rank and worker -> read tar members (.jpg/.json only) -> shuffle buffer
-> skip (resume) -> decode -> join partial labels by key -> augment -> batch (DataLoader).

Determinism: the shuffle of (epoch, rank, worker, pass) and each sample's augmentation
(seed, epoch, key) come from seeded RNGs, so a run resumed mid-epoch sees the same batches.
Every rank yields the same number of batches per epoch: the training stream cycles over
the rank's share and the epoch is cut at len(train samples) // (world * batch) batches.
Untrusted shards: only `.jpg` and `.json` members are ever read (never pickles), images are
refused over a pixel limit, labels are checked, a corrupt sample is skipped and counted.
"""

from __future__ import annotations

import json
import random
import sys
import tarfile
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from mlrpl_data.errors import BadInputError, MlrplError
from mlrpl_data.images import MAX_PIXELS, BadImageError, decode_rgb
from mlrpl_data.shards import split_member

CROP_SCALES = (512, 448, 384, 320, 256)
BASE = 512


class ShardReadError(MlrplError):
    """A shard that cannot be opened or parsed (names the URL)."""


class BadSampleError(MlrplError):
    """A sample that fails its checks, with --on-bad-sample fail."""


@dataclass
class StreamConfig:
    """What a stream reads and how; picklable (it travels to DataLoader workers)."""

    urls: list[str]
    num_classes: int
    train: bool
    image_size: int = 448
    batch_size: int = 32
    seed: int = 0
    epoch: int = 0
    rank: int = 0
    world: int = 1
    shuffle_buffer: int = 1000
    skip_batches: int = 0
    max_pixels: int = MAX_PIXELS
    on_bad_sample: str = "skip"
    partial: dict[str, np.ndarray] | None = None  # key -> partial labels (training)
    crop_scales: tuple[int, ...] = CROP_SCALES
    augment: bool | None = None  # training augmentation; None: as `train` (prototypes: a single augmented pass)
    only: frozenset[str] | None = None  # keep these keys only (the validation stream)
    exclude: frozenset[str] = frozenset()  # drop these keys (the training stream drops the validation ones)
    counts: list[int] | None = None  # samples each shard gives this stream (index.json's, less held-out keys)
    unsure: int = 0  # samples of a share that may yet be dropped (held-out keys in unknown shards)

    @property
    def augmented(self) -> bool:
        return self.train if self.augment is None else self.augment


# ---- stage 1: which shards / which samples are mine -------------------------------------------

def deal(counts: list[int], readers: int, unsure: int = 0) -> list[tuple[list[int], int, int]]:
    """Who reads what, decided from the samples per shard (index.json's counts) alone, so every rank
    deals the same: for each of `readers` (rank x worker) slots, (shard indices, stride, offset).

    Non-empty shards are dealt whole, largest first to the least loaded reader, when every reader
    then gets at least half an even share (and more than `unsure` samples: the most of a share that
    may yet be dropped, e.g. held-out validation keys whose shard is unknown). Otherwise every reader
    reads all non-empty shards and keeps every `readers`-th sample: shares within one sample of even.
    An empty shard is never dealt, so no reader is left with nothing while another has samples.
    """
    full = [i for i, c in enumerate(counts) if c > 0]
    total, load, dealt = sum(counts[i] for i in full), [0] * readers, [[] for _ in range(readers)]
    for i in sorted(full, key=lambda i: (-counts[i], i)):
        g = min(range(readers), key=lambda r: (load[r], r))
        load[g] += counts[i]
        dealt[g].append(i)
    if min(load) > unsure and 2 * min(load) * readers >= total:
        return [(sorted(d), 1, 0) for d in dealt]
    return [(full, readers, g) for g in range(readers)]


def my_share(urls: list[str], rank: int, world: int, worker: int, workers: int,
             counts: list[int] | None = None, unsure: int = 0) -> tuple[list[str], int, int]:
    """(urls to read, sample stride, sample offset) for one worker of one rank (see `deal`; without
    counts every shard counts as one sample)."""
    idx, stride, offset = deal(list(counts) if counts is not None else [1] * len(urls), world * workers,
                               unsure)[rank * workers + worker]
    return [urls[i] for i in idx], stride, offset


# ---- stage 2: tar members -> raw samples ----------------------------------------------------------

def read_samples(urls: list[str]) -> Iterator[dict[str, Any]]:
    """Group `.jpg` and `.json` members by key; every other member is skipped unread.

    A remote shard whose read fails in a transient way (a dropped connection, a body cut short)
    is opened again and read on after the samples already given out; after the last try the
    error names the shard, so a rank stops instead of hanging.
    """
    import time

    from mlrpl_data import retry
    from mlrpl_data.readers import file_size, is_remote
    from mlrpl_data.timeouts import describe

    for url in urls:
        try:
            file_size(url)  # a regular file (never a device or a FIFO), or a clear error
        except MlrplError as e:
            raise ShardReadError(str(e)) from None
        given, tries = 0, retry.attempts() if is_remote(url) else 1
        for attempt in range(tries):
            try:
                for i, sample in enumerate(_shard_samples(url)):
                    if i >= given:  # a re-read resumes after what was given out
                        given += 1
                        yield sample
                break
            except Exception as e:
                cut_short = isinstance(e, (tarfile.TarError, EOFError))  # a body that ended early, remotely
                if not retry.read_again(e, attempt, tries, cut_short):
                    raise ShardReadError(f"{url}: cannot read shard ({describe(e)})"
                                         + (f" after {tries} tries" if tries > 1 else "")) from None
                time.sleep(retry.delay(attempt))


def _shard_samples(url: str) -> Iterator[dict[str, Any]]:
    from mlrpl_data.readers import open_binary

    current: dict[str, Any] | None = None
    with open_binary(url) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            parts = split_member(member.name) if member.isfile() else None
            if parts is None:
                continue
            key, ext = parts
            if ext not in ("jpg", "json"):
                continue  # never decode pickles, .pth or anything else an untrusted shard holds
            data = tar.extractfile(member).read()
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key, "__url__": url}
            current[ext] = data
    if current is not None:
        yield current


def select_keys(samples: Iterator[dict], only: frozenset[str] | None, exclude: frozenset[str]) -> Iterator[dict]:
    """Keep the samples of `only` (when given) and not of `exclude`, before anything is decoded."""
    for s in samples:
        if (only is None or s["__key__"] in only) and s["__key__"] not in exclude:
            yield s


def take_every(samples: Iterator[dict], stride: int, offset: int) -> Iterator[dict]:
    for i, s in enumerate(samples):
        if i % stride == offset:
            yield s


def shuffle(samples: Iterator[dict], bufsize: int, rng: random.Random) -> Iterator[dict]:
    """A reservoir shuffle buffer (bounded memory)."""
    buf: list[dict] = []
    for s in samples:
        if len(buf) < bufsize:
            buf.append(s)
            continue
        i = rng.randrange(len(buf))
        buf[i], s = s, buf[i]
        yield s
    rng.shuffle(buf)
    yield from buf


def skip(samples: Iterator[dict], n: int) -> Iterator[dict]:
    for i, s in enumerate(samples):
        if i >= n:
            yield s


# ---- stage 3: decode and check ---------------------------------------------------------------------

def check_labels(labels: Any, num_classes: int, where: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.shape != (num_classes,) or not np.isin(arr, (-1, 0, 1)).all():
        raise BadSampleError(f"{where}: labels must be {num_classes} values in {{-1,0,1}}")
    return arr.astype(np.int8)


def decode(samples: Iterator[dict], cfg: StreamConfig, counter: list[int]) -> Iterator[dict]:
    """Raw bytes -> PIL RGB image + full labels; a bad sample is skipped and counted (or raises)."""
    for s in samples:
        where = f"{s['__url__']} sample {s['__key__']}"
        try:
            if "jpg" not in s or "json" not in s:
                raise BadSampleError(f"{where}: needs both .jpg and .json members")
            try:
                meta = json.loads(s["json"])
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise BadSampleError(f"{where}: malformed .json member") from None
            labels = check_labels(meta.get("labels"), cfg.num_classes, where)
            image = decode_rgb(s["jpg"], where, max_pixels=cfg.max_pixels)
        except (BadSampleError, BadImageError) as e:
            if cfg.on_bad_sample == "fail":
                raise BadSampleError(str(e)) from None
            print(f"warning: skipped bad sample: {e}", file=sys.stderr)
            counter[0] += 1
            continue
        yield {"key": s["__key__"], "image": image, "labels": labels}


def join_partial(samples: Iterator[dict], partial: dict[str, np.ndarray] | None, cfg: StreamConfig,
                 counter: list[int]) -> Iterator[dict]:
    """Attach the mask's partial labels by key (training); the full labels stay for evaluation.

    A sample whose labels contradict what the mask knows (a shard altered after the mask was
    made) is a bad sample: skipped and counted, or an error with --on-bad-sample fail."""
    for s in samples:
        if partial is not None:
            try:
                known = partial[s["key"]]
            except KeyError:
                raise BadSampleError(f"sample {s['key']} has no row in the mask: the mask does not cover this split") from None
            seen = known != 0
            if (known[seen] != s["labels"][seen]).any():
                msg = f"sample {s['key']}: its labels differ from the mask's known labels (altered shard?)"
                if cfg.on_bad_sample == "fail":
                    raise BadSampleError(msg)
                print(f"warning: skipped bad sample: {msg}", file=sys.stderr)
                counter[0] += 1
                continue
            s["partial"] = known
        else:
            s["partial"] = s["labels"]
        yield s


# ---- stage 4: augmentation (one fused resize) ---------------------------------------------------------

def train_crop_box(width: int, height: int, rng: random.Random,
                   scales: tuple[int, ...] = CROP_SCALES) -> tuple[float, float, float, float]:
    """The published crop (resize to 512x512, random square crop of a size in CROP_SCALES) as a
    box in ORIGINAL coordinates, so one resize from the box replaces resize-crop-resize."""
    s = rng.choice(scales)
    x0, y0 = rng.randint(0, BASE - s), rng.randint(0, BASE - s)
    sx, sy = width / BASE, height / BASE
    return (x0 * sx, y0 * sy, (x0 + s) * sx, (y0 + s) * sy)


def augment_image(image: Image.Image, train: bool, size: int, rng: random.Random,
                  scales: tuple[int, ...] = CROP_SCALES) -> np.ndarray:
    """PIL RGB -> (size, size, 3) uint8: fused crop+resize and flip (train) or plain resize (test)."""
    if train:
        box = train_crop_box(*image.size, rng, scales)
        out = image.resize((size, size), Image.BICUBIC, box=box)
        if rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
    else:
        out = image.resize((size, size), Image.BICUBIC)
    return np.array(out, dtype=np.uint8)  # a writable copy (torch refuses read-only buffers)


def augment(samples: Iterator[dict], cfg: StreamConfig) -> Iterator[dict]:
    for s in samples:
        rng = random.Random(f"{cfg.seed}:{cfg.epoch}:{s['key']}")
        yield {"key": s["key"], "image": torch.from_numpy(augment_image(s.pop("image"), cfg.augmented, cfg.image_size, rng, tuple(cfg.crop_scales))),
               "partial": torch.tensor(s["partial"]), "labels": torch.tensor(s["labels"])}


# ---- the dataset: the stages chained per worker ------------------------------------------------------

class ShardStream(torch.utils.data.IterableDataset):
    """Yields augmented samples; training streams cycle over the share forever (the engine cuts
    the epoch at a fixed number of batches); test streams read each sample exactly once."""

    def __init__(self, cfg: StreamConfig):
        super().__init__()
        self.cfg = cfg

    def __iter__(self) -> Iterator[dict]:
        cfg = self.cfg
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if cfg.train:
            # the DataLoader deals batches to workers round-robin from worker 0. Resumed after k
            # batches, batch k comes from worker 0 but was made by worker k % W: so worker w plays
            # the logical worker (w + k) % W, and skips that worker's share of the first k batches.
            worker = (worker + cfg.skip_batches) % workers
        urls, stride, offset = my_share(cfg.urls, cfg.rank, cfg.world, worker, workers, cfg.counts, cfg.unsure)
        counter = [0]
        if cfg.train:
            raw = self._cycle(urls, stride, offset, worker)
            mine = len(range(worker, cfg.skip_batches, workers))
            raw = skip(raw, mine * cfg.batch_size)
        else:
            raw = take_every(select_keys(read_samples(urls), cfg.only, cfg.exclude), stride, offset)
        stream = augment(join_partial(decode(raw, cfg, counter), cfg.partial, cfg, counter), cfg)
        for s in stream:
            s["bad"] = counter[0]
            counter[0] = 0
            yield s

    def _cycle(self, urls, stride, offset, worker) -> Iterator[dict]:
        cfg = self.cfg
        if not urls:
            return
        for p in range(10**9):
            rng = random.Random(f"{cfg.seed}:{cfg.epoch}:{cfg.rank}:{worker}:{p}")
            order = list(urls)
            # readers that stride through the same shards must see them in the same order, or they overlap
            (rng if stride == 1 else random.Random(f"{cfg.seed}:{cfg.epoch}:{p}")).shuffle(order)
            mine = take_every(select_keys(read_samples(order), cfg.only, cfg.exclude), stride, offset)
            n = 0
            for s in shuffle(mine, cfg.shuffle_buffer, rng):
                n += 1
                yield s
            if n == 0:  # an empty share would end this worker's batches and shift every other worker's
                raise BadInputError(f"training loader worker {worker} of rank {cfg.rank} has no image to train on "
                                    f"(its share of {len(urls)} shard(s), without the validation images, is empty): "
                                    f"lower --workers")


def collate(samples: list[dict]) -> dict[str, Any]:
    return {
        "keys": [s["key"] for s in samples],
        "images": torch.stack([s["image"] for s in samples]),  # (B, H, W, 3) uint8
        "partial": torch.stack([s["partial"] for s in samples]),  # (B, C) int8
        "labels": torch.stack([s["labels"] for s in samples]),  # (B, C) int8
        "bad": sum(s["bad"] for s in samples),
    }


def batches_per_epoch(samples: int, world: int, batch_size: int, held_out: int = 0) -> int:
    n = samples // (world * batch_size)
    if n < 1:
        why = f" ({held_out} more held out for validation: --val-fraction)" if held_out else ""
        raise BadInputError(f"{samples} training samples{why} are fewer than one batch of {batch_size} per rank "
                            f"({world} rank{'s' if world > 1 else ''}): lower --batch-size")
    return n


def check_readers(samples: int, world: int, workers: int) -> None:
    """Every rank x loader worker must get a sample to train on (`deal` gives each one when there are
    at least as many samples as readers), or a rank would end its epoch early and the others wait."""
    readers = world * max(1, workers)
    if samples < readers:
        raise BadInputError(f"{samples} training samples cannot feed {world} rank{'s' if world > 1 else ''} x "
                            f"{max(1, workers)} loader worker(s) = {readers} readers, one sample each at least: "
                            f"lower --workers")


def _worker_init(_: int) -> None:
    """A loader worker ignores SIGTERM: Slurm signals every process of a job, and the main process,
    interrupted, ends its workers itself (a worker killed first would turn the interrupt into a
    'worker killed' error and a traceback at exit)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # a worker's errors reach the main process through the DataLoader, never through sys.excepthook; the
    # hook only prints the fd-sharing thread's broken pipe when an interrupted main process goes away
    from mlrpl_data.errors import quiet_exit

    quiet_exit()


def make_loader(cfg: StreamConfig, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        ShardStream(cfg), batch_size=cfg.batch_size, num_workers=workers, collate_fn=collate,
        worker_init_fn=_worker_init if workers > 0 else None,
        drop_last=cfg.train, persistent_workers=False,  # never a short training batch (BatchNorm)
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers > 0 else None,
    )
