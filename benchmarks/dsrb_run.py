"""A short DSRB run on generated data, through the CLI, blending from epoch 0: it must finish with a
finite loss that falls. Prints JSON (losses per epoch, test mAP, seconds, peak memory).

GPU:  python benchmarks/dsrb_run.py --device cuda
CPU:  python benchmarks/dsrb_run.py --device cpu --tiny
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny CNN on few small images (a CPU check of the script)")
    ap.add_argument("--epochs", type=int, default=2)
    a = ap.parse_args()
    from typer.testing import CliRunner

    from mlrpl.cli import app
    from mlrpl_data.digits import DigitsConfig, write_digits

    runner = CliRunner()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the digits data at 640 px: real scans, labels a model can learn in two epochs
        n_train, n_test, size = (64, 16, 128) if a.tiny else (1024, 256, 640)
        write_digits(DigitsConfig(out=tmp / "raw", train_images=n_train, test_images=n_test, image_size=size))
        model = (["--backbone", "tiny", "--weights", "none", "--image-size", "64", "--batch-size", "8", "--feat-dim", "32",
                  "--lr", "3e-3"]
                 if a.tiny else ["--weights", "none", "--batch-size", "32", "--lr", "1e-4"])
        steps = [["build-coco", "--root", str(tmp / "raw"), "--out", str(tmp / "d"), "--name", "digits", "--no-progress"],
                 ["make-masks", str(tmp / "d"), "--proportion", "0.3"],
                 ["write-shards", str(tmp / "d"), "--max-samples", "128", "--workers", "4", "--no-progress"],
                 ["train", "dsrb", str(tmp / "d"), "--masks", "uniform-p0.30-s0", "--out", str(tmp / "run"),
                  "--epochs", str(a.epochs), "--blend-start", "0", "--prototype-every", "1", "--val-fraction", "0",
                  "--crop-scales", "512", "--device", a.device, "--no-progress", *model]]
        t0 = time.perf_counter()
        for args in steps:
            r = runner.invoke(app, args)
            if r.exit_code != 0:
                print(json.dumps({"ok": False, "step": args[0], "output": r.output[-2000:]}))
                sys.exit(1)
        with open(tmp / "run" / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
    losses = [float(r["train_loss"]) for r in rows]
    out = {"device": a.device, "epochs": a.epochs, "train_loss": losses, "test_mAP": [float(r["mAP"]) for r in rows],
           "peak_memory_mb": [float(r["peak_memory_mb"]) for r in rows], "seconds": round(time.perf_counter() - t0, 1),
           "finite": all(math.isfinite(v) for v in losses), "falling": len(losses) > 1 and losses[-1] < losses[0]}
    out["ok"] = out["finite"] and out["falling"]
    print(json.dumps(out, indent=2))
    sys.exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
