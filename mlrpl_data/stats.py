"""Dataset statistics: images per split, positives per class, labels per image."""

from __future__ import annotations

from typing import Any

from .manifest import SPLITS, Manifest


def dataset_stats(m: Manifest) -> dict[str, Any]:
    out: dict[str, Any] = {"name": m.name, "version": m.version, "fingerprint": m.fingerprint,
                           "num_classes": m.num_classes, "splits": {},
                           "warnings": m.warnings()}
    for split in SPLITS:
        rows = m.split_rows(split)
        lab = m.labels[rows]
        pos = (lab == 1)
        per_image = pos.sum(axis=1)
        out["splits"][split] = {
            "images": int(len(rows)),
            "positives_per_class": {n: int(v) for n, v in zip(m.category_names, pos.sum(axis=0))},
            "negatives_per_class": {n: int(v) for n, v in zip(m.category_names, (lab == -1).sum(axis=0))},
            "unknown_per_class": {n: int(v) for n, v in zip(m.category_names, (lab == 0).sum(axis=0))},
            "labels_per_image": {
                "mean": float(per_image.mean()) if len(rows) else 0.0,
                "min": int(per_image.min()) if len(rows) else 0,
                "max": int(per_image.max()) if len(rows) else 0,
            },
            "images_without_positive": int((per_image == 0).sum()),
            "ignored_entries": int((lab == 0).sum()),
        }
    return out


def format_stats(s: dict[str, Any]) -> str:
    lines = [f"{s['name']} {s['version']}  classes={s['num_classes']}  fingerprint={s['fingerprint'][:16]}"]
    head = f"{'split':<8}{'images':>9}{'labels/img':>12}{'min':>5}{'max':>5}{'no positive':>13}"
    lines += [head, "-" * len(head)]
    for split, d in s["splits"].items():
        li = d["labels_per_image"]
        lines.append(f"{split:<8}{d['images']:>9,}{li['mean']:>12.2f}{li['min']:>5}{li['max']:>5}{d['images_without_positive']:>13,}")
    lines.append("")
    # known + / known - / unknown per class and split (the unknown columns only when labels are partial)
    partial = any(d["ignored_entries"] for d in s["splits"].values())
    kinds = [("positives_per_class", "+"), ("negatives_per_class", "-")] + ([("unknown_per_class", "?")] if partial else [])
    lines.append(f"{'class':<24}" + "".join(f"{sp + ' ' + k:>12}" for sp in s["splits"] for _, k in kinds))
    names = list(next(iter(s["splits"].values()))["positives_per_class"])
    for n in names:
        lines.append(f"{n[:23]:<24}" + "".join(f"{d[col][n]:>12,}" for d in s["splits"].values() for col, _ in kinds))
    lines += [f"warning: {w}" for w in s.get("warnings", [])]
    return "\n".join(lines)
