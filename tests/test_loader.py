import io
import json
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlrpl_data.errors import FingerprintMismatchError
from mlrpl_train.loader import (BadSampleError, ShardReadError, StreamConfig, augment_image, batches_per_epoch,
                                make_loader, my_share, train_crop_box)
from mlrpl_train.data import resolve_data

from trainkit import tiny_training_set


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_training_set(tmp_path_factory.mktemp("loader"))


def cfg_for(spec, train, **kw):
    base = dict(urls=spec.train_urls if train else spec.test_urls, num_classes=spec.num_classes, train=train,
                image_size=16, batch_size=4, partial=spec.partial if train else None, shuffle_buffer=8)
    base.update(kw)
    return StreamConfig(**base)


def keys_of(cfg, workers):
    return [k for b in make_loader(cfg, workers) for k in b["keys"]]


def test_my_share_deals_shards_or_strides_samples():
    urls = [f"s{i}" for i in range(5)]
    shares = [my_share(urls, r, 2, w, 2) for r in range(2) for w in range(2)]
    assert sorted(u for s in shares for u in s[0]) == urls and all(s[1] == 1 for s in shares)
    few = [my_share(urls[:2], r, 2, w, 2) for r in range(2) for w in range(2)]
    assert [(s[1], s[2]) for s in few] == [(4, 0), (4, 1), (4, 2), (4, 3)]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("n_shards", [1, 2, 10])
def test_evaluation_reads_every_test_image_once_across_ranks(data, workers, n_shards):
    spec = resolve_data(str(data), "uniform-p0.50-s0")
    urls = (spec.test_urls * 10)[:n_shards] if n_shards <= len(spec.test_urls) else spec.test_urls
    if n_shards < len(spec.test_urls):
        urls = spec.test_urls[:n_shards]
    seen = []
    for rank in range(2):
        seen += keys_of(cfg_for(spec, False, urls=urls, rank=rank, world=2), workers)
    expected = []
    for u in urls:
        with tarfile.open(u) as t:
            expected += [m.name[:-5] for m in t.getmembers() if m.name.endswith(".json")]
    assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))


def take(cfg, workers, n):
    return [b["keys"] for b, _ in zip(make_loader(cfg, workers), range(n))]


def test_every_rank_gets_the_same_number_of_batches_even_with_few_shards(data):
    spec = resolve_data(str(data), "uniform-p0.50-s0")
    n = batches_per_epoch(spec.train_samples, 3, 4)
    for urls in (spec.train_urls, spec.train_urls[:1]):  # 6 shards, then fewer shards than ranks x workers
        for rank in range(3):
            batches = take(cfg_for(spec, True, urls=urls, rank=rank, world=3), 2, n)
            assert len(batches) == n and all(len(b) == 4 for b in batches)


def test_shuffle_changes_with_epoch_and_is_stable_within(data):
    spec = resolve_data(str(data), "uniform-p0.50-s0")
    a = take(cfg_for(spec, True, epoch=0), 2, 6)
    assert a == take(cfg_for(spec, True, epoch=0), 2, 6)
    assert a != take(cfg_for(spec, True, epoch=1), 2, 6)  # no frozen shuffle seed


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_skip_gives_the_same_following_batches(data, workers):
    spec = resolve_data(str(data), "uniform-p0.50-s0")
    full = [b for b, _ in zip(make_loader(cfg_for(spec, True, epoch=1), workers), range(8))]
    resumed = [b for b, _ in zip(make_loader(cfg_for(spec, True, epoch=1, skip_batches=3), workers), range(5))]
    for a, b in zip(full[3:], resumed):
        assert a["keys"] == b["keys"] and torch.equal(a["images"], b["images"]) and torch.equal(a["partial"], b["partial"])


def test_partial_labels_joined_by_key(data):
    spec = resolve_data(str(data), "uniform-p0.50-s0")
    for b, _ in zip(make_loader(cfg_for(spec, True), 0), range(3)):
        for k, p, full in zip(b["keys"], b["partial"], b["labels"]):
            assert p.tolist() == spec.partial[k].tolist()
            known = p != 0
            assert torch.equal(p[known], full[known])
    assert b["images"].dtype == torch.uint8 and b["images"].shape == (4, 16, 16, 3)  # uint8 until the device


def test_partial_labels_reach_worker_processes_row_for_row(data):
    """Workers get the config pickled (partial as a key list and one array): every row intact."""
    import pickle

    spec = resolve_data(str(data), "uniform-p0.50-s0")
    back = pickle.loads(pickle.dumps(cfg_for(spec, True)))
    assert list(back.partial) == list(spec.partial)
    assert all(np.array_equal(back.partial[k], v) and back.partial[k].dtype == np.int8 for k, v in spec.partial.items())
    assert pickle.loads(pickle.dumps(cfg_for(spec, True, partial={}))).partial == {}
    for b, _ in zip(make_loader(cfg_for(spec, True), 2), range(3)):
        for k, p in zip(b["keys"], b["partial"]):
            assert p.tolist() == spec.partial[k].tolist()


FORK_DEADLOCK = """
import os, sys, threading
from mlrpl_train.data import resolve_data
from mlrpl_train.loader import StreamConfig, make_loader
lock = threading.Lock()
os.register_at_fork(after_in_child=lock.acquire)  # a child forked from here takes the lock...
held = threading.Event()
threading.Thread(target=lambda: (lock.acquire(), held.set(), threading.Event().wait()), daemon=True).start()
held.wait()  # ...which another thread holds: a forked child waits forever (as a rank's worker did under DDP)
spec = resolve_data(sys.argv[1], None)
cfg = StreamConfig(urls=spec.test_urls, num_classes=spec.num_classes, train=False, image_size=16, batch_size=4)
print(sum(len(b["keys"]) for b in make_loader(cfg, 2)))
"""


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="no fork on this platform")
def test_workers_start_even_when_another_thread_holds_a_lock(data):
    """Loader workers are not forked from this process (a fork copies a lock held by another thread,
    locked for ever: the DDP hang CI saw once): they start from a forkserver."""
    r = subprocess.run([sys.executable, "-c", FORK_DEADLOCK, str(data)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.split()[-1]) == resolve_data(str(data), None).test_samples


LIVE_AT_EXIT = """
import sys
from mlrpl_train.data import resolve_data
from mlrpl_train.loader import StreamConfig, make_loader
spec = resolve_data(sys.argv[1], None)
cfg = StreamConfig(urls=spec.train_urls, num_classes=spec.num_classes, train=True, image_size=16, batch_size=4)
it = iter(make_loader(cfg, 2))  # a training stream cycles: its workers never end by themselves
print(len(next(it)["keys"]))
sys.exit(7)  # `it` is still referenced at exit (as by an error's traceback)
"""


def test_a_process_exits_with_loader_workers_still_alive(data):
    """Workers ignore SIGTERM (Slurm); at exit they are still ended, not waited for for ever."""
    r = subprocess.run([sys.executable, "-c", LIVE_AT_EXIT, str(data)], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout.split()) == (7, ["4"]), r.stderr[-2000:]


def test_mask_of_another_manifest_refused(data, tmp_path):
    spec = resolve_data(str(data), None)
    other = tiny_training_set(tmp_path, n_train=20, n_test=4)
    saved = {ext: (data / "masks" / f"uniform-p0.50-s0.{ext}").read_bytes() for ext in ("json", "parquet")}
    for ext in saved:  # the same mask name, made from another dataset
        (data / "masks" / f"uniform-p0.50-s0.{ext}").write_bytes((other / "masks" / f"uniform-p0.50-s0.{ext}").read_bytes())
    try:
        with pytest.raises(FingerprintMismatchError, match=spec.fingerprint):
            resolve_data(str(data), "uniform-p0.50-s0")
    finally:
        for ext, blob in saved.items():
            (data / "masks" / f"uniform-p0.50-s0.{ext}").write_bytes(blob)


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as t:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return str(path)


def jpeg(size=(20, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (9, 9, 9)).save(buf, "JPEG")
    return buf.getvalue()


class Boom:
    def __reduce__(self):
        return (Path.write_text, (Path(BOOM_FILE), "pwned"))


BOOM_FILE = ""


def test_untrusted_shard_pickles_are_never_loaded(tmp_path):
    import pickle

    global BOOM_FILE
    BOOM_FILE = str(tmp_path / "executed")
    meta = json.dumps({"labels": [1, -1, 1]}).encode()
    url = write_tar(tmp_path / "evil.tar", [("a.jpg", jpeg()), ("a.json", meta), ("a.pyd", pickle.dumps(Boom())),
                                             ("a.pth", pickle.dumps(Boom())), ("b.jpg", jpeg()), ("b.json", meta)])
    cfg = StreamConfig(urls=[url], num_classes=3, train=False, image_size=8, batch_size=2)
    batches = list(make_loader(cfg, 0))
    assert batches[0]["keys"] == ["a", "b"]
    assert not Path(BOOM_FILE).exists()
    # what WebDataset's default decoding would do with the same member: it runs the payload
    pickle.loads(pickle.dumps(Boom()))
    assert Path(BOOM_FILE).exists()


def test_bad_samples_skipped_and_counted_or_fail(tmp_path):
    good = json.dumps({"labels": [1, -1, 1]}).encode()
    url = write_tar(tmp_path / "s.tar", [
        ("a.jpg", jpeg()), ("a.json", good),
        ("b.jpg", jpeg()[:50]), ("b.json", good),                          # corrupt image
        ("c.jpg", jpeg()), ("c.json", json.dumps({"labels": [1, 2]}).encode()),  # bad labels
        ("d.jpg", jpeg((300, 300))), ("d.json", good),                     # over the pixel limit
        ("e.jpg", jpeg()), ("e.json", good)])
    cfg = StreamConfig(urls=[url], num_classes=3, train=False, image_size=8, batch_size=8, max_pixels=10000)
    [batch] = list(make_loader(cfg, 0))
    assert batch["keys"] == ["a", "e"] and batch["bad"] == 3
    cfg.on_bad_sample = "fail"
    with pytest.raises(BadSampleError, match="s.tar sample b"):
        list(make_loader(cfg, 0))


def test_unreadable_shard_names_its_url(tmp_path):
    bad = tmp_path / "broken.tar"
    bad.write_bytes(b"this is not a tar" * 100)
    cfg = StreamConfig(urls=[str(bad)], num_classes=3, train=False, image_size=8, batch_size=2)
    with pytest.raises(ShardReadError, match="broken.tar"):
        list(make_loader(cfg, 0))


def test_crop_boxes_follow_the_published_distribution():
    rng = random.Random(0)
    sizes = set()
    for _ in range(500):
        x0, y0, x1, y1 = train_crop_box(640, 480, rng)
        s = round((x1 - x0) * 512 / 640)
        assert round((y1 - y0) * 512 / 480) == s and 0 <= x0 and x1 <= 640 + 1e-6 and y1 <= 480 + 1e-6
        sizes.add(s)
    assert sizes == {512, 448, 384, 320, 256}


def test_fused_resize_matches_the_two_resize_reference():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    arr = np.stack([128 + 100 * np.sin(xx / 37.0), 128 + 100 * np.cos(yy / 23.0), (xx + yy) % 256], -1)
    im = Image.fromarray(np.clip(arr + rng.normal(0, 5, arr.shape), 0, 255).astype(np.uint8))
    errors = []
    for seed in range(10):
        x0, y0, x1, y1 = train_crop_box(*im.size, random.Random(seed))
        s = round((x1 - x0) * 512 / 640)
        px, py = round(x0 * 512 / 640), round(y0 * 512 / 480)
        ref = im.resize((512, 512), Image.BICUBIC).crop((px, py, px + s, py + s)).resize((448, 448), Image.BICUBIC)
        fused = im.resize((448, 448), Image.BICUBIC, box=(x0, y0, x1, y1))
        errors.append(np.abs(np.asarray(ref, float) - np.asarray(fused, float)).mean())
    assert max(errors) < 4.0, errors  # mean absolute error in 0..255 units


def test_augment_flip_and_test_resize():
    im = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8)[None, :, None], (32, 1, 3)))
    test = augment_image(im, False, 16, random.Random(0))
    assert test.shape == (16, 16, 3) and test[0, 0, 0] < test[0, -1, 0]
    flips = {bool(augment_image(im, True, 16, random.Random(s))[0, 0, 0] > augment_image(im, True, 16, random.Random(s))[0, -1, 0]) for s in range(20)}
    assert flips == {True, False}


def test_one_epoch_is_counted_in_samples_and_sees_each_once(data):
    """An epoch is len(train) // (world * batch) batches, and with one reader it is exactly one pass."""
    spec = resolve_data(str(data), "uniform-p0.50-s0")
    n = batches_per_epoch(spec.train_samples, 1, 4)
    assert n == spec.train_samples // 4
    keys = [k for b in take(cfg_for(spec, True), 0, n) for k in b]
    assert sorted(keys) == sorted(spec.partial)  # every training image once, none twice


def samples_of(counts, readers, unsure=0):
    """The (shard, position) pairs each reader of `deal` reads, simulated from the counts alone."""
    from mlrpl_train.loader import deal

    everything = [(i, j) for i, c in enumerate(counts) for j in range(c)]
    out = []
    for idx, stride, offset in deal(counts, readers, unsure):
        stream = [(i, j) for i in idx for j in range(counts[i])]
        out.append(stream[offset::stride])
    return everything, out


@pytest.mark.fuzzclass("ranks, workers and batches")
def test_deal_gives_every_reader_samples_each_once_over_many_layouts():
    rng = random.Random(0)
    layouts = [[7, 0], [0, 7], [1, 0, 0, 1], [5, 1, 1, 1, 4], [100, 1, 1], [3, 3, 3, 0, 0, 0]]
    layouts += [[rng.choice([0, 0, 1, 2, 7, 40]) for _ in range(rng.randint(1, 12))] for _ in range(300)]
    for counts in layouts:
        for readers in range(1, 9):
            everything, shares = samples_of(counts, readers)
            got = [s for share in shares for s in share]
            assert sorted(got) == everything, (counts, readers)  # each sample read once, by one reader
            total = len(everything)
            if total >= readers:
                sizes = [len(s) for s in shares]
                assert min(sizes) >= 1 and 2 * min(sizes) * readers >= total, (counts, readers, sizes)


@pytest.mark.fuzzclass("ranks, workers and batches")
def test_deal_values_for_an_empty_shard_and_uneven_shards():
    from mlrpl_train.loader import deal

    # the issue's layout: 2 ranks, rank 1's only shard empty (its image skipped): both stride the full shard
    assert deal([7, 0], 2) == [([0], 2, 0), ([0], 2, 1)] and share_sizes([7, 0], 2) == [4, 3]
    assert deal([5, 1, 1, 1, 4], 2) == [([0, 2], 1, 0), ([1, 3, 4], 1, 0)]  # largest first: 6 and 6 samples
    assert deal([100, 1, 1], 2) == [([0, 1, 2], 2, 0), ([0, 1, 2], 2, 1)]  # 100 vs 2 dealt whole: stride instead
    assert deal([1] * 5, 4) == [([0, 4], 1, 0), ([1], 1, 0), ([2], 1, 0), ([3], 1, 0)]  # equal counts: round-robin
    assert deal([4, 4], 2, unsure=4)[0][1] == 2  # a share that held-out keys might empty is not dealt whole


@pytest.mark.fuzzclass("ranks, workers and batches")
def test_striding_readers_split_the_training_stream_without_overlap(data):

    spec = resolve_data(str(data), "uniform-p0.50-s0")
    urls, counts = spec.train_urls[:2], spec.train_counts[:2]  # 2 shards, 4 ranks: every rank strides both
    firsts = []
    for rank in range(4):
        n = share_sizes(counts, 4)[rank]
        firsts.append([k for b in take(cfg_for(spec, True, urls=urls, rank=rank, world=4, batch_size=1,
                                               counts=counts), 0, n) for k in b])
    keys = [k for f in firsts for k in f]
    assert len(keys) == sum(counts) and len(set(keys)) == sum(counts)  # one pass of each rank: every sample once


@pytest.mark.fuzzclass("ranks, workers and batches")
def test_too_many_readers_refused_in_one_line():
    from mlrpl_data.errors import BadInputError
    from mlrpl_train.loader import check_readers

    check_readers(8, 2, 4)
    with pytest.raises(BadInputError, match=r"^7 training samples cannot feed 2 ranks x 4 loader worker\(s\) = 8 "
                                            r"readers, one sample each at least: lower --workers$"):
        check_readers(7, 2, 4)


def share_sizes(counts: list[int], readers: int, unsure: int = 0) -> list[int]:
    """Samples each reader gets under `deal` (before `unsure` ones are dropped)."""
    from mlrpl_train.loader import deal

    total = sum(c for c in counts if c > 0)
    return [sum(counts[i] for i in idx) if stride == 1 else len(range(off, total, stride))
            for idx, stride, off in deal(counts, readers, unsure)]


def letters_tar(tmp_path, n=5, name="s.tar") -> str:
    meta = json.dumps({"labels": [1, -1, 0]}).encode()
    return write_tar(tmp_path / name, [m for k in "abcdefgh"[:n] for m in ((f"{k}.jpg", jpeg()), (f"{k}.json", meta))])


def test_batches_in_shard_order_test_short_last_training_cycles_and_resumes(tmp_path):
    """webdataset's batching: a test stream ends with a short batch; a training stream (a buffer of 1:
    no shuffle) cycles a, b, c, d, e, a, ... in full batches, and resumed after 1 batch starts at c."""
    url = letters_tar(tmp_path)
    test = StreamConfig(urls=[url], num_classes=3, train=False, image_size=8, batch_size=2)
    assert [b["keys"] for b in make_loader(test, 0)] == [["a", "b"], ["c", "d"], ["e"]]
    train = StreamConfig(urls=[url], num_classes=3, train=True, image_size=8, batch_size=2, shuffle_buffer=1)
    assert take(train, 0, 3) == [["a", "b"], ["c", "d"], ["e", "a"]]
    train.skip_batches = 1
    assert take(train, 0, 2) == [["c", "d"], ["e", "a"]]


def test_bad_samples_are_counted_in_the_batch_after_them(tmp_path):
    good = json.dumps({"labels": [1, -1, 1]}).encode()
    url = write_tar(tmp_path / "s.tar", [("a.jpg", jpeg()), ("a.json", good), ("b.jpg", b"not a jpeg"), ("b.json", good),
                                         ("c.JPG", jpeg()), ("c.json", good),  # .JPG is no .jpg member: never read
                                         ("d.jpg", jpeg()), ("d.json", good), ("e.jpg", jpeg()), ("e.json", good)])
    cfg = StreamConfig(urls=[url], num_classes=3, train=False, image_size=8, batch_size=2)
    assert [(b["keys"], b["bad"]) for b in make_loader(cfg, 0)] == [(["a", "d"], 2), (["e"], 0)]


def test_a_key_the_mask_lacks_stops_even_when_bad_samples_are_skipped(tmp_path):
    from mlrpl_train.loader import MaskCoverageError

    url = letters_tar(tmp_path, n=2)
    cfg = StreamConfig(urls=[url], num_classes=3, train=False, image_size=8, batch_size=2,
                       partial={"a": np.array([1, 0, 0], np.int8)})
    with pytest.raises(MaskCoverageError, match="^sample b has no row in the mask: the mask does not cover this split$"):
        list(make_loader(cfg, 0))


def test_a_shard_cut_short_is_named_in_one_line(tmp_path):
    url = letters_tar(tmp_path, n=3)
    blob = Path(url).read_bytes()
    cfg = StreamConfig(urls=[url], num_classes=3, train=False, image_size=8, batch_size=2)
    for cut in (512 + 300, 2048 + 300):  # inside a.jpg's bytes (webdataset marks that error), after a
        Path(url).write_bytes(blob[:cut])
        with pytest.raises(ShardReadError) as e:
            list(make_loader(cfg, 0))
        assert str(e.value) == f"{url}: cannot read shard (ReadError: unexpected end of data)"
