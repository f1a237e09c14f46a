"""Open Images label CSV: mlrpl's streaming reader vs a plain pyarrow.csv.read_csv of the same file.

Generates an image-level label CSV of --rows rows (ImageID,Source,LabelName,Confidence; 8.5 labels
per image over 601 classes, like V6's train file), then reads it --repeats times on each side,
interleaved, each in a fresh process (peak RSS from getrusage). Prints JSON: median seconds and
peak memory per side, and the ratios (targets: within 2x the time and 2x the memory).

    .venv/bin/python benchmarks/openimages_csv.py --rows 10000000
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

READ_PYARROW = """
import pyarrow.csv as pacsv, resource, sys, time
t = time.perf_counter()
table = pacsv.read_csv(sys.argv[1])
n = table.num_rows
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, n, 0)
"""

READ_MLRPL = """
import resource, sys, time
sys.path.insert(0, sys.argv[2])
from mlrpl_data.openimages import label_matrix, read_image_labels
classes = [f"/m/{i:05x}" for i in range(601)]
t = time.perf_counter()
images, r, c, v = read_image_labels(sys.argv[1], classes)
read = time.perf_counter() - t
labels = label_matrix(len(images), len(classes), r, c, v)
print(read, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, len(r), time.perf_counter() - t)
"""

MATRIX_NOTE = ("mlrpl_read_image_labels.seconds: the CSV to (image, class, value) triples, what read_csv's table "
               "holds; with_dense_matrix_seconds adds the manifest's dense N x C int8 label matrix")

IMPORTS_PYARROW = """
import resource, pyarrow.csv
print(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0, 0)
"""

IMPORTS_MLRPL = """
import resource, sys
sys.path.insert(0, sys.argv[2])
import mlrpl_data.openimages
print(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0, 0)
"""


def generate(path: Path, rows: int, seed: int = 0) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    per_image = 8.5
    with pacsv.CSVWriter(path, pa.schema([("ImageID", pa.string()), ("Source", pa.string()),
                                          ("LabelName", pa.string()), ("Confidence", pa.int8())])) as w:
        step = 1_000_000
        for start in range(0, rows, step):
            n = min(step, rows - start)
            # sorted by ImageID, as the released files are: each image's rows together
            lo, hi = int(start / per_image), max(int((start + n) / per_image), int(start / per_image) + 1)
            img = np.sort(rng.integers(lo, hi, n))
            w.write_table(pa.table({
                "ImageID": pa.array([f"{i:016x}" for i in img]),
                "Source": pa.array(np.where(rng.random(n) < 0.7, "verification", "crowdsource-verification")),
                "LabelName": pa.array([f"/m/{i:05x}" for i in rng.integers(0, 620, n)]),  # some outside the 601
                "Confidence": pa.array((rng.random(n) < 0.6).astype(np.int8)),
            }))


def run(code: str, path: Path) -> tuple[float, float, int, float]:
    out = subprocess.run([sys.executable, "-c", code, str(path), str(REPO)], capture_output=True, text=True, check=True)
    s, mb, n, total = out.stdout.split()
    return float(s), float(mb), int(n), float(total)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:
        return generate(args.generate, args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train-annotations-human-imagelabels-boxable.csv"
        t = time.perf_counter()
        # in a child: Linux carries a process's peak RSS over exec, so a big parent would inflate every reading
        subprocess.run([sys.executable, __file__, "--generate", str(path), "--rows", str(args.rows)], check=True)
        gen = time.perf_counter() - t
        # each side's interpreter with its libraries imported, nothing read (mlrpl's module imports pandas)
        base = {"pyarrow_read_csv": run(IMPORTS_PYARROW, path)[1], "mlrpl_read_image_labels": run(IMPORTS_MLRPL, path)[1]}
        sides = {"pyarrow_read_csv": [], "mlrpl_read_image_labels": []}
        for _ in range(args.repeats):
            sides["pyarrow_read_csv"].append(run(READ_PYARROW, path))
            sides["mlrpl_read_image_labels"].append(run(READ_MLRPL, path))
        med = {k: {"seconds": statistics.median(r[0] for r in v), "peak_rss_mb": statistics.median(r[1] for r in v),
                   "rows": v[0][2]} for k, v in sides.items()}
        med["mlrpl_read_image_labels"]["with_dense_matrix_seconds"] = statistics.median(
            r[3] for r in sides["mlrpl_read_image_labels"])
        a, b = med["pyarrow_read_csv"], med["mlrpl_read_image_labels"]
        print(json.dumps({
            "rows": args.rows, "file_mb": round(path.stat().st_size / 1e6, 1), "generate_s": round(gen, 1),
            "repeats": args.repeats, "import_rss_mb": base, **med,
            "time_ratio": round(b["seconds"] / a["seconds"], 3),
            "time_ratio_with_dense_matrix": round(b["with_dense_matrix_seconds"] / a["seconds"], 3), "note": MATRIX_NOTE,
            "memory_ratio": round(b["peak_rss_mb"] / a["peak_rss_mb"], 3),
            "memory_ratio_above_imports": round((b["peak_rss_mb"] - base["mlrpl_read_image_labels"])
                                                / max(1.0, a["peak_rss_mb"] - base["pyarrow_read_csv"]), 3),
            "targets": "time_ratio <= 2, memory_ratio <= 2",
        }, indent=1))


if __name__ == "__main__":
    main()
