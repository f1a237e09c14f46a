"""Counts of the fuzz table, as JSON: `.venv/bin/python tests/fuzz_report.py`.

cases, clear errors, tracebacks (must be 0), hangs (must be 0), data lost (input files changed or
removed: must be 0), debris (files a failed command left behind: must be 0), and the misbehaving ids.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fuzz_cases import build_world, cases, run_case, snapshot  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "world"
        world = build_world(root)
        outs = Path(tmp) / "outs"
        outs.mkdir()
        table = cases(world, outs)
        counts = {"cases": len(table), "clear_errors": 0, "tracebacks": 0, "hangs": 0, "data_lost": 0, "debris": 0}
        bad = []
        before = snapshot(root)
        for case in table:
            r = run_case(case, root, outs, before)
            counts["clear_errors"] += r.clear
            counts["tracebacks"] += r.traceback
            counts["hangs"] += r.hang
            counts["data_lost"] += bool(r.changed)
            counts["debris"] += bool(r.left)
            if not r.clear or r.hang or r.changed or r.left:
                bad.append(case.id)
            for p in list(outs.iterdir()):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            before = snapshot(root) if r.changed else before
        counts["misbehaving"] = bad
    print(json.dumps(counts, indent=2))


if __name__ == "__main__":
    main()
