"""The run's log, one row per evaluated epoch: metrics.csv (appended whole rows, atomically),
metrics_last.json (the last test metrics) and TensorBoard's epoch/* scalars."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from mlrpl_data.fsutil import atomic_write_bytes, atomic_write_text

from .memory import process_peak_mb
from .metrics import per_epoch_metrics

# metrics.csv's header as runs wrote it before the metric registry (a resumed run keeps its own header); every
# other per-epoch metric of the registry is appended after it, so no column of an older run moves
METRIC_COLUMNS = ["epoch", "train_loss", "lr", "mAP", "mAP_voc", "OF1", "CF1", "OF1_top3", "CF1_top3", "val_mAP",
                  "val_mAP_voc", "best", "selection", "bad_samples", "images_per_s", "seconds", "peak_memory_mb",
                  "mAP_classes"]


def map_text(m: dict) -> str:
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
        msg += f"  {map_text(metrics)}  OF1 {100 * metrics['OF1']:.2f}  CF1 {100 * metrics['CF1']:.2f}"
    if val:
        msg += f"  val {map_text(val)}{' (best)' if best else ''}"
    if bad:
        msg += f"  ({bad} bad samples skipped)"
    print(msg, file=sys.stderr)



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
