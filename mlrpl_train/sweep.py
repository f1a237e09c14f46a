"""`mlrpl sweep`: one run per known-label proportion (and seed), then the paper's Table 1 layout.

Runs live in SWEEP/<method>-p0.30-s0/; a finished run is not trained again, so a sweep can be
stopped and re-run, and sweeps of several methods into one folder share one table.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from mlrpl_data.errors import BadInputError
from mlrpl_data.folder import DatasetFolder, read_card
from mlrpl_data.masks import (MaskConfig, compute_masks, mask_name, mask_proportion, parse_mask_name, proportion_text,
                              write_mask)
from mlrpl_data.folder import read_manifest

from .checkpoint import CHECKPOINT_LAST, CONFIG_JSON, load_checkpoint
from .engine import train
from .metrics import Metric, get_metric, per_epoch_metrics
from .options import Precision, TrainConfig
from .registry import BY_NAME, method_names
from mlrpl_data.ownership import releasing

def run_dir(out: Path, method: str, p: float, seed: int) -> Path:
    """SWEEP/<method>-p0.30-s0: the mask-name grammar with the method in the scheme's place."""
    return Path(out) / mask_name(method, p, seed)


def run_name(name: str) -> dict | None:
    """A run folder's name read back ({"scheme": the method, "proportion", "seed", ...}), None when it is not one."""
    parsed = parse_mask_name(name)
    return parsed if parsed and parsed["proportion"] is not None and parsed["split"] == "train" else None


def run_proportion(run: Path, parsed: dict) -> float:
    """The known proportion a run trained with: its mask's (masks.mask_proportion: the sidecar's; config.json
    names the mask and the dataset); the run folder's name only when config.json cannot say."""
    try:
        doc = json.loads((run / CONFIG_JSON).read_text())
        dataset, mask = doc["config"]["dataset"], doc["mask"]
    except (OSError, ValueError, KeyError, TypeError):  # a bare or damaged run folder: the name sweep wrote
        return parsed["proportion"]
    p = mask_proportion(dataset, mask)
    return parsed["proportion"] if p is None else p


def finished(run: Path, epochs: int) -> bool:
    try:
        return load_checkpoint(run / CHECKPOINT_LAST)["epoch"] >= epochs
    except Exception:
        return False


@releasing
def run_sweep(base: TrainConfig, proportions: list[float], seeds: list[int], out: Path, scheme: str = "uniform") -> list[Path]:
    """Train every (proportion, seed) not already finished; masks are made when missing. Missing
    backbone weights are refused before any mask or folder is written."""
    from mlrpl_data.ownership import claim, refuse_overlap

    from .model.backbone import check_weights

    check_weights(str(base.backbone), base.weights)

    refuse_overlap(out, {"the dataset": base.dataset}, "--out")
    m = read_manifest(base.dataset)
    claim(out, "sweep", "--out")
    runs = []
    for seed in seeds:
        masks = compute_masks(m, MaskConfig(proportions=proportions, seed=seed, scheme=scheme))
        for mask in masks:
            write_mask(base.dataset, mask)  # a no-op when the same mask exists
        DatasetFolder(base.dataset).refresh()
        for mask in masks:
            p = mask.meta["proportion"]
            run = run_dir(out, base.method, p, seed)
            if finished(run, base.epochs):
                print(f"{run}: finished, kept")
            else:
                cfg = dataclasses.replace(base, masks=mask.name, seed=seed, out=str(run))
                resume = (run / CHECKPOINT_LAST).exists()
                print(f"{run}: {'resuming' if resume else 'training'} ({mask.name})")
                train(cfg, resume=resume, force=not resume)
            runs.append(run)
    return runs


def run_sweeps(configs: list[TrainConfig], proportions: list[float], seeds: list[int], out: Path,
               scheme: str = "uniform") -> list[Path]:
    """run_sweep for each method's config in turn (one dataset). On an error (not on Ctrl-C or SIGTERM,
    after which re-running the sweep continues), what this call made and no kept run needs is removed
    before the error goes on: the masks it wrote, and the sweep folder when it made it and no run is
    left there. A run with a checkpoint is kept, as train keeps it (re-running the sweep resumes or
    keeps it), and so is its mask; a run stopped before its first checkpoint was removed by train.
    Masks and runs that were there before are never touched. A single-positive scheme (no proportion
    to sweep over) is refused with BadInputError before anything is written."""
    if str(scheme) == "single-positive":
        raise BadInputError("sweep trains one run per known proportion and single-positive masks have none: make the "
                            "mask (mlrpl make-masks DIR --scheme single-positive) and train it (mlrpl train METHOD DIR "
                            "--masks single-positive-s0)")
    folder = DatasetFolder(configs[0].dataset).local
    masks_dir = folder / "masks"
    masks_before = set(masks_dir.iterdir()) if masks_dir.is_dir() else set()
    out_existed = Path(out).exists()
    try:
        return [run for cfg in configs for run in run_sweep(cfg, proportions, seeds, out, scheme)]
    except Exception:
        _undo_sweep(folder, masks_before, Path(out), out_existed)
        raise


def _undo_sweep(folder: Path, masks_before: set[Path], out: Path, out_existed: bool) -> None:
    """Remove the masks a failed sweep wrote that no kept run of `out` uses, then `out` itself when the
    sweep made it and holds no run; the dataset's card and files.json list the masks again as before."""
    from mlrpl_data.ownership import MARKER, remove_owned

    kept = [r for r in (out.iterdir() if out.is_dir() else []) if r.is_dir() and (r / CHECKPOINT_LAST).exists()]
    used = set()
    for run in kept:
        try:
            used.add(json.loads((run / CONFIG_JSON).read_text())["config"]["masks"])
        except (OSError, ValueError, KeyError):
            continue
    masks_dir = folder / "masks"
    made = [p for p in (masks_dir.iterdir() if masks_dir.is_dir() else []) if p not in masks_before
            and p.suffix in (".parquet", ".json") and p.name.rsplit(".", 1)[0] not in used]
    for p in made:
        p.unlink(missing_ok=True)
    if made:
        DatasetFolder(folder).refresh()
    if not out_existed and out.is_dir() and all(p.name == MARKER for p in out.iterdir()):
        remove_owned(out, (MARKER,))
        out.rmdir()


def _evaluated_rows(run: Path) -> list[dict[str, str]]:
    path = run / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("OF1")]  # the epochs with a test evaluation


def final_metrics(run: Path) -> dict[str, float] | None:
    """The last evaluated epoch's test metrics (no selection on the test set): each per-epoch metric of the
    registry that its metrics.csv holds (an older run lacks the later ones; an undefined one is left out),
    plus, named as such, each one's best over the epochs (max, or min where lower is better): the
    test-selected best epoch the published numbers were obtained with. None when that epoch has no mAP (no
    class with a known positive and negative)."""
    rows = _evaluated_rows(run)
    if not rows or not rows[-1].get("mAP"):
        return None
    out = {m.name: float(rows[-1][m.name]) for m in per_epoch_metrics() if rows[-1].get(m.name)}
    for m in per_epoch_metrics():
        seen = [float(r[m.name]) for r in rows if r.get(m.name)]
        if seen:
            out[f"{m.name}_best_on_test"] = max(seen) if m.higher_is_better else min(seen)
    return out


def scope_notes(out: Path) -> list[str]:
    """A line per run whose last mAP is over fewer than all classes, or undefined (from metrics.csv)."""
    notes = []
    for run in sorted(Path(out).iterdir()):
        rows = _evaluated_rows(run) if run_name(run.name) and run.is_dir() else []
        k, _, c = (rows[-1].get("mAP_classes") or "").partition("/") if rows else ("", "", "")
        if not (k.isdigit() and c.isdigit()) or k == c:
            continue
        notes.append(f"{run.name}: mAP over {k} of {c} classes (the others have no known positive or no known "
                     f"negative test label: AP undefined or trivially 1; {run.name}/metrics_last.json names them)"
                     if rows[-1].get("mAP") else
                     f"{run.name}: no mAP (no class has both a known positive and a known negative test label)")
    return notes


def collect(out: Path) -> dict[str, dict[float, list[dict[str, float]]]]:
    table: dict[str, dict[float, list[dict[str, float]]]] = {}
    for run in sorted(Path(out).iterdir()):
        parsed = run_name(run.name)
        if not (parsed and run.is_dir()):
            continue
        metrics = final_metrics(run)
        if metrics:
            table.setdefault(parsed["scheme"], {}).setdefault(run_proportion(run, parsed), []).append(metrics)
    order = {name: i for i, name in enumerate(method_names())}  # the registry's order: Table 1's, then others
    return dict(sorted(table.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def _cell(values: list[float], percent: bool = True) -> str:
    if not len(values):
        return "-"  # runs of an older mlrpl, whose metrics.csv lacks this metric
    v = (100 if percent else 1) * np.asarray(values)
    return f"{v.mean():.1f}" if len(v) == 1 else f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def _avg_by_seed(per: dict[float, list[dict[str, float]]], key: str) -> list[float]:
    """The average over proportions, per seed (for mean ± std over seeds); [] unless every run has `key`."""
    if not all(key in r for runs in per.values() for r in runs):
        return []
    return [float(np.mean([per[p][i][key] for p in per])) for i in range(min(len(v) for v in per.values()))]


def _our_row(method: str, per: dict[float, list[dict[str, float]]], props: list[float], chosen: Metric,
             best_on_test: bool) -> tuple[str, dict[str, Any]]:
    """A method's Markdown row (the chosen metric per proportion, its average, average OF1 and CF1) and its
    table.csv row (both mAPs per proportion, every per-epoch metric's average and best on test)."""
    metric = chosen.name
    cells, csv_row = [], {"method": method}
    for p in props:
        runs = per.get(p, [])
        cells.append(_cell([r[metric] for r in runs if metric in r], chosen.percent) if runs else "-")
        for k in ("mAP", "mAP_voc"):
            csv_row[f"{k}@{proportion_text(p)}"] = float(np.mean([r[k] for r in runs])) if runs else ""
            csv_row[f"{k}@{proportion_text(p)}_std"] = float(np.std([r[k] for r in runs], ddof=1)) if len(runs) > 1 else ""
    for key in (metric, "OF1", "CF1"):
        cells.append(_cell(_avg_by_seed(per, key), get_metric(key).percent))
    for key in [m.name for m in per_epoch_metrics()] + [f"{m.name}_best_on_test" for m in per_epoch_metrics()]:
        if _avg_by_seed(per, key):
            csv_row[f"avg_{key}"] = float(np.mean(_avg_by_seed(per, key)))
    if best_on_test:
        cells.append(_cell(_avg_by_seed(per, f"{metric}_best_on_test"), chosen.percent))
    return f"| {method} | {' | '.join(cells)} |", csv_row


def _published_rows(method: str, per: dict[float, list[dict[str, float]]], props: list[float], pub: list,
                    chosen: Metric, best_on_test: bool, csv_row: dict[str, Any], notes: list[str]) -> list[str]:
    """The method's published row and the difference row (Markdown); adds the published average to its
    `csv_row` and, for a figure the paper copied from elsewhere, a line to `notes`."""
    from .published import table1_name

    metric = chosen.name
    got = [float(np.mean([r[metric] for r in per[p]])) if p in per else None for p, r in zip(props, pub)]
    col = chosen.published
    pairs = [(100 * g, r[col]) for g, r in zip(got, pub) if g is not None and r and r[col] is not None]
    pub_cells = [f"{r[col]:.1f}" if r and r[col] is not None else "-" for r in pub]
    delta = [f"{100 * g - r[col]:+.1f}" if g is not None and r and r[col] is not None else "-"
             for g, r in zip(got, pub)]
    extra = [""] * (1 if best_on_test else 0)
    avg_pub = f"{np.mean([b for _, b in pairs]):.1f}" if pairs else "-"
    avg_delta = f"{np.mean([a - b for a, b in pairs]):+.1f}" if pairs else "-"
    row0 = next(r for r in pub if r)
    note = BY_NAME[method].published_note if method in BY_NAME else ""
    if note and pairs:
        notes.append(f"{table1_name(method)} (published): {note}, copied into the paper's Table 1 "
                     f"(not run by the paper's authors).")
    elif note:
        notes.append(f"{table1_name(method)} (published): the paper has no figure here (its figures "
                     f"elsewhere are {note}).")
    label = f"{table1_name(method)} (published{', ' + note if note else ''})"
    csv_row["published_avg_mAP_same_proportions"] = float(np.mean([b for _, b in pairs])) / 100 if pairs else ""
    return [f"| {label} | {' | '.join(pub_cells)} | {avg_pub} | "
            f"{row0['avg_OF1'] or '-'} | {row0['avg_CF1'] or '-'} |{' | '.join(extra) + ' |' if extra else ''}",
            f"| Δ {method} − published | {' | '.join(delta)} | {avg_delta} | | |{' |' if extra else ''}"]


def write_table(out: Path, title: str = "", metric: str = "mAP", dataset: str | None = None,
                best_on_test: bool = False) -> dict[str, Any]:
    """The paper's Table 1 layout (`metric`, a registered metric's name, per proportion, its average,
    average OF1 and CF1; mean ± std over seeds, each run's last epoch) as Markdown and CSV (both mAPs per
    proportion, every per-epoch metric's average), and a PNG. On one of the paper's datasets (`dataset`:
    coco2014, voc2007, vg200) each method gets its published row and the difference, for a metric the
    paper reports (its registry entry's `published`); `best_on_test` adds the test-selected best epoch
    (max, or min where lower is better) as a column named as such. An unknown `metric` is a ValueError."""
    from .published import published

    chosen = get_metric(metric)
    metric, name = chosen.name, chosen.short or chosen.name
    table = collect(out)
    props = sorted({p for per in table.values() for p in per})
    header = (["Method"] + [f"{100 * p:g}%" for p in props] + [f"Avg. {name}", "Avg. OF1", "Avg. CF1"]
              + ([f"Avg. {name}, best epoch on test (as published)"] if best_on_test else []))
    md = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    rows_csv, notes_extra = [], []
    for method, per in table.items():
        line, csv_row = _our_row(method, per, props, chosen, best_on_test)
        md.append(line)
        rows_csv.append(csv_row)
        pub = [published(dataset, method, p) for p in props]
        # a method the paper lists without a number here (P-GCN on VG-200) shows "-"
        if dataset and chosen.published and any(pub):
            md += _published_rows(method, per, props, pub, chosen, best_on_test, csv_row, notes_extra)
    notes = [f"Each run's last epoch (no selection on the test set); mean ± std over seeds; {name}: "
             + chosen.description + ("." if chosen.higher_is_better else " (lower is better).")]
    if dataset and chosen.published:
        notes.append("Published: arXiv 2205.13092, Table 1 (VOC-interpolated mAP, best epoch on the test set); its "
                     "average here is over the proportions shown, and OF1/CF1 are the paper's over all nine.")
    notes += notes_extra + scope_notes(out)
    if best_on_test:
        notes.append(f"'best epoch on test' picks, per run, the epoch with the best TEST {name}: a selection on the test "
                     "set, shown only because the published numbers were obtained so.")
    text = (f"{title}\n\n" if title else "") + "\n".join(md) + "\n\n" + "\n".join(notes) + "\n"
    (Path(out) / "table.md").write_text(text)
    files = ["table.md"] + (["table.csv"] if rows_csv else []) + ["map_vs_proportion.png", "table.json"]
    if rows_csv:
        with open(Path(out) / "table.csv", "w", newline="") as f:
            fields = list(dict.fromkeys(k for r in rows_csv for k in r))
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows_csv)
    else:
        (Path(out) / "table.csv").unlink(missing_ok=True)  # an earlier sweep's table would contradict table.md
    _plot(table, props, Path(out) / "map_vs_proportion.png", metric)
    (Path(out) / "table.json").write_text(json.dumps({m: {str(p): v for p, v in per.items()} for m, per in table.items()}, indent=1))
    return {"markdown": text, "methods": list(table), "proportions": props, "files": files}


def _plot(table, props, path: Path, metric: str = "mAP") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = get_metric(metric)
    scale = 100 if chosen.percent else 1

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, per in table.items():
        ps = [p for p in props if p in per and all(metric in r for r in per[p])]
        mean = [scale * np.mean([r[metric] for r in per[p]]) for p in ps]
        std = [scale * np.std([r[metric] for r in per[p]]) for p in ps]
        ax.errorbar([100 * p for p in ps], mean, yerr=std, marker="o", capsize=3, label=method)
    ax.set_xlabel("known labels (%)")
    ax.set_ylabel(f"{chosen.short or chosen.name}{' (%)' if chosen.percent else ''}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def paper_preset(base: TrainConfig) -> TrainConfig:
    """The training options `sweep --preset paper` pins beyond the defaults, checked before any run.

    fp32: the authors' code (HCP-MLR-PL) trains without autocast, so `--precision auto` (bf16 on a
    GPU) is not their protocol. Label embeddings: a method whose registry entry says
    uses_embeddings (SSGRL, DSRB: semantic decoupling, eq. 1; GCN-ML, KGGR) needs the dataset's (or
    --embeddings) file; learning random ones is not the paper's model, so a missing file is a
    BadInputError naming `mlrpl embed-labels` instead of train's warning."""
    from mlrpl_data.embeddings import read_embeddings
    from mlrpl_data.errors import BadInputError

    from .registry import get

    cfg = dataclasses.replace(base, precision=Precision.fp32)
    # SSGRL/DSRB with --csrl sa (Table 2's semantic attention) read no embeddings; every other such method does
    if get(cfg.method).uses_embeddings and not (get(cfg.method).group == "dsrb" and cfg.dsrb.csrl != "sd"):
        if read_embeddings(cfg.dataset, cfg.embeddings, int(read_card(cfg.dataset)["num_classes"])) is None:
            raise BadInputError(f"{cfg.dataset}: no label_embeddings.npy, and --preset paper trains {cfg.method} with "
                                f"the paper's fixed label embeddings: run `mlrpl embed-labels {cfg.dataset} --from "
                                f"glove.840B.300d.txt` first (or pass --embeddings FILE.npy)")
    return cfg
