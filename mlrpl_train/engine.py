"""The training engine: `train(cfg)` and `evaluate_checkpoint(...)`, reading top to bottom.

train: resolve data (fingerprints checked) -> run directory -> model -> Adam + step decay
-> for each epoch: train_one_epoch (fixed number of batches on every rank) -> evaluate
(every test image once, across ranks) -> checkpoints (last, best) and logs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlrpl_data.errors import AlreadyExistsError, BadInputError, MlrplError

from . import dist as D
from .losses import BCE_FORMS
from .loader import DataSpec, StreamConfig, batches_per_epoch, make_loader, resolve_data, to_device
from .metrics import evaluate_scores
from .model.factory import build_model

CHECKPOINT_LAST, CHECKPOINT_BEST = "last.pt", "best.pt"


def default_workers() -> int:
    """Loader processes: 4, or fewer on a machine with fewer cores (more would oversubscribe)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)))


class TrainingDivergedError(MlrplError):
    """A NaN or infinite loss."""


@dataclass
class TrainConfig:
    method: str
    dataset: str
    masks: str
    out: str = "runs/run"
    backbone: str = "resnet101"
    weights: str = "imagenet"
    freeze: str = "auto"  # auto: layer3 with pretrained weights, none without (random filters must learn)
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-5
    lr_step: int = 10
    weight_decay: float = 5e-4
    image_size: int = 448
    crop_scales: tuple[int, ...] = (512, 448, 384, 320, 256)  # square crops of the 512x512 resize (paper)
    workers: int = field(default_factory=lambda: default_workers())
    seed: int = 0
    checkpoint_every: int = 0
    shuffle_buffer: int = 1000
    on_bad_sample: str = "skip"
    device: str = "auto"
    eval_every: int = 1
    progress: bool = True
    bce: str = "batch"  # batch: one mean over the batch's known entries (authors); per-image: eq. 14-15
    model: dict[str, Any] = field(default_factory=dict)  # method-specific options (DSRB flags)

    def __post_init__(self) -> None:
        if self.freeze == "auto":
            self.freeze = "layer3" if self.weights not in ("none", "") else "none"
        if self.bce not in BCE_FORMS:
            raise MlrplError(f"--bce {self.bce!r}: use one of {', '.join(BCE_FORMS)}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- run directory -----------------------------------------------------------------------------------------

def prepare_run_dir(cfg: TrainConfig, spec: DataSpec, force: bool, main: bool) -> Path:
    run = Path(cfg.out)
    if main:
        if (run / "config.json").exists():
            if not force:
                raise AlreadyExistsError(f"{run}: already holds a run; pass --resume {run} to continue it or --force to replace it")
            shutil.rmtree(run)
        run.mkdir(parents=True, exist_ok=True)
        doc = {"config": cfg.to_json(), "manifest_fingerprint": spec.fingerprint, "mask": spec.mask_name,
               "train_samples": spec.train_samples, "test_samples": spec.test_samples, "class_names": spec.class_names}
        (run / "config.json").write_text(json.dumps(doc, indent=2) + "\n")
    return run


def load_run_config(run: Path) -> TrainConfig:
    try:
        doc = json.loads((Path(run) / "config.json").read_text())
    except FileNotFoundError:
        raise BadInputError(f"{run}: no config.json: not a run directory") from None
    return config_from_dict(doc["config"])


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    d = dict(d)
    d["crop_scales"] = tuple(d.get("crop_scales", TrainConfig.crop_scales))
    return TrainConfig(**d)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomic: a kill while saving leaves the previous checkpoint intact."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BadInputError(f"{path}: checkpoint not found") from None


# ---- devices and precision ------------------------------------------------------------------------------------

def pick_device(cfg: TrainConfig, info: D.DistInfo) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(cfg.device)


def autocast(device: torch.device):
    """bf16 autocast on GPU; full precision on CPU (CPU bf16 is slower there)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


# ---- one epoch -----------------------------------------------------------------------------------------------------

def stream_config(cfg: TrainConfig, spec: DataSpec, info: D.DistInfo, train: bool, epoch: int = 0, skip: int = 0) -> StreamConfig:
    return StreamConfig(urls=spec.train_urls if train else spec.test_urls, num_classes=spec.num_classes, train=train,
                        image_size=cfg.image_size, batch_size=cfg.batch_size, seed=cfg.seed, epoch=epoch,
                        rank=info.rank, world=info.world, shuffle_buffer=cfg.shuffle_buffer, skip_batches=skip,
                        on_bad_sample=cfg.on_bad_sample, partial=spec.partial if train else None,
                        crop_scales=tuple(cfg.crop_scales))


def train_step(model, batch, optimizer, device, epoch: int, global_step: int,
               progress: float = 1.0) -> tuple[float, dict[str, float]]:
    x = to_device(batch["images"], device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = batch["partial"].to(device)
    with autocast(device):
        loss, logs = model(x, partial=y, epoch=epoch, step=global_step, progress=progress)
    optimizer.zero_grad(set_to_none=True)
    if torch.isfinite(loss):
        loss.backward()
        optimizer.step()
        core = getattr(model, "module", model)
        if hasattr(core, "after_step"):
            core.after_step()  # e.g. keep DSRB's alpha and beta in [0, 1]
    return float(loss.detach()), logs


def train_one_epoch(model, cfg, spec, info, optimizer, device, epoch, start_step, n_batches, state, save_fn, writer):
    from tqdm import tqdm

    model.train()
    loader = make_loader(stream_config(cfg, spec, info, train=True, epoch=epoch, skip=start_step), cfg.workers)
    bar = tqdm(total=n_batches, initial=start_step, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
               disable=not (cfg.progress and info.main), file=sys.stderr, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 10.0)  # a log file gets a line every 10 s
    losses, bad, t0, seen = [], 0, time.perf_counter(), 0
    for step, batch in zip(range(start_step, n_batches), loader):
        loss, logs = train_step(model, batch, optimizer, device, epoch, state["global_step"], step / n_batches)
        if D.broadcast_flag(not math.isfinite(loss), info):
            raise TrainingDivergedError(
                f"loss is {loss} at epoch {epoch + 1}, step {step + 1}: stopped; the last good checkpoint is "
                f"{Path(cfg.out) / CHECKPOINT_LAST} (lower --lr, or check the data)")
        state["global_step"] += 1
        losses.append(loss)
        bad += batch["bad"]
        seen += len(batch["keys"])
        if info.main:
            rate = seen * info.world / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.1f}", refresh=False)
            bar.update(1)
            if writer:
                writer.add_scalar("train/loss", loss, state["global_step"])
                for k, v in logs.items():
                    writer.add_scalar(f"train/{k}", v, state["global_step"])
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < n_batches:
            save_fn(epoch, step + 1)
    bar.close()
    return (float(np.mean(losses)) if losses else float("nan")), bad, seen * info.world / max(time.perf_counter() - t0, 1e-9)


# ---- evaluation --------------------------------------------------------------------------------------------------------

@torch.no_grad()
def predict(core, cfg: TrainConfig, spec: DataSpec, info: D.DistInfo, device) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Scores of this rank's share of the test images (each image on exactly one rank)."""
    core.eval()
    keys, scores, labels = [], [], []
    for batch in make_loader(stream_config(cfg, spec, info, train=False), cfg.workers):
        x = to_device(batch["images"], device)
        with autocast(device):
            logits = core(x)
        scores.append(torch.sigmoid(logits.float()).cpu().numpy())
        labels.append(batch["labels"].numpy())
        keys += batch["keys"]
    c = spec.num_classes
    return keys, (np.concatenate(scores) if scores else np.zeros((0, c))), (np.concatenate(labels) if labels else np.zeros((0, c), np.int8))


def evaluate_model(core, cfg, spec, info, device) -> dict[str, Any] | None:
    """Gather every rank's predictions; rank 0 computes the metrics (None elsewhere)."""
    parts = D.gather_objects(predict(core, cfg, spec, info, device), info)
    if not info.main:
        return None
    keys = [k for p in parts for k in p[0]]
    if len(set(keys)) != len(keys):
        raise MlrplError("evaluation saw a test image twice: the test split across ranks is broken")
    order = np.argsort(keys)
    scores = np.concatenate([p[1] for p in parts])[order]
    labels = np.concatenate([p[2] for p in parts])[order]
    out = evaluate_scores(scores, labels, spec.class_names)
    out["keys_evaluated"] = len(keys)
    return out


# ---- the whole run -------------------------------------------------------------------------------------------------------

def train(cfg: TrainConfig, resume: bool = False, force: bool = False) -> Path:
    info = D.init_distributed()
    try:
        return _train(cfg, info, resume, force)
    finally:
        D.shutdown(info)


def _train(cfg: TrainConfig, info: D.DistInfo, resume: bool, force: bool) -> Path:
    torch.manual_seed(cfg.seed)
    spec = resolve_data(cfg.dataset, cfg.masks)
    run = Path(cfg.out) if resume else prepare_run_dir(cfg, spec, force, info.main)
    D.barrier(info)
    device = pick_device(cfg, info)
    core = build_model(cfg, spec).to(device)
    if device.type == "cuda":
        core = core.to(memory_format=torch.channels_last)
    params = [p for p in core.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=0.1)
    state = {"epoch": 0, "step": 0, "global_step": 0, "best_map": -1.0}
    if resume:
        ckpt = load_checkpoint(run / CHECKPOINT_LAST)
        if ckpt["fingerprint"] != spec.fingerprint:
            raise MlrplError(f"{run}: the run was trained on manifest {ckpt['fingerprint']}, the dataset is now {spec.fingerprint}")
        core.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state.update({k: ckpt[k] for k in ("epoch", "step", "global_step", "best_map")})
    model = core
    if info.world > 1:
        # DSRB's alpha/beta take no gradient before blending starts (or without prototypes)
        model = torch.nn.parallel.DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None,
                                                          find_unused_parameters=cfg.method != "pbce")
    n_batches = batches_per_epoch(spec.train_samples, info.world, cfg.batch_size)
    writer = None
    if info.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tb"))

    def save(epoch: int, step: int, best: bool = False) -> None:
        if not info.main:
            return
        payload = {"model": core.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "epoch": epoch, "step": step, "global_step": state["global_step"], "best_map": state["best_map"],
                   "config": cfg.to_json(), "fingerprint": spec.fingerprint, "mask": spec.mask_name or "",
                   "class_names": spec.class_names}
        save_checkpoint(run / CHECKPOINT_LAST, payload)
        if best:
            shutil.copyfile(run / CHECKPOINT_LAST, run / CHECKPOINT_BEST)

    for epoch in range(state["epoch"], cfg.epochs):
        start_step = state["step"] if epoch == state["epoch"] else 0
        if hasattr(core, "before_epoch") and start_step == 0:  # mid-epoch resume: the checkpoint holds its state
            core.before_epoch(epoch, lambda: _prototype_loader(cfg, spec, info, epoch), device, info)
        t0 = time.perf_counter()
        loss, bad, rate = train_one_epoch(model, cfg, spec, info, optimizer, device, epoch, start_step, n_batches, state,
                                          lambda e, s: save(e, s), writer)
        scheduler.step()
        metrics = evaluate_model(core, cfg, spec, info, device) if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs else None
        state["epoch"], state["step"] = epoch + 1, 0
        if info.main:
            improved = metrics is not None and metrics["mAP"] > state["best_map"]
            if improved:
                state["best_map"] = metrics["mAP"]
            save(epoch + 1, 0, best=improved)
            log_epoch(run, writer, epoch + 1, loss, optimizer.param_groups[0]["lr"], bad, rate, time.perf_counter() - t0, metrics)
        D.barrier(info)
    if writer:
        writer.close()
    return run


def _prototype_loader(cfg: TrainConfig, spec: DataSpec, info: D.DistInfo, epoch: int):
    """Every training image once, under the training augmentation (crop and flip), for DSRB's
    prototypes: the authors compute them by iterating their training loader."""
    sc = stream_config(cfg, spec, info, train=False, epoch=epoch)
    sc.urls, sc.partial, sc.augment = spec.train_urls, spec.partial, True
    return make_loader(sc, cfg.workers)


METRIC_COLUMNS = ["epoch", "train_loss", "lr", "mAP", "mAP_voc", "OF1", "CF1", "OF1_top3", "CF1_top3", "bad_samples",
                  "images_per_s", "seconds"]


def log_epoch(run: Path, writer, epoch, loss, lr, bad, rate, seconds, metrics) -> None:
    row = {"epoch": epoch, "train_loss": loss, "lr": lr, "bad_samples": bad, "images_per_s": rate, "seconds": seconds}
    if metrics:
        row.update({k: metrics[k] for k in ("mAP", "mAP_voc", "OF1", "CF1", "OF1_top3", "CF1_top3")})
        (run / "metrics_last.json").write_text(json.dumps(metrics, indent=1))
    path = run / "metrics.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in METRIC_COLUMNS})
    if writer:
        for k, v in row.items():
            if k != "epoch" and v != "" and v is not None:
                writer.add_scalar(f"epoch/{k}", v, epoch)
        writer.flush()
    msg = f"epoch {epoch}: loss {loss:.4f}"
    if metrics:
        msg += f"  mAP {100 * metrics['mAP']:.2f}  OF1 {100 * metrics['OF1']:.2f}  CF1 {100 * metrics['CF1']:.2f}"
    if bad:
        msg += f"  ({bad} bad samples skipped)"
    print(msg, file=sys.stderr)


# ---- mlrpl evaluate ----------------------------------------------------------------------------------------------------------

def evaluate_checkpoint(run_or_ckpt: Path, dataset: str, out: Path | None = None, workers: int = 2,
                        batch_size: int | None = None) -> dict[str, Any]:
    """Load a run's best (else last) checkpoint, evaluate it on DATASET's test split, write the reports."""
    p = Path(run_or_ckpt)
    ckpt_path = p if p.is_file() else next((p / n for n in (CHECKPOINT_BEST, CHECKPOINT_LAST) if (p / n).exists()), p / CHECKPOINT_LAST)
    ckpt = load_checkpoint(ckpt_path)
    cfg = config_from_dict(ckpt["config"])
    cfg.dataset, cfg.workers, cfg.progress = dataset, workers, False
    if batch_size:
        cfg.batch_size = batch_size
    spec = resolve_data(dataset, None)
    if spec.fingerprint != ckpt["fingerprint"]:
        raise MlrplError(f"{ckpt_path}: trained on manifest {ckpt['fingerprint']}, but {dataset} is {spec.fingerprint}")
    spec.partial = None
    if "embeddings" in ckpt["model"]:
        spec.extra["embeddings"] = ckpt["model"]["embeddings"]
    info = D.DistInfo()
    device = pick_device(cfg, info)
    core = build_model(cfg, spec, for_eval=True)
    core.load_state_dict(ckpt["model"])  # DSRB's prototypes are buffers: they come with it
    core.to(device)
    metrics = evaluate_model(core, cfg, spec, info, device)
    out = Path(out) if out else (ckpt_path.parent if p.is_file() else p)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "per_class_ap.json").write_text(json.dumps(metrics["per_class_ap"], indent=1))
    from mlrpl_data.manifest import read_card

    title = f"{read_card(dataset)['name']} test, {cfg.method} ({ckpt.get('mask') or 'full labels'}): mAP {100 * metrics['mAP']:.2f}"
    plot_per_class_ap(metrics["per_class_ap"], out / "per_class_ap.png", title=title)
    metrics["report_dir"] = str(out)
    return metrics


def plot_per_class_ap(ap: dict[str, float | None], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(((k, v) for k, v in ap.items() if v is not None), key=lambda kv: -kv[1])
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(items) + 2), 4))
    ax.bar(range(len(items)), [100 * v for _, v in items], color="#4c72b0")
    ax.set_xticks(range(len(items)))
    ax.set_xticklabels([k for k, _ in items], rotation=90, fontsize=7 if len(items) > 30 else 9)
    ax.set_ylabel("AP (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
