"""A run folder and its checkpoints: what `mlrpl train` writes besides the log, and what resume,
evaluate, predict, export and sweep read back.

The run folder: config.json (the whole config, read back strictly), claimed for mlrpl; a resume may
change only RESUME_CHANGEABLE. The checkpoint format: last.pt, a torch archive written atomically
and sealed with its sha256 (`save_checkpoint`), read weights-only with its fields checked
(`load_checkpoint`); best.pt is its copy when the selection score improved (`RunCheckpoints`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mlrpl_data.errors import AlreadyExistsError, BadInputError, MlrplError
from mlrpl_data.fsutil import atomic_copy, atomic_write_text, atomic_write_with, check_sealed
from mlrpl_data.manifest import check_fingerprint
from mlrpl_data.ownership import MARKER, claim, owner, refuse_overlap, remove_owned, sweep_stale

from .data import DataSpec
from .options import TrainConfig, config_from_json, option_groups

CHECKPOINT_LAST, CHECKPOINT_BEST = "last.pt", "best.pt"
CONFIG_JSON = "config.json"

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


# ---- a training run's checkpoints ---------------------------------------------------------------------------

@dataclass
class RunCounters:
    """Where a run stands: what last.pt records beside the weights, so a resume continues exactly."""

    epoch: int = 0  # the next epoch to run (0-based)
    step: int = 0  # batches of that epoch already done (a resumed run continues there)
    global_step: int = 0
    best_score: float = -1.0  # the selection score of best.pt so far
    epoch_losses: list = field(default_factory=list)  # the losses of the epoch so far: a mid-epoch resume goes on
    epoch_bad: int = 0  # bad samples skipped in the epoch so far


@dataclass
class RunCheckpoints:
    """The checkpoints of the run in `run`: last.pt holds the model, optimizer and scheduler states,
    the config, the dataset's fingerprint, the mask, the class names and the counters; best.pt is a
    copy of it taken when the selection score improved. Only the main process (`main`) writes."""

    run: Path
    core: torch.nn.Module  # the model itself (not its DDP wrapper)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    cfg: TrainConfig
    spec: DataSpec
    counters: RunCounters
    selection: str = ""  # how best.pt is chosen, in words ("" when there is no best.pt)
    main: bool = True
    world: int = 1  # training processes: a resume must have as many (check_world)

    def checkpoint(self, epoch: int, step: int, best: bool = False) -> None:
        """last.pt (atomic, sealed) for a resume to start at batch `step` of `epoch` (0-based); with
        `best` also copied to best.pt."""
        if not self.main:
            return
        payload = {"model": self.core.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "scheduler": self.scheduler.state_dict(), "epoch": epoch, "step": step,
                   "global_step": self.counters.global_step, "best_score": self.counters.best_score, "selection": self.selection,
                   "config": self.cfg.to_json(), "fingerprint": self.spec.fingerprint,
                   "mask": self.spec.mask_name or "", "class_names": self.spec.class_names,
                   "epoch_losses": [float(x) for x in self.counters.epoch_losses], "epoch_bad": int(self.counters.epoch_bad),
                   "world": self.world}
        save_checkpoint(self.run / CHECKPOINT_LAST, payload)
        if best:
            atomic_copy(self.run / CHECKPOINT_LAST, self.run / CHECKPOINT_BEST)


def resumes_from_checkpoint(run: Path, main: bool) -> bool:
    """Whether a --resume of `run` continues from its last.pt: a run stopped before its first
    checkpoint starts again from the beginning instead (its files but config.json go)."""
    if not (run / CHECKPOINT_LAST).exists() and (run / CONFIG_JSON).exists():
        print(f"note: {run} was stopped before its first checkpoint: starting it from the beginning", file=sys.stderr)
        if main:
            remove_owned(run, tuple(e for e in RUN_ENTRIES if e != CONFIG_JSON))
        return False
    return True


def restore_checkpoint(run: Path, cfg: TrainConfig, spec: DataSpec, core: torch.nn.Module, optimizer, scheduler,
                       main: bool, world: int = 1) -> RunCounters:
    """Load `run`'s last.pt into the model, optimizer and scheduler, and return its counters. Refused
    (BadInputError, naming the file) when it was trained on another dataset (fingerprint), by another
    number of processes than `world`, with other fixed options, for more epochs than --epochs, when
    best.pt is damaged, or for another model."""
    ckpt = load_checkpoint(run / CHECKPOINT_LAST)
    check_fingerprint(ckpt["fingerprint"], spec.fingerprint, f"{run}", "train a new run on this dataset")
    check_world(ckpt.get("world"), world, run, int(ckpt["config"].get("batch_size", cfg.batch_size)))
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
    counters = RunCounters(ckpt["epoch"], ckpt["step"], ckpt["global_step"], ckpt["best_score"])
    if counters.step:  # the epoch's loss so far: its train_loss is the uninterrupted run's
        counters.epoch_losses, counters.epoch_bad = list(ckpt.get("epoch_losses") or []), int(ckpt.get("epoch_bad") or 0)
        if len(counters.epoch_losses) != counters.step and main:
            print(f"note: {run / CHECKPOINT_LAST} holds no losses of epoch {counters.epoch + 1}'s first {counters.step} "
                  f"steps (written by an older mlrpl): that epoch's train_loss is over the resumed steps only",
                  file=sys.stderr)
    return counters


def check_world(trained: int | None, world: int, run: Path, batch_size: int) -> None:
    """A run resumes with the number of processes it was trained by, or not at all (BadInputError):
    each rank's share of the shards, the sample order, the batches per epoch and the effective batch
    (processes x --batch-size) all follow from it, so another number would neither continue the run's
    sample stream exactly nor train with its batch. A checkpoint without the number (mlrpl <= 0.21)
    is not checked."""
    if trained is None or int(trained) == world:
        return
    fix = f"--nproc {trained}" if trained > 1 else "one process (no --nproc, no torchrun)"

    def runs(n: int) -> str:
        return f"{n} process{'es' if n > 1 else ''} (an effective batch of {n} x {batch_size} = {n * batch_size})"

    raise BadInputError(f"{run / CHECKPOINT_LAST}: trained by {runs(int(trained))}, resumed by {runs(world)}: resume "
                        f"it with {fix}, so that its batches and sample order continue exactly; to train on with "
                        f"another number of processes, start a new run")


def finished_note(run: Path, epochs: int) -> str | None:
    """The line for a --resume of a run whose last.pt has all `epochs` epochs done (None when there is
    more to train, or no last.pt): that nothing is trained, and how to train longer."""
    last = Path(run) / CHECKPOINT_LAST
    if not last.exists():
        return None
    ckpt = load_checkpoint(last)
    if ckpt["step"] or ckpt["epoch"] != epochs:
        return None
    return finished_line(run, epochs)


def finished_line(run: Path, epochs: int) -> str:
    return (f"note: {run} had already finished its {epochs} epoch(s): nothing trained (finished at epoch {epochs} "
            f"of {epochs}; to train longer, resume it with a larger --epochs, e.g. --resume {run} --epochs "
            f"{2 * epochs})")
