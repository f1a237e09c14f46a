"""Benchmark: images/s per worker of (a) the published CPU pipeline over loose JPEGs and (b) the mlrpl
streaming loader over shards, on the same ~640x480 images in the same run (one process each).

(a) PIL open -> RGB -> bicubic resize 512x512 -> random square crop from {512,...,256} ->
    bicubic resize 448 -> flip -> ToTensor -> Normalize  (torchvision transforms, all on the CPU)
(b) shard read -> decode -> one bicubic resize from the crop box in original coordinates -> flip
    -> uint8 tensor (normalisation happens on the device)
With --simd DIR (pillow-simd installed there: CC="cc -mavx2" pip install --target DIR pillow-simd),
both pipelines run once under plain Pillow and once under pillow-simd, in child processes.
Targets: (b) >= 3x (a) with pillow-simd, >= 1.5x with plain Pillow.

Side by side in the same process and run, interleaved, median of --repeats: the loader before it was
rebuilt on webdataset (mlrpl_train/loader.py as of --base, read with `git show`) and today's, on the
same shards and config. Target: new_vs_old_loader >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import PIL  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from mlrpl_train.loader import CROP_SCALES, StreamConfig, make_loader  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from shards import coco_dataset, make_images  # noqa: E402


def published_pipeline(files: list[Path], seed: int = 0) -> float:
    import torchvision.transforms as T

    rng = random.Random(seed)
    norm = T.Compose([T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    t = time.perf_counter()
    for f in files:
        im = Image.open(f).convert("RGB").resize((512, 512), Image.BICUBIC)
        s = rng.choice(CROP_SCALES)
        x0, y0 = rng.randint(0, 512 - s), rng.randint(0, 512 - s)
        im = im.crop((x0, y0, x0 + s, y0 + s)).resize((448, 448), Image.BICUBIC)
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        norm(im)
    return len(files) / (time.perf_counter() - t)


def decode_only(files: list[Path]) -> float:
    t = time.perf_counter()
    for f in files:
        Image.open(f).convert("RGB")
    return len(files) / (time.perf_counter() - t)


BASE = "51b6845"  # the last commit with the hand-written loader (before issue 22)


def base_loader(commit: str):
    """mlrpl_train/loader.py as of `commit`, imported as the module `loader_base` (from `git show`)."""
    import importlib.util
    import subprocess

    src = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:mlrpl_train/loader.py"], capture_output=True,
                         text=True, check=True).stdout
    spec = importlib.util.spec_from_loader("loader_base", loader=None)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["loader_base"] = mod  # dataclasses look their module up there
    exec(compile(src, f"{commit}:mlrpl_train/loader.py", "exec"), mod.__dict__)
    return mod


def mlrpl_loader(dataset: Path, n: int, loader=None, cpu: bool = False) -> float:
    """images/s of the training stream (448 px, batch 16, one process) of `loader` (a module with
    StreamConfig and make_loader; default: today's); `cpu`: per second of this process's CPU time
    (steadier than wall time on a machine others use)."""
    from mlrpl_train.data import resolve_data

    config, make = (StreamConfig, make_loader) if loader is None else (loader.StreamConfig, loader.make_loader)
    spec = resolve_data(str(dataset), None)
    cfg = config(urls=spec.train_urls, num_classes=spec.num_classes, train=True, image_size=448,
                 batch_size=16, shuffle_buffer=64)
    clock = time.process_time if cpu else time.perf_counter
    t = clock()
    seen = 0
    for batch in make(cfg, 0):  # num_workers=0: this process is the one worker
        seen += len(batch["keys"])
        if seen >= n:
            break
    return seen / (clock() - t)


def measure(n_images: int, repeats: int, base: str = BASE) -> dict:
    """Both pipelines under whichever Pillow this process imported, and the loader as of `base`."""
    import statistics

    from mlrpl_data.shards import ShardConfig, write_shards

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = make_images(tmp / "raw" / "train2014", n_images)
        files = [tmp / "raw" / "train2014" / n for n in names]
        d = coco_dataset(tmp / "raw", names, 1, tmp / "ds")
        write_shards(d, ShardConfig(split="train", shard_size=None, max_samples=100, progress=False))
        old = base_loader(base)
        pub, ours, dec, before, after, before_cpu, after_cpu = [], [], [], [], [], [], []
        for _ in range(repeats):  # interleaved, best of N (the old-vs-new pair: median of N)
            pub.append(published_pipeline(files))
            ours.append(mlrpl_loader(d, n_images))
            dec.append(decode_only(files))
            before.append(mlrpl_loader(d, n_images, old))
            after.append(mlrpl_loader(d, n_images))
            before_cpu.append(mlrpl_loader(d, n_images, old, cpu=True))
            after_cpu.append(mlrpl_loader(d, n_images, cpu=True))
    old_s, new_s = statistics.median(before), statistics.median(after)
    old_cpu, new_cpu = statistics.median(before_cpu), statistics.median(after_cpu)
    return {"pillow": PIL.__version__, "pillow_simd": "post" in PIL.__version__,
            "published_pipeline_img_s": round(max(pub), 1), "mlrpl_loader_img_s": round(max(ours), 1),
            "decode_only_img_s": round(max(dec), 1),
            "old_loader": base, "old_loader_img_s_median": round(old_s, 1), "new_loader_img_s_median": round(new_s, 1),
            "old_loader_img_s": [round(x, 1) for x in before], "new_loader_img_s": [round(x, 1) for x in after],
            "new_vs_old_loader": round(new_s / old_s, 3),
            "old_loader_img_per_cpu_s_median": round(old_cpu, 1), "new_loader_img_per_cpu_s_median": round(new_cpu, 1),
            "new_vs_old_loader_cpu": round(new_cpu / old_cpu, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--simd", type=Path, default=None, help="A folder holding pillow-simd (pip install --target DIR)")
    ap.add_argument("--base", default=BASE, help="The commit whose mlrpl_train/loader.py is the old loader")
    ap.add_argument("--child", action="store_true")
    a = ap.parse_args()
    if a.child or a.simd is None:
        print(json.dumps(measure(a.images, a.repeats, a.base)))
        return
    import os
    import subprocess

    runs = {}
    for name, extra in (("plain", None), ("simd", str(a.simd))):
        env = dict(os.environ)
        if extra:
            env["PYTHONPATH"] = extra + os.pathsep + env.get("PYTHONPATH", "")
        r = subprocess.run([sys.executable, __file__, "--child", "--images", str(a.images), "--repeats", str(a.repeats),
                            "--base", a.base],
                           env=env, capture_output=True, text=True, check=True)
        runs[name] = json.loads(r.stdout.strip().splitlines()[-1])
    published = runs["plain"]["published_pipeline_img_s"]  # the pipeline as published: plain Pillow
    print(json.dumps({
        "images": a.images, "runs": runs,
        "ratio_plain_vs_published": round(runs["plain"]["mlrpl_loader_img_s"] / published, 2),
        "ratio_simd_vs_published": round(runs["simd"]["mlrpl_loader_img_s"] / published, 2),
        "ratio_simd_vs_published_also_on_simd": round(runs["simd"]["mlrpl_loader_img_s"] / runs["simd"]["published_pipeline_img_s"], 2),
        "targets": {"simd_vs_published": 3.0, "plain_vs_published": 1.5},
    }, indent=2))


if __name__ == "__main__":
    main()
