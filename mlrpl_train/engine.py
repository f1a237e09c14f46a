"""The training engine: `train(cfg)` and `evaluate_checkpoint(...)`, reading top to bottom.

train: resolve data (fingerprints checked) -> run directory -> model -> Adam + step decay
-> for each epoch: train_one_epoch (fixed number of batches on every rank) -> evaluate
(every test image once, across ranks) -> checkpoints (last, best) and logs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlrpl_data.errors import AlreadyExistsError, BadInputError, MlrplError, check_interrupt
from mlrpl_data.fsutil import atomic_copy, atomic_write_bytes, atomic_write_text, atomic_write_with, check_sealed
from mlrpl_data.manifest import check_fingerprint, read_card
from mlrpl_data.ownership import (MARKER, claim, claim_file, made_here, owner, parquet_kind, refuse_overlap, releasing,
                                  remove_owned, sweep_stale, unclaim)
from mlrpl_data.progress import progress_bar

from . import dist as D
from .data import DataSpec, resolve_data
from .device import autocast, pick_device, to_device, uses_fast_path
from .loader import StreamConfig, batches_per_epoch, check_readers, make_loader
from .memory import process_peak_mb
from .metrics import evaluate_scores, per_epoch_metrics
from .model.factory import build_model
from .options import TrainConfig, config_from_json, option_groups
from .registry import get as get_method

CHECKPOINT_LAST, CHECKPOINT_BEST = "last.pt", "best.pt"
CONFIG_JSON = "config.json"


class TrainingDivergedError(MlrplError):
    """A NaN or infinite loss."""


# ---- run directory and checkpoints ---------------------------------------------------------------------------

# what a run directory holds that mlrpl wrote: --force replaces these and nothing else
RUN_ENTRIES = (CONFIG_JSON, "metrics.csv", "metrics_last.json", "eval_metrics.json", "per_class_ap.json",
               "per_class_ap.png", CHECKPOINT_LAST, CHECKPOINT_BEST, "tb")


# what training wrote in a run: inputs of evaluate, predict and export (evaluate's reports may be replaced)
RUN_INPUTS = (CONFIG_JSON, "metrics.csv", "metrics_last.json", CHECKPOINT_LAST, CHECKPOINT_BEST, "tb", MARKER)


def run_inputs(run_or_file: str | Path) -> dict[str, Path]:
    """The files a command reading a run (or one of its checkpoints) must never write over."""
    p = Path(run_or_file)
    found = {"the model": p} if p.is_file() else {}
    run = p if p.is_dir() else p.parent
    if (run / CONFIG_JSON).is_file() or owner(run) == "run":
        found.update({f"the run's {name}": run / name for name in RUN_INPUTS if (run / name).exists()})
    return found


def train_inputs(cfg: TrainConfig) -> dict[str, str | Path | None]:
    """A training's inputs that are local paths: the dataset, a --weights or --embeddings file."""
    found: dict[str, str | Path | None] = {"the dataset": cfg.dataset}
    for flag, value in (("--weights", cfg.weights), ("--embeddings", cfg.embeddings)):
        if value and Path(value).exists():
            found[f"the {flag} file"] = value
    return found


def prepare_run_dir(cfg: TrainConfig, spec: DataSpec, force: bool, main: bool) -> Path:
    """The run directory, claimed for mlrpl (an existing folder mlrpl did not make is refused, also
    with --force); --force replaces an earlier run's files, keeping anything else in the folder."""
    run = Path(cfg.out)
    if main:
        refuse_overlap(run, train_inputs(cfg), "--out")
        claim(run, "run", "--out")
        sweep_stale(run)
        if (run / CONFIG_JSON).exists() or (run / CHECKPOINT_LAST).exists():
            if not force:
                raise AlreadyExistsError(f"{run}: already holds a run; pass --resume {run} to continue it or --force to replace it")
            kept = remove_owned(run, RUN_ENTRIES)
            if kept:
                print(f"note: {run}: kept {', '.join(kept[:5])} (not written by mlrpl)", file=sys.stderr)
        record_config(run, cfg, spec)
    return run


def record_config(run: Path, cfg: TrainConfig, spec: DataSpec) -> None:
    """config.json: the whole config (read back strictly by load_run_config) and what it ran on."""
    doc = {"config": cfg.to_json(), "manifest_fingerprint": spec.fingerprint, "mask": spec.mask_name,
           "train_samples": spec.train_samples, "test_samples": spec.test_samples, "class_names": spec.class_names}
    atomic_write_text(Path(run) / CONFIG_JSON, json.dumps(doc, indent=2) + "\n")


# options a resumed run may change: how long it trains and where and how it runs, never what it learns.
# The one list: the command line of --resume, an edited config.json and a sweep's re-run are held to it.
RESUME_CHANGEABLE = ("epochs", "workers", "device", "progress", "checkpoint_every", "eval_every", "dataset")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _holder(cfg: TrainConfig, name: str) -> Any:
    """The dataclass holding option `name`: the config itself or one of its option groups (dsrb, baselines...)."""
    for obj in (cfg, *option_groups(cfg)):
        if name in {f.name for f in dataclasses.fields(obj)} and not dataclasses.is_dataclass(getattr(obj, name)):
            return obj
    return None


def _flat(cfg: TrainConfig) -> dict[str, Any]:
    """Every option by name (the groups' options beside the top-level ones), as config.json writes them."""
    out: dict[str, Any] = {}
    for k, v in cfg.to_json().items():
        out.update(v if isinstance(v, dict) else {k: v})
    return out


def fixed_differences(trained: TrainConfig, asked: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(option, asked value, trained value) for every option outside RESUME_CHANGEABLE that differs."""
    a, b = _flat(trained), _flat(asked)
    return [(k, b.get(k), a.get(k)) for k in a if k not in RESUME_CHANGEABLE and k != "out" and a.get(k) != b.get(k)]


def _changeable() -> str:
    # the dataset is an argument, not an option: it may move (another path to the same fingerprint)
    return ", ".join("the DATASET path" if n == "dataset" else _flag(n) for n in RESUME_CHANGEABLE)


def check_resumable(ckpt_config: dict, cfg: TrainConfig, where: str) -> None:
    """A resume trains on what its checkpoint was trained with: any other value of a fixed option is refused."""
    diffs = fixed_differences(config_from_json(ckpt_config, where), cfg)
    if diffs:
        raise BadInputError(f"{where}: was trained with other options than this resume asks for: "
                            f"{'; '.join(f'{_flag(k)} {new} (the checkpoint has {old})' for k, new, old in diffs)}; "
                            f"drop them, or start a new run with another --out (only {_changeable()} may change)")


def resume_config(run: Path, requested: TrainConfig, given: set[str]) -> tuple[TrainConfig, list[str]]:
    """The config `run` was trained with, with the options the user typed (`given`) applied where they
    may change (RESUME_CHANGEABLE); any other typed option that differs is an error listing them all.
    config.json is checked against the copy last.pt carries: a hand edit of a fixed option is refused.
    Returns the config and a line per applied change."""
    stored = load_run_config(run)
    last = Path(run) / CHECKPOINT_LAST
    if last.exists():
        trained = config_from_json(load_checkpoint(last)["config"], str(last))
        edited = fixed_differences(trained, stored)
        if edited:
            raise BadInputError(f"{Path(run) / CONFIG_JSON}: differs from the config {last} was trained with: "
                                f"{'; '.join(f'{k} {new} (the checkpoint has {old})' for k, new, old in edited)}: "
                                f"config.json was edited; restore those values (only {_changeable()} may change "
                                f"on resume, on the command line) or start a new run with another --out")
    conflicts, changed = [], []
    for name in sorted(given):
        old_obj, new_obj = _holder(stored, name), _holder(requested, name)
        if old_obj is None or new_obj is None or name == "out":
            continue  # not a training option (--resume, --force, --nproc)
        old, new = getattr(old_obj, name), getattr(new_obj, name)
        if old == new:
            continue
        if name in RESUME_CHANGEABLE:
            setattr(old_obj, name, new)
            changed.append(f"{_flag(name)} {new} (was {old})")
        else:
            conflicts.append(f"{'METHOD' if name == 'method' else _flag(name)} {new} (the run has {old})")
    if conflicts:
        raise BadInputError(f"{run}: --resume continues the stored run, and these options conflict with it: "
                            f"{'; '.join(conflicts)}. Drop them, or start a new run with another --out "
                            f"(only {_changeable()} may change)")
    stored.out = str(run)
    return stored, changed


def load_run_config(run: Path) -> TrainConfig:
    path = Path(run) / CONFIG_JSON
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInputError(f"{run}: no {CONFIG_JSON}: not a run directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(doc, dict) or "config" not in doc:
        raise BadInputError(f"{path}: has no 'config' object: not a run's config")
    return config_from_json(doc["config"], str(path))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomic and sealed with its sha256: a kill or a full disk while saving leaves the previous
    checkpoint intact and no temporary; a bit flipped later is found when it is read."""
    atomic_write_with(path, lambda f: torch.save(payload, f), seal=True)


CHECKPOINT_FIELDS = {"model": dict, "config": dict, "fingerprint": str, "epoch": int, "step": int, "global_step": int,
                     "best_score": float, "selection": str, "class_names": list}


def read_weights_file(path: Path, checked: bool = False) -> Any:
    """torch.load with weights_only (no code runs) of a regular file whose seal (sha256) is checked
    first (unless `checked` already), with one-line errors."""
    from mlrpl_data.readers import file_size

    file_size(str(path))  # a regular file (else a clear error), before torch opens it
    if not checked:
        check_sealed(path, "checkpoint", "use the run's other checkpoint (--checkpoint last|best) or retrain")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BadInputError(f"{path}: checkpoint not found") from None
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError... for a damaged file
        raise BadInputError(f"{path}: not a readable mlrpl checkpoint ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]}); use the run's other checkpoint or retrain") from None


def check_checkpoint(ckpt: Any, path: Path) -> dict[str, Any]:
    from mlrpl_data.readers import check_fields

    check_fields(ckpt, CHECKPOINT_FIELDS, str(path))
    return ckpt


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint mlrpl wrote (weights only: no code runs), its fields checked."""
    return check_checkpoint(read_weights_file(path), path)


def checkpoint_file(run_or_file: Path, checkpoint: str = "last") -> Path:
    """A run directory's last.pt (best.pt with checkpoint="best"), or the file itself."""
    p = Path(run_or_file)
    if not p.exists():
        raise BadInputError(f"{p}: no such run directory or checkpoint")
    name = CHECKPOINT_BEST if checkpoint == "best" else CHECKPOINT_LAST
    ckpt_path = p if p.is_file() else p / name
    if not ckpt_path.exists():
        if checkpoint == "best" and (p / CHECKPOINT_LAST).exists():
            raise BadInputError(f"{p}: has no {CHECKPOINT_BEST} ({missing_best_reason(p)}): its result is the last "
                                f"epoch; evaluate {CHECKPOINT_LAST}")
        raise BadInputError(f"{p}: holds no {name}: not a run directory")
    return ckpt_path


def run_files(run: Path) -> list[str]:
    """The files of a run directory that exist, in the order a report names them."""
    return [n + ("/" if n == "tb" else "") for n in (CONFIG_JSON, "metrics.csv", "metrics_last.json", "tb",
                                                     CHECKPOINT_LAST, CHECKPOINT_BEST) if (Path(run) / n).exists()]


def missing_best_reason(run: Path) -> str:
    """Why a run has no best.pt, read from what its last.pt was trained with."""
    try:
        ckpt = load_checkpoint(Path(run) / CHECKPOINT_LAST)
        cfg = config_from_json(ckpt["config"], str(Path(run) / CHECKPOINT_LAST))
    except MlrplError:
        return "its last.pt is unreadable"
    if cfg.select == "test-as-published":
        return "no epoch had a defined test mAP"
    if cfg.val_fraction == 0:
        return "trained without a validation split, --val-fraction 0"
    if not ckpt["selection"]:
        return f"--val-fraction {cfg.val_fraction:g} held out no image of mask {cfg.masks}"
    return (f"--val-fraction {cfg.val_fraction:g}: no evaluated epoch had a defined validation mAP, since no class "
            f"had both a known positive and a known negative among the held-out images (metrics.csv, val_mAP)")


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
    core = getattr(model, "module", model)
    extra = {"keys": batch["keys"]} if getattr(core, "wants_keys", False) else {}  # LL-Cp's per-image corrections
    optimizer.zero_grad(set_to_none=True)  # before the forward pass: the old gradients never share the peak
    with autocast(device, fast):
        loss, logs = model(x, partial=y, epoch=epoch, step=global_step, progress=progress, **extra)
    if torch.isfinite(loss):
        loss.backward()
        optimizer.step()
        if hasattr(core, "after_step"):
            core.after_step()  # e.g. keep DSRB's alpha and beta in [0, 1]
    return float(loss.detach()), logs


@dataclass
class RunState:
    """Everything one run carries from epoch to epoch."""

    cfg: TrainConfig
    spec: DataSpec
    info: D.DistInfo
    device: torch.device
    run: Path
    core: torch.nn.Module  # the model itself
    model: torch.nn.Module  # the same, wrapped in DDP when there are several ranks
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batches: int  # per epoch, on every rank
    writer: Any = None
    epoch: int = 0  # the next epoch to run (0-based)
    step: int = 0  # batches of that epoch already done (a resumed run continues there)
    global_step: int = 0
    best_score: float = -1.0  # the selection score of best.pt so far
    selection: str = ""  # how best.pt is chosen, in words ("" when there is no best.pt)
    workers: int = 0  # training loader processes (cfg.workers, at most one per batch of an epoch)
    epoch_losses: list = field(default_factory=list)  # the losses of the epoch so far: a mid-epoch resume goes on
    epoch_bad: int = 0  # bad samples skipped in the epoch so far

    def checkpoint(self, epoch: int, step: int, best: bool = False) -> None:
        if not self.info.main:
            return
        payload = {"model": self.core.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "scheduler": self.scheduler.state_dict(), "epoch": epoch, "step": step,
                   "global_step": self.global_step, "best_score": self.best_score, "selection": self.selection,
                   "config": self.cfg.to_json(), "fingerprint": self.spec.fingerprint,
                   "mask": self.spec.mask_name or "", "class_names": self.spec.class_names,
                   "epoch_losses": [float(x) for x in self.epoch_losses], "epoch_bad": int(self.epoch_bad)}
        save_checkpoint(self.run / CHECKPOINT_LAST, payload)
        if best:
            atomic_copy(self.run / CHECKPOINT_LAST, self.run / CHECKPOINT_BEST)


def train_one_epoch(st: RunState, epoch: int, start_step: int) -> tuple[float, int, float]:
    """Batches start_step..batches-1 of `epoch`: (mean loss, bad samples skipped, images/s)."""
    cfg, info = st.cfg, st.info
    st.model.train()
    loader = make_loader(stream_config(cfg, st.spec, info, "train", epoch=epoch, skip=start_step), st.workers)
    bar = progress_bar(st.batches, f"epoch {epoch + 1}/{cfg.epochs}", "batch", cfg.progress and info.main, start_step)
    if start_step == 0:
        st.epoch_losses, st.epoch_bad = [], 0
    losses, t0, seen = st.epoch_losses, time.perf_counter(), 0
    for step, batch in zip(range(start_step, st.batches), loader):
        check_interrupt()
        loss, logs = train_step(st.model, batch, st.optimizer, st.device, epoch, st.global_step, step / st.batches,
                                uses_fast_path(st.device, str(cfg.precision)))
        if D.broadcast_flag(not math.isfinite(loss), info):
            raise TrainingDivergedError(
                f"loss is {loss} at epoch {epoch + 1}, step {step + 1}: stopped; the last good checkpoint is "
                f"{st.run / CHECKPOINT_LAST} (lower --lr, or check the data)")
        st.global_step += 1
        losses.append(loss)
        st.epoch_bad += batch["bad"]
        seen += len(batch["keys"])
        if info.main:
            rate = seen * info.world / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.1f}", refresh=False)
            bar.update(1)
            if st.writer:
                st.writer.add_scalar("train/loss", loss, st.global_step)
                for k, v in logs.items():
                    st.writer.add_scalar(f"train/{k}", v, st.global_step)
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < st.batches:
            st.checkpoint(epoch, step + 1)
    bar.close()
    bad = st.epoch_bad
    if not losses:
        raise MlrplError(f"epoch {epoch + 1} trained on no batch ({bad} bad sample(s) skipped): the training shards "
                         f"yielded nothing usable; run mlrpl verify {cfg.dataset}")
    mean = float(np.mean(losses))
    st.epoch_losses, st.epoch_bad = [], 0
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
                   scores_out: Path | None = None) -> dict[str, Any] | None:
    """Gather every rank's predictions; rank 0 computes the metrics (None elsewhere) and, with
    `scores_out`, writes the per-image scores."""
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
        write_scores(scores_out, list(np.asarray(keys)[order]), scores, labels)
    return out


def write_scores(path: Path, keys: list[str], scores: np.ndarray, labels: np.ndarray) -> None:
    """Per-image scores as Parquet (key, scores list<float32>, labels list<int8>): any metric can be
    recomputed from it without the model."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, c = scores.shape
    offsets = pa.array(np.arange(0, (n + 1) * c, c, dtype=np.int32))
    table = pa.table({"key": pa.array(keys, type=pa.string()),
                      "scores": pa.ListArray.from_arrays(offsets, pa.array(scores.astype(np.float32).reshape(-1))),
                      "labels": pa.ListArray.from_arrays(offsets, pa.array(labels.astype(np.int8).reshape(-1)))})
    table = table.replace_schema_metadata({"mlrpl": "scores"})  # claim_file replaces only a file marked so
    atomic_write_with(Path(path), lambda f: pq.write_table(table, f))


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


def _start(cfg: TrainConfig, info: D.DistInfo, resume: bool, force: bool) -> RunState:
    """Data, run directory, model, optimizer; a resumed run continues from its last checkpoint."""
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
    D.barrier(info)
    core = build_model(cfg, spec).to(device)
    if uses_fast_path(device, str(cfg.precision)):
        core = core.to(memory_format=torch.channels_last)
    params = [p for p in core.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=0.1)
    st = RunState(cfg=cfg, spec=spec, info=info, device=device, run=run, core=core, model=core, optimizer=optimizer,
                  scheduler=scheduler, batches=batches,
                  selection=selection_rule(cfg, spec))
    check_batch_of_one(core, cfg)
    st.workers = training_workers(cfg, st.batches, info)
    if info.main:
        check_validation(cfg, spec)
    if resume and not (run / CHECKPOINT_LAST).exists() and (run / CONFIG_JSON).exists():
        print(f"note: {run} was stopped before its first checkpoint: starting it from the beginning", file=sys.stderr)
        resume = False
        if info.main:
            remove_owned(run, tuple(e for e in RUN_ENTRIES if e != CONFIG_JSON))
    if resume:
        ckpt = load_checkpoint(run / CHECKPOINT_LAST)
        check_fingerprint(ckpt["fingerprint"], spec.fingerprint, f"{run}", "train a new run on this dataset")
        check_resumable(ckpt["config"], cfg, str(run / CHECKPOINT_LAST))
        done = ckpt["epoch"] + (1 if ckpt["step"] else 0)  # epochs begun: a mid-epoch checkpoint's epoch counts
        if cfg.epochs < done:
            raise BadInputError(f"{run}: --epochs {cfg.epochs} is below the {done} epoch(s) already trained "
                                f"({run / CHECKPOINT_LAST}); pass --epochs {done} or more, or train a new run")
        if (run / CHECKPOINT_BEST).exists():  # a damaged best.pt is not carried on as the run's result
            check_sealed(run / CHECKPOINT_BEST, "checkpoint", f"delete it to resume (a later epoch that beats "
                                                              f"{ckpt['best_score']:.4f} writes a new one) or retrain")
        try:
            core.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError) as e:  # another model than the one trained: say what can cause it
            raise BadInputError(
                f"{run / CHECKPOINT_LAST}: the model built for this resume differs from the one it trained "
                f"({str(e).splitlines()[0][:160]}); the usual cause is label embeddings that were learned in the run "
                f"and now exist as {cfg.embeddings or 'DATASET/label_embeddings.npy'} (or the reverse): put the "
                f"dataset back as it was trained, or train a new run") from None
        scheduler.load_state_dict(ckpt["scheduler"])
        st.epoch, st.step, st.global_step, st.best_score = ckpt["epoch"], ckpt["step"], ckpt["global_step"], ckpt["best_score"]
        if st.step:  # the epoch's loss so far: its train_loss is the uninterrupted run's
            st.epoch_losses, st.epoch_bad = list(ckpt.get("epoch_losses") or []), int(ckpt.get("epoch_bad") or 0)
            if len(st.epoch_losses) != st.step and info.main:
                print(f"note: {run / CHECKPOINT_LAST} holds no losses of epoch {st.epoch + 1}'s first {st.step} "
                      f"steps (written by an older mlrpl): that epoch's train_loss is over the resumed steps only",
                      file=sys.stderr)
        if info.main:
            record_config(run, cfg, spec)  # with the changes --resume applied (more epochs, other workers...)
            drop_rows_after(run / "metrics.csv", st.epoch)  # epochs logged after the checkpoint are trained again
    if info.world > 1:
        # the registry says which methods have parameters without a gradient in some steps (DSRB's alpha/beta)
        st.model = torch.nn.parallel.DistributedDataParallel(
            core, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=get_method(cfg.method).ddp_unused)
    if info.main:
        from torch.utils.tensorboard import SummaryWriter

        # resumed: TensorBoard drops every event from the first step trained again (each step once)
        st.writer = SummaryWriter(str(run / "tb"), purge_step=st.global_step + 1 if resume else None)
    return st


def _train(cfg: TrainConfig, info: D.DistInfo, resume: bool, force: bool) -> Path:
    st = _start(cfg, info, resume, force)
    try:
        return _epochs(st, cfg, info)
    except BaseException:  # an error or an interrupt: the event writer's thread must not outlive the run
        if st.writer:
            st.writer.close()
        raise


def _epochs(st: RunState, cfg: TrainConfig, info: D.DistInfo) -> Path:
    metrics, trained = None, False  # a resumed run that had already finished trains no epoch
    if st.epoch >= cfg.epochs and info.main:
        print(f"note: {st.run} had already finished its {cfg.epochs} epoch(s): nothing trained (pass a larger "
              f"--epochs to train on)", file=sys.stderr)
    for epoch in range(st.epoch, cfg.epochs):
        start_step = st.step if epoch == st.epoch else 0
        if hasattr(st.core, "before_epoch") and start_step == 0:  # mid-epoch resume: the checkpoint holds its state
            st.core.before_epoch(epoch, lambda: _prototype_loader(cfg, st.spec, info, epoch), st.device, info)
        t0 = time.perf_counter()
        loss, bad, rate = train_one_epoch(st, epoch, start_step)
        trained = True
        st.scheduler.step()
        metrics = val = None
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            metrics = evaluate_model(st.core, cfg, st.spec, info, st.device, cfg.progress)
            if st.spec.val_keys:
                val = evaluate_model(st.core, cfg, st.spec, info, st.device, cfg.progress, role="val")
        st.epoch, st.step = epoch + 1, 0
        if info.main:
            score = selection_score(cfg, metrics, val)
            improved = score is not None and score > st.best_score
            if improved:
                st.best_score = score
            # the log first: a kill before the checkpoint leaves a row that the resume drops and writes again
            log_epoch(st.run, st.writer, epoch + 1, loss, st.optimizer.param_groups[0]["lr"], bad, rate,
                      time.perf_counter() - t0, metrics, val, st.selection, improved, step=st.global_step)
            st.checkpoint(epoch + 1, 0, best=improved)
        D.barrier(info)
    if st.writer and trained:
        st.writer.add_hparams({"method": str(cfg.method), "mask": cfg.masks, "val_fraction": cfg.val_fraction,
                               "selection": st.selection or "none: the last epoch"},
                              {"hparam/test_mAP_last": _num(metrics["mAP"] if metrics else None),
                               "hparam/best_score": st.best_score}, run_name="hparams")
    if st.writer:
        st.writer.close()
    return st.run


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


def drop_rows_after(path: Path, epoch: int) -> None:
    """metrics.csv without the rows of epochs after `epoch` (the checkpoint a resume continues from)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keep = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= epoch]
    if len(keep) != len(rows):
        buf = io.StringIO()
        csv.writer(buf).writerows(keep)
        atomic_write_text(path, buf.getvalue())


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


# metrics.csv's header as runs wrote it before the metric registry (a resumed run keeps its own header); every
# other per-epoch metric of the registry is appended after it, so no column of an older run moves
METRIC_COLUMNS = ["epoch", "train_loss", "lr", "mAP", "mAP_voc", "OF1", "CF1", "OF1_top3", "CF1_top3", "val_mAP",
                  "val_mAP_voc", "best", "selection", "bad_samples", "images_per_s", "seconds", "peak_memory_mb",
                  "mAP_classes"]


def _map_text(m: dict) -> str:
    """'mAP 45.00', with over how many classes when some are left out, or why there is none."""
    c, k = m.get("classes", m["classes_evaluated"]), m["classes_evaluated"]
    if m["mAP"] is None:
        return f"mAP undefined (no class of {c} has a known positive and a known negative)"
    return f"mAP {100 * m['mAP']:.2f}" + (f" (over {k} of {c} classes)" if k < c else "")


def log_epoch(run: Path, writer, epoch, loss, lr, bad, rate, seconds, metrics, val=None, selection="",
              best=False, step: int | None = None) -> None:
    """One row of metrics.csv (test mAP = plain AP, mAP_voc = the published VOC-interpolated AP; val_*
    on the held-out training images; best = 1 where best.pt was taken; selection = how; an undefined mAP
    is an empty cell, and mAP_classes says over how many classes it is taken). TensorBoard gets the
    row at the global `step`, the axis a resume purges."""
    row = {"epoch": epoch, "train_loss": loss, "lr": lr, "bad_samples": bad, "images_per_s": rate, "seconds": seconds,
           "best": int(best), "selection": selection or "none: the last epoch is the result",
           "peak_memory_mb": process_peak_mb()}
    if metrics:
        row.update({m.name: metrics.get(m.name) for m in per_epoch_metrics()})
        row["mAP_classes"] = f"{metrics['classes_evaluated']}/{metrics.get('classes', metrics['classes_evaluated'])}"
        atomic_write_text(run / "metrics_last.json", json.dumps(metrics, indent=1))
    if val:
        row.update({"val_mAP": val["mAP"], "val_mAP_voc": val["mAP_voc"]})
    path = run / "metrics.csv"
    old = path.read_bytes() if path.exists() else b""
    columns = METRIC_COLUMNS + [m.name for m in per_epoch_metrics() if m.name not in METRIC_COLUMNS]
    if old:  # a run begun by an older mlrpl keeps its columns: a row never shifts under another header
        columns = next(csv.reader(io.StringIO(old.decode("utf-8"), newline="")), None) or METRIC_COLUMNS
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    if not old:
        w.writeheader()
    w.writerow({k: row.get(k, "") for k in columns})
    atomic_write_bytes(path, old + buf.getvalue().encode())  # whole rows or none (an append on a full disk cuts one)
    if writer:
        for k, v in row.items():
            if k not in ("selection", "mAP_classes") and v != "" and v is not None:
                writer.add_scalar(f"epoch/{k}", v, epoch if step is None else step)
        writer.flush()
    msg = f"epoch {epoch}: loss {loss:.4f}"
    if metrics:
        msg += f"  {_map_text(metrics)}  OF1 {100 * metrics['OF1']:.2f}  CF1 {100 * metrics['CF1']:.2f}"
    if val:
        msg += f"  val {_map_text(val)}{' (best)' if best else ''}"
    if bad:
        msg += f"  ({bad} bad samples skipped)"
    print(msg, file=sys.stderr)


# ---- mlrpl evaluate ----------------------------------------------------------------------------------------------------------

REPORTS = ("eval_metrics.json", "per_class_ap.json", "per_class_ap.png")


def evaluate_checkpoint(run_or_ckpt: Path, dataset: str, out: Path | None = None, workers: int = 2,
                        batch_size: int | None = None, progress: bool = False, checkpoint: str = "last",
                        scores: Path | None = None) -> dict[str, Any]:
    """Evaluate a run's last.pt (or best.pt with checkpoint="best", or a checkpoint file) on DATASET's
    test split; write the reports; the result says which checkpoint, how it was selected, both mAPs,
    and, on the paper's datasets, the published number and the difference."""
    for target, what in ((out, "--out"), (scores, "--scores")):
        if target is not None and Path(target).is_dir() == (what == "--scores") and Path(target).exists():
            raise BadInputError(f"{what} {target}: is a {'folder' if what == '--scores' else 'file'}")
    ckpt_path = checkpoint_file(run_or_ckpt, checkpoint)
    inputs = {**run_inputs(run_or_ckpt), **run_inputs(ckpt_path), "the dataset": dataset}
    for name in REPORTS:
        refuse_overlap(Path(out or ckpt_path.parent) / name, inputs, "--out", file=True)
    if scores is not None:
        refuse_overlap(scores, {**inputs, **{f"the report {n}": Path(out or ckpt_path.parent) / n for n in REPORTS}},
                       "--scores", file=True)
        claim_file(scores, "--scores", lambda p: parquet_kind(p) == "scores", "a scores file")
        sweep_stale(Path(scores).parent, of=Path(scores).name)
    ckpt = load_checkpoint(ckpt_path)
    cfg = config_from_json(ckpt["config"], str(ckpt_path))
    cfg.dataset, cfg.workers, cfg.progress = dataset, workers, progress
    if batch_size:
        cfg.batch_size = batch_size
    spec = resolve_data(dataset, None)
    check_fingerprint(ckpt["fingerprint"], spec.fingerprint, str(ckpt_path), "evaluate it on the dataset it was trained on")
    info = D.DistInfo()
    device = pick_device("auto")  # where it runs now, not where it was trained
    core = build_model(cfg, spec, state=ckpt["model"]).to(device)
    out = Path(out) if out else ckpt_path.parent
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_model(core, cfg, spec, info, device, progress, scores_out=scores)
    is_best = ckpt_path.name == CHECKPOINT_BEST
    metrics["checkpoint"] = {
        "file": str(ckpt_path), "epoch": ckpt["epoch"], "epochs": cfg.epochs, "method": str(cfg.method),
        "mask": ckpt.get("mask") or "",
        "selection": (ckpt["selection"] or "unknown") if is_best else "none: the last epoch"}
    metrics["published"] = _published_beside(dataset, spec.class_names, str(cfg.method), ckpt.get("mask") or "", metrics,
                                             float(cfg.val_fraction))
    atomic_write_text(out / "eval_metrics.json", json.dumps(metrics, indent=1))
    atomic_write_text(out / "per_class_ap.json", json.dumps(metrics["per_class_ap"], indent=1))
    title = (f"{read_card(dataset)['name']} test, {cfg.method} ({metrics['checkpoint']['mask'] or 'full labels'}, "
             f"{ckpt_path.name}): {_map_text(metrics)}")
    plot_per_class_ap(metrics["per_class_ap"], out / "per_class_ap.png", title=title)
    metrics["report_dir"] = str(out)
    return metrics


# the mask schemes of the paper's protocol (labels dropped uniformly at random): the only ones beside which
# the published figures mean anything (per-image and single-positive masks are other experiments)
PUBLISHED_SCHEMES = ("uniform-", "hcp-")


def _published_beside(dataset: str, class_names: list[str], method: str, mask: str, metrics: dict,
                      val_fraction: float = 0.0) -> dict | None:
    """Table 1's number for this method, dataset and known proportion, and ours minus it (VOC-interpolated
    mAP, the AP of the published evaluation); a run that held images out of training says so (the paper
    trained on the whole training split)."""
    import re

    from .published import SOURCE, benchmark_dataset, published

    m = re.search(r"-p(\d\.\d+)-", mask) if mask.startswith(PUBLISHED_SCHEMES) else None
    row = published(benchmark_dataset(read_card(dataset), class_names), method, float(m.group(1)) if m else None)
    if row is None or row["mAP"] is None or not m or metrics["mAP_voc"] is None:
        return None
    note = get_method(method).published_note  # P-GCN: its authors' own figures
    return {"source": f"{SOURCE}, Table {row['table']}{'; ' + note if note else ''}", "method": row["method"], "dataset": row["dataset_label"],
            "proportion": row["proportion"], "mAP": row["mAP"] / 100, "delta_mAP_voc": metrics["mAP_voc"] - row["mAP"] / 100,
            "note": (f"this run trained on {1 - val_fraction:.0%} of the training split (--val-fraction {val_fraction:g}), "
                     f"the paper on all of it (sweep's default, --val-fraction 0)") if val_fraction > 0 else None}


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
    try:
        atomic_write_with(Path(path), lambda f: fig.savefig(f, dpi=100, format="png"))
    finally:
        plt.close(fig)
