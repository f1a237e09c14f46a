"""The CLI is thin: these check the wiring, one clear error line, and exit codes."""

import json

import pytest

from mlrpl_data.errors import MlrplError

from typer.testing import CliRunner

from mlrpl.cli import app
from conftest import make_coco, make_voc

runner = CliRunner()


def test_build_then_stats_table_and_json(tmp_path):
    raw = make_coco(tmp_path / "raw")
    r = runner.invoke(app, ["build-coco", "--root", str(raw), "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert "train 3, test 2" in r.output
    r = runner.invoke(app, ["stats", str(tmp_path / "d")])
    assert r.exit_code == 0 and "person" in r.output and "no positive" in r.output
    r = runner.invoke(app, ["stats", str(tmp_path / "d"), "--json"])
    s = json.loads(r.output)
    assert s["splits"]["train"]["images"] == 3 and s["splits"]["train"]["images_without_positive"] == 1
    assert s["splits"]["test"]["positives_per_class"] == {"person": 1, "car": 1, "train": 1}


def test_rerun_needs_force_for_other_content(tmp_path):
    raw = make_coco(tmp_path / "raw")
    args = ["build-coco", "--root", str(raw), "--out", str(tmp_path / "d")]
    assert runner.invoke(app, args).exit_code == 0
    assert "unchanged" in runner.invoke(app, args).output
    r = runner.invoke(app, args + ["--exclude-crowd"])  # other options: another dataset version
    assert r.exit_code == 1 and "--force" in r.output
    assert runner.invoke(app, args + ["--exclude-crowd", "--force"]).exit_code == 0


def test_bad_input_is_one_line_and_exit_1(tmp_path):
    raw = make_voc(tmp_path / "raw", trainval={"000005": [("unicorn", 0)]})
    r = runner.invoke(app, ["build-voc07", "--root", str(raw), "--out", str(tmp_path / "d"), "--subset"])
    assert r.exit_code == 1
    assert r.output.strip().startswith("error: ") and "unicorn" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_demo_data_is_coco_format(tmp_path):
    r = runner.invoke(app, ["demo-data", "--out", str(tmp_path / "raw"), "--train-images", "40", "--test-images", "10"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["build-coco", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "d"), "--name", "digits"])
    assert r.exit_code == 0, r.output
    assert "10 classes, train 40, test 10" in r.output


def test_build_vg200_both_sources(tmp_path):
    from conftest import make_vg

    raw = make_vg(tmp_path / "vg")
    r = runner.invoke(app, ["build-vg200", "--root", str(raw), "--out", str(tmp_path / "d"), "--test-size", "2",
                            "--num-classes", "3"])
    assert r.exit_code == 0, r.output
    assert "3 classes, train 4, test 2" in r.output
    (tmp_path / "train.txt").write_text("1.jpg\n2.jpg\n3.jpg\n")
    (tmp_path / "test.txt").write_text("4.jpg\n")
    (tmp_path / "labels.json").write_text(json.dumps({"1.jpg": [0], "2.jpg": [1, 2], "3.jpg": [], "4.jpg": [199, 300]}))
    r = runner.invoke(app, ["build-vg200", "--root", str(raw), "--out", str(tmp_path / "s"),
                            "--ssgrl-lists", str(tmp_path / "train.txt"), str(tmp_path / "test.txt"),
                            "--ssgrl-labels", str(tmp_path / "labels.json"), "--ssgrl-classes", "500"])
    assert r.exit_code == 0, r.output
    assert "200 classes, train 3, test 1" in r.output
    r = runner.invoke(app, ["build-vg200", "--root", str(raw), "--out", str(tmp_path / "x"),
                            "--ssgrl-labels", str(tmp_path / "labels.json")])
    assert r.exit_code == 1 and "go together" in r.output


def test_train_and_evaluate_commands(tmp_path):
    from trainkit import tiny_training_set

    d = tiny_training_set(tmp_path, n_train=16, n_test=4)
    args = ["train", "pbce", str(d), "--masks", "uniform-p0.50-s0", "--backbone", "tiny", "--weights", "none",
            "--freeze", "none", "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--workers", "0",
            "--out", str(tmp_path / "run"), "--no-progress"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and "--resume" in r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "run"), str(d), "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert "mAP" in r.output and "per_class_ap.png" in r.output
    r = runner.invoke(app, ["train", "pbce", str(d), "--masks", "nope-p0.10-s0", "--out", str(tmp_path / "r2"),
                            "--backbone", "tiny", "--weights", "none"])
    assert r.exit_code == 1 and "mask not found" in r.output


def test_json_output_of_masks_shards_verify_and_evaluate(tmp_path):
    from trainkit import tiny_training_set

    d = tiny_training_set(tmp_path, n_train=16, n_test=4)
    r = runner.invoke(app, ["make-masks", str(d), "--proportion", "0.2,0.4", "--json"])
    assert r.exit_code == 0, r.output
    made = json.loads(r.output)
    assert [m["name"] for m in made] == ["uniform-p0.20-s0", "uniform-p0.40-s0"] and made[0]["state"] == "written"
    listed = json.loads(runner.invoke(app, ["masks", str(d), "--json"]).output)
    assert {m["name"] for m in listed} == {"uniform-p0.20-s0", "uniform-p0.40-s0", "uniform-p0.50-s0"}
    r = runner.invoke(app, ["write-shards", str(d), "--max-samples", "7", "--json", "--no-progress"])
    shards = json.loads(r.output)
    assert shards["complete"] and shards["written"] == [] and shards["index"]["splits"] == {"test": 4, "train": 16}
    v = json.loads(runner.invoke(app, ["verify", str(d), "--json"]).output)
    assert v == {"dataset": str(d), "ok": True, "problems": []}
    args = ["train", "pbce", str(d), "--masks", "uniform-p0.50-s0", "--backbone", "tiny", "--weights", "none",
            "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--workers", "0", "--out", str(tmp_path / "run"),
            "--no-progress"]
    assert runner.invoke(app, args).exit_code == 0
    e = json.loads(runner.invoke(app, ["evaluate", str(tmp_path / "run"), str(d), "--workers", "0", "--json"]).output)
    assert e["keys_evaluated"] == 4 and set(e["per_class_ap"]) == {"person", "car", "train"}


def test_resume_refuses_conflicting_options_and_applies_allowed_ones(tmp_path):
    from trainkit import tiny_training_set

    d = tiny_training_set(tmp_path, n_train=16, n_test=4)
    run = str(tmp_path / "run")
    base = ["train", "pbce", str(d), "--masks", "uniform-p0.50-s0", "--backbone", "tiny", "--weights", "none",
            "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--workers", "0", "--out", run, "--no-progress"]
    assert runner.invoke(app, base).exit_code == 0
    r = runner.invoke(app, ["train", "pbce", str(d), "--resume", run, "--lr", "0.5", "--batch-size", "8", "--no-progress"])
    assert r.exit_code == 1 and "--batch-size 8 (the run has 4)" in r.output and "--lr 0.5 (the run has 1e-05)" in r.output
    r = runner.invoke(app, ["train", "dsrb", str(d), "--resume", run])
    assert r.exit_code == 1 and "METHOD dsrb (the run has pbce)" in r.output
    r = runner.invoke(app, ["train", "pbce", str(d), "--resume", run, "--epochs", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run/config.json").read_text())["config"]["epochs"] == 2  # applied and recorded
    assert (tmp_path / "run/metrics.csv").read_text().count("\n") == 3  # header + epochs 1 and 2


def test_paper_preset_trains_in_fp32_and_refuses_without_label_embeddings(tmp_path):
    """The authors trained without autocast and with fixed GloVe label embeddings: --preset paper pins
    fp32, and refuses SSGRL/DSRB before any mask or run when the dataset has no embeddings."""
    import numpy as np

    from mlrpl_train.options import TrainConfig
    from mlrpl_train.sweep import paper_preset
    from trainkit import tiny_training_set

    d = tiny_training_set(tmp_path, n_train=8, n_test=4)
    out = tmp_path / "sweep"
    r = runner.invoke(app, ["sweep", "dsrb", str(d), "--preset", "paper", "--out", str(out), "--workers", "0",
                            "--no-progress"])
    assert r.exit_code == 1 and "run `mlrpl embed-labels" in r.output and "--preset paper" in r.output
    assert not out.exists() and not list((d / "masks").glob("*p0.10*"))  # nothing trained, no mask made
    assert paper_preset(TrainConfig(method="pbce", dataset=str(d))).precision == "fp32"  # pbce reads no embeddings
    for method in ("gcn-ml", "kggr"):  # every method the registry says reads label embeddings is held to them
        with pytest.raises(MlrplError, match="embed-labels"):
            paper_preset(TrainConfig(method=method, dataset=str(d)))
    np.save(d / "label_embeddings.npy", np.ones((3, 300), dtype=np.float32))
    cfg = TrainConfig(method="ssgrl", dataset=str(d))
    assert cfg.precision == "auto" and paper_preset(cfg).precision == "fp32"


def test_sweep_without_its_weights_writes_nothing(tmp_path):
    """Missing backbone weights are refused before a mask or a sweep folder is written."""
    from trainkit import tiny_training_set

    d = tiny_training_set(tmp_path, n_train=8, n_test=4)
    masks = sorted(p.name for p in (d / "masks").iterdir())
    out = tmp_path / "sw"
    r = runner.invoke(app, ["sweep", "pbce", str(d), "--proportions", "0.2", "--backbone", "resnet18",
                            "--weights", str(tmp_path / "nope.pth"), "--out", str(out), "--no-progress"])
    assert r.exit_code == 1 and "nope.pth: weights file not found" in r.output
    assert not out.exists() and sorted(p.name for p in (d / "masks").iterdir()) == masks


def test_a_proportion_with_single_positive_is_refused_not_ignored(tmp_path):
    from trainkit import tiny_training_set

    d = tiny_training_set(tmp_path, n_train=8, n_test=4)
    masks = sorted(p.name for p in (d / "masks").iterdir())
    r = runner.invoke(app, ["make-masks", str(d), "--proportion", "0.5", "--scheme", "single-positive"])
    assert (r.exit_code, r.output.strip()) == (1, "error: --proportion 0.5: single-positive masks know one positive "
                                                  "label per image and take no proportion; drop --proportion")
    for extra in ([], ["--proportions", "0.5"]):  # a sweep has no proportion to sweep over (it crashed without one)
        r = runner.invoke(app, ["sweep", "pbce", str(d), "--scheme", "single-positive", "--out", str(tmp_path / "sw"),
                                "--backbone", "tiny", "--weights", "none", *extra])
        assert r.exit_code == 1 and r.output.startswith("error: sweep trains one run per known proportion and "
                                                        "single-positive masks have none"), r.output
    assert sorted(p.name for p in (d / "masks").iterdir()) == masks and not (tmp_path / "sw").exists()
    r = runner.invoke(app, ["make-masks", str(d), "--scheme", "single-positive", "--json"])
    assert r.exit_code == 0 and [m["name"] for m in json.loads(r.output)] == ["single-positive-s0"]


def _help_text(args: list[str]) -> str:
    r = runner.invoke(app, args + ["--help"], prog_name="mlrpl")
    assert r.exit_code == 0, r.output
    return r.output


# int/float options with no range: any value of their type is valid or the valid set is not an interval
UNBOUNDED = {("train", "norm_gamma"): "any real but 0", ("sweep", "norm_gamma"): "any real but 0",
             ("build-vg200", "ssgrl_classes"): "200 or 500"}


def test_help_states_every_range_in_clicks_words():
    """Every int/float option of every command shows INTEGER RANGE / FLOAT RANGE and its range in the
    brackets, whether typer or the option's dataclass checks it; usage lines read METHOD, not {method}."""
    import typer
    from mlrpl.cli import _declared_ranges, range_text

    group = typer.main.get_command(app)
    checked = 0
    for name, cmd in group.commands.items():
        raw = _help_text([name])
        text = " ".join(raw.split())  # one line: no wrapping
        declared = _declared_ranges(cmd.callback)
        usage = raw.split("Usage: ", 1)[1].splitlines()[0]
        assert "{" not in usage and "<int" not in text and "<str>" not in text and "<path>" not in text, name
        for p in cmd.params:
            if p.param_type_name != "option" or p.type_descriptor.annotation not in (int, float):
                continue
            shown = declared.get(p.name) or range_text(p.min, p.max)
            if (name, p.name) in UNBOUNDED:
                assert shown is None
                continue
            kind = "INTEGER" if p.type_descriptor.annotation is int else "FLOAT"
            assert shown, f"{name} {p.opts[0]}: no range declared"
            assert f"{p.opts[0]} {kind} RANGE " in text, f"{name} {p.opts[0]}"
            after = text.split(f"{p.opts[0]} {kind} RANGE ", 1)[1].split("]", 1)[0] + "]"  # its help, brackets
            assert f"; {shown}]" in after or f"[{shown}]" in after, f"{name} {p.opts[0]}: {after}"
            checked += 1
    assert checked > 80
    train = " ".join(_help_text(["train"]).split())
    assert "Usage: mlrpl train [OPTIONS] METHOD DATASET" in train
    assert "--epochs INTEGER RANGE Training epochs [default: 20; x>=1]" in train
    assert "--lr FLOAT RANGE Adam learning rate [default: 1e-05; x>0]" in train  # strictly above 0
    assert "--backbone [resnet18|resnet34|resnet50|resnet101|resnet152|tiny]" in train
    shards = " ".join(_help_text(["write-shards"]).split())
    assert "--quality INTEGER RANGE JPEG quality of --resize [default: 95; 1<=x<=100]" in shards
    assert "Usage: mlrpl write-shards [OPTIONS] DATASET" in shards and "--json / --no-json" in shards
    assert "Usage: mlrpl predict [OPTIONS] MODEL INPUTS..." in " ".join(_help_text(["predict"]).split())
    assert "--ssgrl-lists <PATH PATH>" in " ".join(_help_text(["build-vg200"]).split())


def test_range_text_is_clicks():
    from mlrpl.cli import range_text

    assert [range_text(1, None), range_text(1, 100), range_text(0, None, True), range_text(0, 1, True),
            range_text(None, 5), range_text(None, None)] == ["x>=1", "1<=x<=100", "x>0", "0<x<=1", "x<=5", None]


def test_a_failed_sweep_removes_the_masks_and_folder_it_made(tmp_path):
    """8 training images cannot fill a batch of 32: train refuses it after the sweep wrote its masks and folder; the new mask (p0.25) and
    the sweep folder go, the mask that was there before (p0.50) stays, and the card lists the masks as before."""
    from trainkit import tiny_training_set

    d = tiny_training_set(tmp_path, n_train=8, n_test=4)
    before = {p.name: p.read_bytes() for p in sorted((d / "masks").iterdir())}
    card = {n: (d / n).read_bytes() for n in ("README.md", "files.json")}
    assert "uniform-p0.50-s0.parquet" in before
    out = tmp_path / "sw"
    r = runner.invoke(app, ["sweep", "dsrb", str(d), "--proportions", "0.5,0.25", "--backbone", "tiny",
                            "--weights", "none", "--image-size", "16", "--epochs", "1", "--workers", "0",
                            "--out", str(out), "--no-progress"])
    assert r.exit_code == 1 and "error: 8 training samples are fewer than one batch of 32" in r.output, r.output
    assert "training (uniform-p0.50-s0)" in r.output  # it had started
    assert {p.name: p.read_bytes() for p in sorted((d / "masks").iterdir())} == before
    assert {n: (d / n).read_bytes() for n in card} == card
    assert not out.exists()
    # a sweep folder that was there before stays, with what it held
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = runner.invoke(app, ["sweep", "dsrb", str(d), "--proportions", "0.25", "--backbone", "tiny", "--weights",
                            "none", "--image-size", "16", "--epochs", "1", "--workers", "0", "--out", str(out),
                            "--no-progress"])
    assert r.exit_code == 1 and (out / "notes.txt").read_text() == "mine"
    assert {p.name: p.read_bytes() for p in sorted((d / "masks").iterdir())} == before
