"""The paper's tables as data (manifests/published/): how far a run is from the published numbers.

Table 1 and Table 2 of Pu et al. (arXiv 2205.13092), one row per (table, dataset, method,
proportion): mAP, and the row's average mAP, OF1 and CF1. A dataset is one of the paper's by its
manifest name and class list, its kind (VG-200: SSGRL's benchmark split) and its whole counts
(benchmark_dataset); a method of mlrpl maps to its Table 1 row.
"""

from __future__ import annotations

import csv
import functools
from typing import Any

from mlrpl_data.specs import load_spec, specs_dir, voc20_names

from .registry import BY_NAME

TABLES = ("dsrb_table1.csv", "dsrb_table2.csv")
SOURCE = "arXiv 2205.13092"


@functools.lru_cache(maxsize=1)
def published_rows() -> list[dict[str, Any]]:
    rows = []
    for name in TABLES:
        with open(specs_dir() / "published" / name, newline="") as f:
            for r in csv.DictReader(f):
                rows.append({**r, "table": int(r["table"]), "proportion": float(r["proportion"]),
                             **{k: float(r[k]) if r[k] else None for k in ("mAP", "avg_mAP", "avg_OF1", "avg_CF1")}})
    return rows


def paper_dataset(name: str, class_names: list[str]) -> str | None:
    """coco2014, voc2007 or vg200 when the manifest's name and classes are that benchmark's, else None:
    necessary, not sufficient (benchmark_dataset adds the VG-200 kind and the whole counts)."""
    coco = [c["name"] for c in load_spec("coco80")["categories"]]
    if name == "coco2014" and class_names == coco:
        return "coco2014"
    if name == "voc2007" and class_names == voc20_names():
        return "voc2007"
    if name == "vg200" and len(class_names) == 200:
        return "vg200"
    return None


def table1_name(method: str) -> str | None:
    """The Table 1 row of mlrpl's `method` (the registry's `table1`), None for a method outside the paper."""
    entry = BY_NAME.get(str(method))
    return entry.table1 if entry else None


def whole_counts(dataset: str) -> dict[str, int]:
    """The train/test image counts of the benchmark as published (manifests/): COCO 2014 train2014 /
    val2014, VOC 2007 trainval / test, VG-200 SSGRL's train_list_500 / test_list_500."""
    if dataset == "coco2014":
        c = load_spec("coco80")["expected_counts"]["2014"]
        return {"train": int(c["train"]), "test": int(c["val"])}
    if dataset == "voc2007":
        c = load_spec("voc20")["expected_counts"]
        return {"train": int(c["trainval"]), "test": int(c["test"])}
    c = load_spec("vg200/rules")["benchmark_split"]
    return {"train": int(c["train_images"]), "test": int(c["test_images"])}


def benchmark_dataset(card: dict[str, Any], class_names: list[str]) -> str | None:
    """coco2014, voc2007 or vg200 when dataset.json (`card`) is that benchmark AS PUBLISHED, else None:
    the name and classes of paper_dataset; on VG-200 only the split built from SSGRL's lists with the
    200-class labels file (card `benchmark` "vg200-ssgrl"), never mlrpl's raw-release split and
    vocabulary; and on any dataset only when it is whole: its train/test counts equal
    whole_counts (a --subset, --max-images or an image dropped with --allow-missing is not the
    benchmark, so the published rows and deltas are not shown beside it)."""
    dataset = paper_dataset(str(card.get("name", "")), class_names)
    if dataset == "vg200" and card.get("benchmark") != "vg200-ssgrl":
        return None
    if dataset is None or {k: int(v) for k, v in card.get("counts", {}).items()} != whole_counts(dataset):
        return None
    return dataset


def published(dataset: str | None, method: str, proportion: float | None = None) -> dict[str, Any] | None:
    """Table 1's row for mlrpl's `method` on `dataset` (at `proportion`, else its first row); None when
    the paper has no such number."""
    row_name = table1_name(method)
    if dataset is None or row_name is None:
        return None
    for r in published_rows():
        if r["table"] == 1 and r["dataset"] == dataset and r["method"] == row_name and (
                proportion is None or abs(r["proportion"] - proportion) < 1e-9):
            return r
    return None
