"""benchmarks/gpu_suite.sh keeps each part apart: a part that fails says why in OUT/<part>.error, the
others still run, and the exit code says something failed. (.ci/run runs the whole suite with
--device cpu --tiny; the GPU figures come from a run on a lent GPU.)"""

import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_failing_part_leaves_the_others_and_is_reported(tmp_path):
    r = subprocess.run(["bash", str(REPO / "benchmarks/gpu_suite.sh"), str(tmp_path), "--device", "tpu", "--tiny"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] is False and set(summary["failed"]) >= {"train_step", "dsrb_run"}
    for name in summary["failed"]:  # each failure says why, in its own file
        assert (tmp_path / f"{name}.error").read_text().strip()
    assert "train_step: FAILED" in r.stderr and "dsrb_run: FAILED" in r.stderr


def test_usage_errors_are_refused_before_anything_runs(tmp_path):
    r = subprocess.run(["bash", str(REPO / "benchmarks/gpu_suite.sh"), str(tmp_path), "--fast"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown argument --fast" in r.stderr
