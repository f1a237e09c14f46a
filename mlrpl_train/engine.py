"""The training engine: `train(cfg)`, reading top to bottom.

train: resolve data (fingerprints checked) -> run directory -> model -> Adam + step decay
-> for each epoch: the model's before_epoch hook, train_one_epoch(model, optimizer, loader, ...)
(fixed number of batches on every rank) -> evaluate (every test image once, across ranks) ->
the epoch's log (runlog.py) and checkpoints (checkpoint.py: last, best).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from mlrpl_data.errors import BadInputError, MlrplError, check_interrupt
from mlrpl_data.ownership import claim, made_here, releasing, remove_owned, sweep_stale, unclaim
from mlrpl_data.progress import progress_bar

from . import dist as D
from .checkpoint import (CHECKPOINT_LAST, RUN_ENTRIES, RunCheckpoints, RunCounters, finished_line, prepare_run_dir,
                         record_config, restore_checkpoint, resumes_from_checkpoint)
from .data import DataSpec, resolve_data
from .device import autocast, pick_device, to_device, uses_fast_path
from .loader import StreamConfig, batches_per_epoch, check_readers, make_loader
from .metrics import evaluate_scores
from .model.base import PartialLabelModel
from .model.factory import build_model
from .options import TrainConfig
from .registry import get as get_method
from .runlog import drop_rows_after, log_epoch


class TrainingDivergedError(MlrplError):
    """A NaN or infinite loss."""


# ---- one step, one epoch ------------------------------------------------------------------------------------------

def stream_config(cfg: TrainConfig, spec: DataSpec, info: D.DistInfo, role: str, epoch: int = 0,
                  skip: int = 0) -> StreamConfig:
    """The stream of a role: "train" (augmented, cycling, without the validation images), "val" (the
    held-out training images, each once, with their partial labels), "test" (each test image once)."""
    train = role == "train"
    counts, unsure = (spec.test_counts, 0) if role == "test" else spec.fit_counts() if train else (
        spec.train_held if spec.train_held is not None else spec.train_counts, 0)
    return StreamConfig(counts=counts, unsure=unsure, urls=spec.test_urls if role == "test" else spec.train_urls, num_classes=spec.num_classes,
                        train=train, image_size=cfg.image_size, batch_size=cfg.batch_size, seed=cfg.seed, epoch=epoch,
                        rank=info.rank, world=info.world, shuffle_buffer=cfg.shuffle_buffer, skip_batches=skip,
                        on_bad_sample=str(cfg.on_bad_sample), partial=None if role == "test" else spec.partial,
                        crop_scales=tuple(cfg.crop_scales), only=spec.val_keys if role == "val" else None,
                        exclude=spec.val_keys if train else frozenset())


def train_step(model, batch, optimizer, device, epoch: int, global_step: int, progress: float = 1.0,
               fast: bool | None = None) -> tuple[float, dict[str, float]]:
    """One optimisation step; `fast` = bf16 autocast + channels-last (default: on a GPU only)."""
    x = to_device(batch["images"], device, channels_last=fast)
    y = batch["partial"].to(device)
    core: PartialLabelModel = model.module if isinstance(model, DistributedDataParallel) else model
    extra = {"keys": batch["keys"]} if core.wants_keys else {}  # LL-Cp's and CL's per-image labels
    optimizer.zero_grad(set_to_none=True)  # before the forward pass: the old gradients never share the peak
    with autocast(device, fast):
        loss, logs = model(x, partial=y, epoch=epoch, step=global_step, progress=progress, **extra)
    if torch.isfinite(loss):
        loss.backward()
        optimizer.step()
        core.after_step()  # e.g. keep DSRB's alpha and beta in [0, 1]
    return float(loss.detach()), logs


def train_one_epoch(model, optimizer: torch.optim.Optimizer, data_loader, device: torch.device, epoch: int,
                    cfg: TrainConfig, *, info: D.DistInfo, counters: RunCounters, batches: int,
                    checkpoints: RunCheckpoints, writer=None) -> tuple[float, int, float]:
    """Batches counters.step..batches-1 of `epoch` (0-based) from `data_loader`, one optimizer step
    each on the model's own loss (`model(x, partial=...)`: a method's loss is part of its model).
    Returns (mean loss of the epoch, bad samples skipped, images/s over all ranks). Advances
    `counters` (the global step, the epoch's losses and bad samples so far, which last.pt carries:
    `checkpoints` writes it every cfg.checkpoint_every steps); per-step losses go to `writer`.
    Raises TrainingDivergedError on a NaN or infinite loss on any rank, MlrplError when the
    epoch had no batch."""
    start_step = counters.step
    model.train()
    bar = progress_bar(batches, f"epoch {epoch + 1}/{cfg.epochs}", "batch", cfg.progress and info.main, start_step)
    if start_step == 0:
        counters.epoch_losses, counters.epoch_bad = [], 0
    losses, t0, seen = counters.epoch_losses, time.perf_counter(), 0
    for step, batch in zip(range(start_step, batches), data_loader):
        check_interrupt()
        loss, logs = train_step(model, batch, optimizer, device, epoch, counters.global_step, step / batches,
                                uses_fast_path(device, str(cfg.precision)))
        if D.broadcast_flag(not math.isfinite(loss), info):
            raise TrainingDivergedError(
                f"loss is {loss} at epoch {epoch + 1}, step {step + 1}: stopped; the last good checkpoint is "
                f"{checkpoints.run / CHECKPOINT_LAST} (lower --lr, or check the data)")
        counters.global_step += 1
        losses.append(loss)
        counters.epoch_bad += batch["bad"]
        seen += len(batch["keys"])
        if info.main:
            rate = seen * info.world / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.1f}", refresh=False)
            bar.update(1)
            if writer:
                writer.add_scalar("train/loss", loss, counters.global_step)
                for k, v in logs.items():
                    writer.add_scalar(f"train/{k}", v, counters.global_step)
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < batches:
            checkpoints.checkpoint(epoch, step + 1)
    bar.close()
    bad = counters.epoch_bad
    if not losses:
        raise MlrplError(f"epoch {epoch + 1} trained on no batch ({bad} bad sample(s) skipped): the training shards "
                         f"yielded nothing usable; run mlrpl verify {cfg.dataset}")
    mean = float(np.mean(losses))
    counters.epoch_losses, counters.epoch_bad = [], 0
    return mean, bad, seen * info.world / max(time.perf_counter() - t0, 1e-9)


# ---- evaluation --------------------------------------------------------------------------------------------------------

@torch.no_grad()
def predict(core, cfg: TrainConfig, spec: DataSpec, info: D.DistInfo, device, progress: bool = False,
            role: str = "test") -> tuple[list[str], np.ndarray, np.ndarray]:
    """Scores of this rank's share of the test (or validation) images, each on exactly one rank, with
    the labels they are judged on: the full labels (test), the mask's partial labels (validation)."""
    core.eval()
    keys, scores, labels = [], [], []
    n = spec.test_samples if role == "test" else len(spec.val_keys)
    fast = uses_fast_path(device, str(cfg.precision))
    with progress_bar(math.ceil(n / max(1, info.world * cfg.batch_size)), role, "batch", progress and info.main) as bar:
        # at most one loader process per batch: --workers 64 on 12 test images starts 2, not 64
        workers = min(int(cfg.workers), math.ceil(n / max(1, info.world * cfg.batch_size)))
        for batch in make_loader(stream_config(cfg, spec, info, role), workers):
            check_interrupt()
            x = to_device(batch["images"], device, channels_last=fast)
            with autocast(device, fast):
                logits = core(x)
            scores.append(torch.sigmoid(logits.float()).cpu().numpy())
            labels.append(batch["labels" if role == "test" else "partial"].numpy())
            keys += batch["keys"]
            bar.update(1)
    c = spec.num_classes
    return keys, (np.concatenate(scores) if scores else np.zeros((0, c))), (np.concatenate(labels) if labels else np.zeros((0, c), np.int8))


def evaluate_model(core, cfg, spec, info, device, progress: bool = False, role: str = "test",
                   scores_out: Callable[[list[str], np.ndarray, np.ndarray], None] | None = None
                   ) -> dict[str, Any] | None:
    """Gather every rank's predictions; rank 0 computes the metrics (None elsewhere) and hands
    `scores_out`, when given, the per-image (keys, scores (N, C), labels (N, C)) in key order."""
    parts = D.gather_objects(predict(core, cfg, spec, info, device, progress, role), info)
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
    if scores_out is not None:
        scores_out(list(np.asarray(keys)[order]), scores, labels)
    return out


# ---- the whole run -------------------------------------------------------------------------------------------------------

@releasing
def train(cfg: TrainConfig, resume: bool = False, force: bool = False) -> Path:
    """Train (or resume) a run. A new run that fails before its first checkpoint leaves nothing:
    the files it wrote go, so the retry is not blocked by a half-made run. Only the process that
    claimed the folder removes anything (a second `train --out R` started beside it is refused)."""
    info = D.init_distributed()
    run = Path(cfg.out)
    try:
        return _train(cfg, info, resume, force)
    except BaseException:
        if info.main and made_here(run) and not (run / CHECKPOINT_LAST).exists():
            remove_owned(run, RUN_ENTRIES)
            unclaim(run)
        raise
    finally:
        D.shutdown(info)


def _prepare(cfg: TrainConfig, info: D.DistInfo, resume: bool, force: bool) -> tuple[torch.device, DataSpec, Path, int]:
    """The device, the data, the run directory (claimed) and the batches of an epoch on every rank."""
    if not cfg.masks:
        raise BadInputError("--masks NAME is required (see `mlrpl masks DIR`)")
    torch.manual_seed(cfg.seed)
    device = pick_device(str(cfg.device), info.local_rank)  # before anything is written
    spec = resolve_data(cfg.dataset, cfg.masks, cfg.val_fraction)
    run = Path(cfg.out) if resume else prepare_run_dir(cfg, spec, force, info.main)
    # decided from index.json on every rank alike, before training: no rank waits on another (a refusal
    # here removes the run folder just claimed, as any failed command does)
    batches = batches_per_epoch(spec.fit_samples, info.world, cfg.batch_size, len(spec.val_keys))
    check_readers(spec.fit_samples, info.world, min(int(cfg.workers), batches))
    if resume and info.main:
        claim(run, "run", "--resume")  # held like a new run's: a second command on it is refused
        sweep_stale(run)  # a checkpoint half-written when the run was killed
    return device, spec, run, batches


def _train(cfg: TrainConfig, info: D.DistInfo, resume: bool, force: bool) -> Path:
    """Data, run directory, model, optimizer; a resumed run continues from its last checkpoint; then the epochs."""
    device, spec, run, batches = _prepare(cfg, info, resume, force)
    D.barrier(info)
    core = build_model(cfg, spec).to(device)
    if uses_fast_path(device, str(cfg.precision)):
        core = core.to(memory_format=torch.channels_last)
    params = [p for p in core.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=0.1)
    check_batch_of_one(core, cfg)
    workers = training_workers(cfg, batches, info)
    if info.main:
        check_validation(cfg, spec)
    resume = resume and resumes_from_checkpoint(run, info.main)
    counters = (restore_checkpoint(run, cfg, spec, core, optimizer, scheduler, info.main, info.world) if resume
                else RunCounters())
    if resume and info.main:
        record_config(run, cfg, spec)  # with the changes --resume applied (more epochs, other workers...)
        drop_rows_after(run / "metrics.csv", counters.epoch)  # epochs logged after the checkpoint are trained again
    checkpoints = RunCheckpoints(run, core, optimizer, scheduler, cfg, spec, counters, selection_rule(cfg, spec),
                                 info.main, info.world)
    model = core
    if info.world > 1:
        # the registry says which methods have parameters without a gradient in some steps (DSRB's alpha/beta)
        model = DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=get_method(cfg.method).ddp_unused)
    writer = None
    if info.main:
        from torch.utils.tensorboard import SummaryWriter

        # resumed: TensorBoard drops every event from the first step trained again (each step once)
        writer = SummaryWriter(str(run / "tb"), purge_step=counters.global_step + 1 if resume else None)
    try:
        return _epochs(model, core, optimizer, scheduler, device, cfg, spec, info, checkpoints=checkpoints,
                       batches=batches, workers=workers, writer=writer)
    except BaseException:  # an error or an interrupt: the event writer's thread must not outlive the run
        if writer:
            writer.close()
        raise


def _epochs(model, core: PartialLabelModel, optimizer, scheduler, device, cfg: TrainConfig, spec: DataSpec,
            info: D.DistInfo, *, checkpoints: RunCheckpoints, batches: int, workers: int, writer) -> Path:
    """Epochs counters.epoch..cfg.epochs-1: each one trained, evaluated when due, logged, checkpointed."""
    counters, run = checkpoints.counters, checkpoints.run
    metrics, trained = None, False  # a resumed run that had already finished trains no epoch
    if counters.epoch >= cfg.epochs and info.main:
        print(finished_line(run, cfg.epochs), file=sys.stderr)
    for epoch in range(counters.epoch, cfg.epochs):
        if counters.step == 0:  # mid-epoch resume: the checkpoint holds the hook's state
            core.before_epoch(epoch, lambda: _prototype_loader(cfg, spec, info, epoch), device, info)
        t0 = time.perf_counter()
        loader = make_loader(stream_config(cfg, spec, info, "train", epoch=epoch, skip=counters.step), workers)
        loss, bad, rate = train_one_epoch(model, optimizer, loader, device, epoch, cfg, info=info, counters=counters,
                                          batches=batches, checkpoints=checkpoints, writer=writer)
        trained = True
        scheduler.step()
        metrics = val = None
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            metrics = evaluate_model(core, cfg, spec, info, device, cfg.progress)
            if spec.val_keys:
                val = evaluate_model(core, cfg, spec, info, device, cfg.progress, role="val")
        counters.epoch, counters.step = epoch + 1, 0
        if info.main:
            score = selection_score(cfg, metrics, val)
            improved = score is not None and score > counters.best_score
            if improved:
                counters.best_score = score
            # the log first: a kill before the checkpoint leaves a row that the resume drops and writes again
            log_epoch(run, writer, epoch + 1, loss, optimizer.param_groups[0]["lr"], bad, rate,
                      time.perf_counter() - t0, metrics, val, checkpoints.selection, improved, step=counters.global_step)
            checkpoints.checkpoint(epoch + 1, 0, best=improved)
        D.barrier(info)
    if writer and trained:
        writer.add_hparams({"method": str(cfg.method), "mask": cfg.masks, "val_fraction": cfg.val_fraction,
                            "selection": checkpoints.selection or "none: the last epoch"},
                           {"hparam/test_mAP_last": _num(metrics["mAP"] if metrics else None),
                            "hparam/best_score": counters.best_score}, run_name="hparams")
    if writer:
        writer.close()
    return run


def _num(x: float | None) -> float:
    return float("nan") if x is None else x


def check_batch_of_one(core: torch.nn.Module, cfg: TrainConfig) -> None:
    """BatchNorm in training mode cannot take a batch of one image: refused before anything trains."""
    core.train()
    if cfg.batch_size == 1 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
                                   for m in core.modules()):
        raise BadInputError(f"--batch-size 1: a training batch of one image, and {cfg.backbone}'s trainable BatchNorm "
                            f"layers need more than one value per channel; use --batch-size 2 or more")


def training_workers(cfg: TrainConfig, batches: int, info: D.DistInfo) -> int:
    """Loader processes of the training stream: at most one per batch of an epoch, so every worker's
    share of a rank's images fills batches (a worker with no image would change which worker makes
    which batch, and a resumed run's order); the cap depends only on the data, so a resume keeps it."""
    n = min(int(cfg.workers), batches)
    if n < int(cfg.workers) and info.main:
        print(f"note: --workers {cfg.workers} lowered to {n} for training: an epoch is {batches} batch(es) of "
              f"{cfg.batch_size} per rank, and more workers would have too few images to share", file=sys.stderr)
    return n


def check_validation(cfg: TrainConfig, spec: DataSpec) -> None:
    """Before training: can the held-out images choose best.pt? Validation mAP counts a class only with
    a known positive AND a known negative among them; say how many classes that is, or that none is."""
    if cfg.select != "val" or not spec.val_keys or not spec.partial:
        return
    from .metrics import ap_classes

    rows = np.stack([spec.partial[k] for k in sorted(spec.val_keys)])
    ok, no_pos, no_neg = ap_classes(rows)
    n, c = len(rows), spec.num_classes
    if not ok.any():
        print(f"warning: --val-fraction {cfg.val_fraction:g} holds out {n} training image(s), and on mask "
              f"{cfg.masks}'s known labels no class has both a known positive and a known negative among them "
              f"({int(no_pos.sum())} of {c} classes have no known positive, {int(no_neg.sum())} no known negative): "
              f"validation mAP is undefined, so no best.pt will be written and the last epoch is the result; "
              f"use a larger --val-fraction or a mask with more known labels, or --val-fraction 0", file=sys.stderr)
    elif not ok.all():
        print(f"note: validation mAP is over {int(ok.sum())} of {c} classes: the others have no known positive "
              f"({int(no_pos.sum())}) or no known negative ({int(no_neg.sum())}) among the {n} held-out image(s)",
              file=sys.stderr)


def selection_rule(cfg: TrainConfig, spec: DataSpec) -> str:
    """How best.pt is chosen, in words ("" when there is none and the last epoch is the result)."""
    if cfg.select == "test-as-published":
        return "best TEST mAP: selected on the test set, as the published code does"
    if spec.val_keys:
        return (f"best validation mAP ({len(spec.val_keys):,} held-out training images, --val-fraction "
                f"{cfg.val_fraction:g}, judged on the mask's known labels)")
    return ""


def selection_score(cfg: TrainConfig, test: dict | None, val: dict | None) -> float | None:
    if cfg.select == "test-as-published":
        return test["mAP"] if test else None  # None when undefined: never a best.pt
    return val["mAP"] if val else None


def _prototype_loader(cfg: TrainConfig, spec: DataSpec, info: D.DistInfo, epoch: int):
    """Every training image once, under the training augmentation (crop and flip), for DSRB's
    prototypes: the authors compute them by iterating their training loader."""
    sc = stream_config(cfg, spec, info, "test", epoch=epoch)
    sc.urls, sc.partial, sc.augment, sc.exclude = spec.train_urls, spec.partial, True, spec.val_keys
    sc.counts, sc.unsure = spec.fit_counts()
    # at most one loader process per batch, as training and evaluation take
    return make_loader(sc, min(int(cfg.workers), math.ceil(spec.fit_samples / max(1, info.world * cfg.batch_size))))
