"""Benchmark: one training step of (a) the backbone with a linear head (partial BCE), (b) DSRB in
the cheap form, (c) DSRB with the naive feature-map blends; same backbone, batch and image size.

(d) is SSGRL (DSRB's network without blending or contrastive loss): (b)/(d) is what blending costs.
(e) is (b) with --save-memory: its extra memory against (c)'s, and its time against (b)'s.
Each (model, C) runs in its own process: seconds per step (best of N after a warm-up) and peak
memory: torch.cuda.max_memory_allocated on a GPU, its analog on a CPU (mlrpl_train/memory.py: live
tensors at the step's start + the peak of what the step allocates; peak RSS, which also counts what
glibc keeps after a free, is reported beside it as peak_rss_mb). Blending is on (epoch >=
blend_start) with prototypes in place, i.e. the expensive regime. Prints JSON with the ratios
(b)/(a) in time and [(b)-(a)] / [(c)-(a)] in memory.
CPU:  python benchmarks/train_step.py --repeat 3            (ResNet-101, 448 px, batch 8, C = 80 and 200)
GPU:  python benchmarks/train_step.py --device cuda --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from mlrpl_train.data import DataSpec
from mlrpl_train.device import autocast, to_device
from mlrpl_train.memory import peak_allocated, training_state
from mlrpl_train.model.factory import build_model
from mlrpl_train.options import DsrbOptions, TrainConfig
kind, C, batch, size, device, steps, backbone = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], int(sys.argv[7]), sys.argv[8]
torch.manual_seed(0)
device = torch.device(device)
method = {"a": "pbce", "b": "dsrb", "c": "dsrb", "d": "ssgrl", "e": "dsrb"}[kind]
cfg = TrainConfig(method=method, dataset="", masks="", backbone=backbone, weights="none", freeze="layer3", image_size=size,
                  batch_size=batch, dsrb=DsrbOptions(form="naive" if kind == "c" else "cheap", blend_start=0,
                                                     save_memory=kind == "e"))
spec = DataSpec(dataset="", fingerprint="", num_classes=C, class_names=[str(i) for i in range(C)], train_urls=[], test_urls=[],
                train_samples=0, test_samples=0, partial=None)
model = build_model(cfg, spec).to(device).train()  # label embeddings learned (no dataset folder)
if device.type == "cuda":
    model = model.to(memory_format=torch.channels_last)
if kind in ("b", "c", "e"):
    with torch.no_grad():
        model.prototypes.normal_()
        model.proto_counts.fill_(1)
    if kind == "c":
        hw = (size // 32 // 2) ** 2
        model.proto_maps = torch.randn(C, model.cells, hw, model.opts.feat_dim, device=device) / hw
opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
images = torch.randint(0, 255, (batch, size, size, 3), dtype=torch.uint8)
g = torch.Generator().manual_seed(0)
y = torch.randint(-1, 2, (batch, C), generator=g).to(torch.int8)
y[torch.rand(batch, C, generator=g) < 0.7] = 0  # 30% known


def one_step(step):
    opt.zero_grad(set_to_none=True)  # as the engine does: last step's gradients are gone before the forward pass
    x = to_device(images, device)
    with autocast(device):
        out = model(x, partial=y.to(device), epoch=10, step=step)
    out[0].backward()
    opt.step()


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


times = []
for step in range(steps + 1):
    sync()
    t = time.perf_counter()
    one_step(step)
    sync()
    times.append(time.perf_counter() - t)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
opt.zero_grad(set_to_none=True)  # the step would free them first: not part of its peak
maps = [model.proto_maps] if kind == "c" else []  # the naive form's prototype maps (not a buffer)
_, peak = peak_allocated(lambda: one_step(steps + 1), device, live=[*training_state(model, opt), images, y, *maps])
print(json.dumps({"seconds_per_step": min(times[1:]), "peak_mb": peak / 2**20, "peak_rss_mb": rss,
                  "images_per_s": batch / min(times[1:])}))
"""


def run(kind: str, c: int, a) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(REPO), kind, str(c), str(a.batch), str(a.size), a.device,
                        str(a.steps), a.backbone], capture_output=True, text=True, env=os.environ.copy())
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


KINDS = ("a", "b", "c", "d", "e")


def median_runs(rounds: list[dict]) -> dict:
    """Per kind, the median of each figure over the rounds (run one after the other, a b c d e a b ...,
    so a slow spell of a noisy machine hits every kind alike); an error in any round is the result."""
    out = {}
    for k in KINDS:
        runs = [rd[k] for rd in rounds]
        errors = [x for x in runs if "error" in x]
        out[k] = errors[0] if errors else {f: statistics.median(x[f] for x in runs) for f in runs[0]}
        if not errors and len(runs) > 1:
            out[k]["seconds_per_step_all"] = [round(x["seconds_per_step"], 3) for x in runs]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--classes", default="80,200")
    ap.add_argument("--backbone", default="resnet101")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of all five, interleaved; each figure is the median")
    a = ap.parse_args()
    out = {"device": a.device, "backbone": a.backbone, "batch": a.batch, "image_size": a.size, "results": {}}
    for c in (int(x) for x in a.classes.split(",")):
        r = median_runs([{k: run(k, c, a) for k in KINDS} for _ in range(a.repeat)])
        res = {"a_backbone_linear": r["a"], "b_dsrb_cheap": r["b"], "c_dsrb_naive": r["c"], "d_ssgrl_no_blending": r["d"],
               "e_dsrb_cheap_save_memory": r["e"]}
        if all("error" not in v for v in r.values()):
            extra_b = r["b"]["peak_mb"] - r["a"]["peak_mb"]
            extra_c = r["c"]["peak_mb"] - r["a"]["peak_mb"]
            res["time_ratio_b_over_a"] = round(r["b"]["seconds_per_step"] / r["a"]["seconds_per_step"], 3)
            res["time_ratio_c_over_a"] = round(r["c"]["seconds_per_step"] / r["a"]["seconds_per_step"], 3)
            res["time_ratio_d_over_a"] = round(r["d"]["seconds_per_step"] / r["a"]["seconds_per_step"], 3)
            res["time_ratio_b_over_d"] = round(r["b"]["seconds_per_step"] / r["d"]["seconds_per_step"], 3)
            res["extra_memory_mb_b"] = round(extra_b, 1)
            res["extra_memory_mb_c"] = round(extra_c, 1)
            res["memory_ratio_extra_b_over_extra_c"] = round(extra_b / extra_c, 3) if extra_c > 0 else None
            extra_e = r["e"]["peak_mb"] - r["a"]["peak_mb"]
            res["extra_memory_mb_e"] = round(extra_e, 1)
            res["memory_ratio_extra_e_over_extra_c"] = round(extra_e / extra_c, 3) if extra_c > 0 else None
            res["time_ratio_e_over_b"] = round(r["e"]["seconds_per_step"] / r["b"]["seconds_per_step"], 3)
        out["results"][f"C={c}"] = res
    out["targets"] = {"memory_ratio_extra_e_over_extra_c": 0.25, "time_ratio_e_over_b": 1.15,
                      "note": "(b) has no time target beyond no regression; --save-memory (e) carries the memory goal"}
    print(json.dumps(out, indent=2, default=lambda v: round(v, 3) if isinstance(v, float) else v))
    errors = [f"{c} {k}: {v['error']}" for c, res in out["results"].items() for k, v in res.items()
              if isinstance(v, dict) and "error" in v]
    if errors:
        sys.exit("failed: " + "; ".join(errors))


if __name__ == "__main__":
    main()
