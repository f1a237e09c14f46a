"""The paper's tables as data, and every table that compares a run with them."""

import csv
from collections import defaultdict
from pathlib import Path

import pytest

from mlrpl_train.published import paper_dataset, published, published_rows

REPO = Path(__file__).resolve().parents[1]


def test_table_rows_and_averages_are_consistent():
    rows = published_rows()
    t1 = {(r["dataset"], r["method"]) for r in rows if r["table"] == 1}
    assert len(t1) == 24 and {m for _, m in t1} == {"SSGRL", "GCN-ML", "KGGR", "P-GCN", "ASL", "CL", "Partial BCE", "DSRB"}
    assert len({(r["dataset"], r["method"]) for r in rows if r["table"] == 2}) == 33
    groups = defaultdict(list)
    for r in rows:
        groups[(r["table"], r["dataset"], r["method"])].append(r)
    checked = 0
    for key, rs in groups.items():
        assert [r["proportion"] for r in rs] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], key
        values = [r["mAP"] for r in rs]
        if None in values:  # P-GCN on VG-200: "-" in the paper
            assert all(v is None for v in values) and rs[0]["avg_mAP"] is None
            continue
        assert sum(values) / 9 == pytest.approx(rs[0]["avg_mAP"], abs=0.06), key  # within rounding
        checked += 1
    assert checked == 56


def test_a_few_cells_transcribed_by_hand():
    assert published("coco2014", "dsrb", 0.1)["mAP"] == 72.5
    assert published("vg200", "pbce", 0.5)["mAP"] == 41.5
    assert published("voc2007", "ssgrl", 0.9)["avg_CF1"] == 84.5
    assert published("coco2014", "dsrb")["avg_OF1"] == 76.8
    assert published(None, "dsrb", 0.1) is None and published("coco2014", "llr", 0.1) is None


def test_a_dataset_is_the_papers_by_name_and_classes():
    from mlrpl_data.specs import load_spec, voc20_names

    coco = [c["name"] for c in load_spec("coco80")["categories"]]
    assert paper_dataset("coco2014", coco) == "coco2014" and paper_dataset("coco2017", coco) is None
    assert paper_dataset("coco2014", coco[:10]) is None
    assert paper_dataset("voc2007", voc20_names()) == "voc2007" and paper_dataset("vg200", ["x"] * 200) == "vg200"


def test_a_sweep_on_voc2007_shows_the_published_rows(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mlrpl.cli import app
    from conftest import make_voc
    from mlrpl_data.specs import voc20_names

    names = voc20_names()
    trainval = {f"{i:06d}": [(names[i % 20], 0), (names[(i + 3) % 20], 0)] for i in range(1, 13)}
    test = {f"{i:06d}": [(names[i % 20], 0)] for i in range(100, 106)}
    raw = make_voc(tmp_path / "raw", trainval=trainval, test=test)
    d = tmp_path / "voc"
    runner = CliRunner()
    # the published rows need the whole benchmark: this 12 + 6 image subset stands in for VOC 2007's 5011 + 4952
    monkeypatch.setattr("mlrpl_train.published.whole_counts", lambda dataset: {"train": 12, "test": 6})
    for args in (["build-voc07", "--root", str(raw), "--out", str(d), "--subset"],
                 ["write-shards", str(d), "--max-samples", "6", "--no-progress"],
                 ["sweep", "pbce", str(d), "--proportions", "0.1,0.5", "--out", str(tmp_path / "sweep"), "--backbone", "tiny",
                  "--weights", "none", "--epochs", "1", "--batch-size", "4", "--image-size", "16", "--workers", "0",
                  "--no-progress", "--metric", "map_voc"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
    text = (tmp_path / "sweep" / "table.md").read_text()
    assert "| Partial BCE (published) | 80.7 | 91.2 | 86.0 | 87.9 | 84.8 |" in text  # Table 1, VOC 2007, 10% and 50%
    delta = next(ln for ln in text.splitlines() if ln.startswith("| Δ pbce − published |"))
    ours = next(ln for ln in text.splitlines() if ln.startswith("| pbce |")).split("|")[2].strip()
    assert delta.split("|")[2].strip() == f"{float(ours) - 80.7:+.1f}"  # ours (VOC-interpolated) minus the paper
    with open(tmp_path / "sweep" / "table.csv") as f:
        row = next(csv.DictReader(f))
    assert {"mAP@0.10", "mAP_voc@0.10", "avg_mAP", "avg_mAP_voc"} <= set(row)  # both mAPs, whatever the table shows
    r = runner.invoke(app, ["evaluate", str(tmp_path / "sweep" / "pbce-p0.10-s0"), str(d), "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert "published: Partial BCE on VOC 2007 at 10% known (arXiv 2205.13092, Table 1): 80.7 mAP" in r.output
    monkeypatch.undo()  # the subset as it is: not VOC 2007 as published, so no published number beside it
    r = runner.invoke(app, ["evaluate", str(tmp_path / "sweep" / "pbce-p0.10-s0"), str(d), "--workers", "0"])
    assert r.exit_code == 0 and "published:" not in r.output, r.output


def test_published_rows_only_for_the_whole_benchmark_as_published():
    from mlrpl_data.specs import load_spec, voc20_names
    from mlrpl_train.published import benchmark_dataset, whole_counts

    coco = [c["name"] for c in load_spec("coco80")["categories"]]
    assert whole_counts("coco2014") == {"train": 82783, "test": 40504}
    assert whole_counts("voc2007") == {"train": 5011, "test": 4952}
    assert whole_counts("vg200") == {"train": 82904, "test": 10000}
    card = lambda name, train, test, **kw: {"name": name, "counts": {"train": train, "test": test}, **kw}  # noqa: E731
    assert benchmark_dataset(card("coco2014", 82783, 40504), coco) == "coco2014"
    assert benchmark_dataset(card("coco2014", 82783, 40503), coco) is None  # one image short: a subset
    assert benchmark_dataset(card("voc2007", 5011, 4952), voc20_names()) == "voc2007"
    assert benchmark_dataset(card("voc2007", 4952, 5011), voc20_names()) is None  # counts of the wrong splits
    vg = [f"vg200_class_{k:03d}" for k in range(200)]
    assert benchmark_dataset(card("vg200", 82904, 10000, benchmark="vg200-ssgrl"), vg) == "vg200"
    assert benchmark_dataset(card("vg200", 82904, 10000, benchmark=None), vg) is None  # VG-500's first 200
    assert benchmark_dataset(card("vg200", 82904, 10000, vocabulary="vg200-raw"), vg) is None  # mlrpl's own split
    assert benchmark_dataset(card("vg200", 82900, 10000, benchmark="vg200-ssgrl"), vg) is None


def test_a_run_that_held_images_out_says_so_beside_the_published_figure(monkeypatch):
    """The paper trained on the whole training split: a run with --val-fraction 0.1 trained on 90%."""
    from mlrpl_data.specs import load_spec
    from mlrpl_train import reports
    from mlrpl_train.published import whole_counts

    monkeypatch.setattr(reports, "read_card", lambda d: {"name": "coco2014", "counts": whole_counts("coco2014")})
    coco = [c["name"] for c in load_spec("coco80")["categories"]]
    whole = reports._published_beside("d", coco, "dsrb", "uniform-p0.10-s0", {"mAP_voc": 0.7})
    held = reports._published_beside("d", coco, "dsrb", "uniform-p0.10-s0", {"mAP_voc": 0.7}, val_fraction=0.1)
    assert whole["note"] is None and whole["mAP"] == pytest.approx(0.725)
    assert held["note"].startswith("this run trained on 90% of the training split (--val-fraction 0.1)")
    assert held["delta_mAP_voc"] == pytest.approx(0.7 - 0.725)


def test_published_figures_only_beside_the_papers_masks(monkeypatch):
    """Per-image and single-positive masks are other experiments: no published figure, no delta."""
    from mlrpl_data.specs import load_spec
    from mlrpl_train import reports
    from mlrpl_train.published import whole_counts

    monkeypatch.setattr(reports, "read_card", lambda d: {"name": "coco2014", "counts": whole_counts("coco2014")})
    coco = [c["name"] for c in load_spec("coco80")["categories"]]
    for mask, shown in (("uniform-p0.10-s0", True), ("hcp-p0.10-s0", True), ("per-image-p0.10-s0", False),
                        ("single-positive-p0.10-s0", False)):
        pub = reports._published_beside("d", coco, "dsrb", mask, {"mAP_voc": 0.7})
        assert (pub is not None) == shown, mask
