"""Counts of the fuzz table and of the real-input classes, as JSON: `.venv/bin/python tests/fuzz_report.py`.

The table (tests/fuzz_cases.py): cases, clear errors, tracebacks (must be 0), hangs (must be 0), data lost
(input files changed or removed: must be 0), debris (files a failed command left behind: must be 0), and the
misbehaving ids.

The classes: every test marked `@pytest.mark.fuzzclass("NAME")` pins the right value (labels, sizes, the one
error line, the bytes kept) for one member of a class of inputs labs really have (raw-file encodings, path
forms, image metadata, run tampering, output/input overlap, concurrency, ENOSPC, signals, stalled servers).
They run here through pytest and are counted per class: passed, failed, skipped (with the reasons).
`--table-only` / `--classes-only` run one part.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def table_counts() -> dict:
    from fuzz_cases import build_world, cases, run_case, snapshot

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
    return counts


class _Classes:
    """A pytest plugin: the outcome of every `fuzzclass`-marked test, by class."""

    def __init__(self) -> None:
        self.cls: dict[str, str] = {}
        self.out: dict[str, dict] = defaultdict(lambda: {"passed": 0, "failed": 0, "skipped": 0, "failing": [],
                                                         "skip_reasons": []})

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            m = item.get_closest_marker("fuzzclass")
            if m is not None:
                self.cls[item.nodeid] = m.args[0]

    def pytest_runtest_logreport(self, report) -> None:
        name = self.cls.get(report.nodeid)
        if name is None:
            return
        row = self.out[name]
        if report.skipped:
            row["skipped"] += 1
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            if reason not in row["skip_reasons"]:
                row["skip_reasons"].append(reason)
        elif report.failed:
            row["failed"] += 1
            row["failing"].append(report.nodeid)
        elif report.when == "call":
            row["passed"] += 1


def class_counts() -> dict:
    import contextlib
    import os

    import pytest

    plugin = _Classes()
    sys.path.insert(0, str(HERE.parent))  # as `python -m pytest` from the checkout: tests import cli
    os.chdir(HERE.parent)
    with contextlib.redirect_stdout(sys.stderr):  # pytest's own lines go to stderr, the JSON alone to stdout
        pytest.main(["-q", "-p", "no:cacheprovider", "-m", "fuzzclass", "--no-header", "-rN", str(HERE)],
                     plugins=[plugin])
    rows = {k: plugin.out[k] for k in sorted(plugin.out)}
    total = {k: sum(r[k] for r in rows.values()) for k in ("passed", "failed", "skipped")}
    return {"classes": rows, "total": {"tests": sum(total.values()), **total}}


def main(argv: list[str]) -> None:
    report = {}
    if "--classes-only" not in argv:
        report["table"] = table_counts()
    if "--table-only" not in argv:
        report.update(class_counts())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
