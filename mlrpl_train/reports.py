"""`mlrpl evaluate`'s reports: a checkpoint scored on the dataset's test split, the metrics
(eval_metrics.json) with which checkpoint and how it was selected, the paper's figure beside them,
per-class AP as JSON and a bar chart PNG, and optionally the per-image scores (Parquet)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mlrpl_data.errors import BadInputError
from mlrpl_data.fsutil import atomic_write_text, atomic_write_with
from mlrpl_data.folder import DatasetFolder, read_card
from mlrpl_data.manifest import check_fingerprint
from mlrpl_data.masks import mask_proportion, parse_mask_name
from mlrpl_data.ownership import claim_file, parquet_kind, refuse_overlap, sweep_stale

from . import dist as D
from .checkpoint import CHECKPOINT_BEST, checkpoint_file, load_checkpoint, run_inputs
from .data import resolve_data
from .device import pick_device
from .engine import evaluate_model
from .model.factory import build_model
from .options import config_from_json
from .registry import get as get_method
from .runlog import map_text

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
    metrics = evaluate_model(core, cfg, spec, info, device, progress,
                             scores_out=None if scores is None else partial(write_scores, scores))
    is_best = ckpt_path.name == CHECKPOINT_BEST
    metrics["checkpoint"] = {
        "file": str(ckpt_path), "epoch": ckpt["epoch"], "epochs": cfg.epochs, "method": str(cfg.method),
        "mask": ckpt.get("mask") or "",
        "selection": (ckpt["selection"] or "unknown") if is_best else "none: the last epoch"}
    metrics["published"] = _published_beside(spec.folder, spec.class_names, str(cfg.method), ckpt.get("mask") or "", metrics,
                                             float(cfg.val_fraction))
    atomic_write_text(out / "eval_metrics.json", json.dumps(metrics, indent=1))
    atomic_write_text(out / "per_class_ap.json", json.dumps(metrics["per_class_ap"], indent=1))
    title = (f"{read_card(spec.folder)['name']} test, {cfg.method} ({metrics['checkpoint']['mask'] or 'full labels'}, "
             f"{ckpt_path.name}): {map_text(metrics)}")
    plot_per_class_ap(metrics["per_class_ap"], out / "per_class_ap.png", title=title)
    metrics["report_dir"] = str(out)
    return metrics




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


# the mask schemes of the paper's protocol (labels dropped uniformly at random): the only ones beside which
# the published figures mean anything (per-image and single-positive masks are other experiments)
PUBLISHED_SCHEMES = ("uniform", "hcp")


def _published_beside(dataset: str | DatasetFolder, class_names: list[str], method: str, mask: str, metrics: dict,
                      val_fraction: float = 0.0) -> dict | None:
    """Table 1's number for this method, dataset and known proportion, and ours minus it (VOC-interpolated
    mAP, the AP of the published evaluation); a run that held images out of training says so (the paper
    trained on the whole training split). The known proportion is the mask's sidecar's (its name's only
    when `dataset` holds no sidecar of that name)."""
    from .published import SOURCE, benchmark_dataset, published

    parsed = parse_mask_name(mask)
    p = mask_proportion(dataset, mask) if parsed and parsed["scheme"] in PUBLISHED_SCHEMES else None
    row = published(benchmark_dataset(read_card(dataset), class_names), method, p)
    if row is None or row["mAP"] is None or p is None or metrics["mAP_voc"] is None:
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
