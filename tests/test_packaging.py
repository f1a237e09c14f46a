"""What a user installs: the package list, the version, typed options that round-trip, and a CLI
whose every option is documented. (.ci/wheel-check runs the built wheel outside the checkout.)"""

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mlrpl_data
from mlrpl.cli import app
from mlrpl_data.errors import BadInputError
from mlrpl_train.options import DsrbOptions, TrainConfig, config_from_json

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_of_the_source_tree_is_in_the_wheel_list():
    found = sorted(".".join(p.parent.relative_to(REPO).parts) for top in ("mlrpl_data", "mlrpl_train")
                   for p in (REPO / top).rglob("__init__.py"))
    listed = pyproject()["tool"]["setuptools"]["packages"]
    assert set(found) <= set(listed), f"packages missing from pyproject.toml: {sorted(set(found) - set(listed))}"
    assert {"mlrpl", "mlrpl.manifests"} <= set(listed)  # cli.py and manifests/ mapped into the package


def test_every_spec_file_is_package_data():
    globs = pyproject()["tool"]["setuptools"]["package-data"]["mlrpl.manifests"]
    for f in (REPO / "manifests").rglob("*"):
        if f.is_file():
            rel = f.relative_to(REPO / "manifests")
            assert any(rel.match(g) for g in globs), f"manifests/{rel} is not shipped in the wheel"


def test_one_version_source():
    meta = pyproject()["project"]
    assert "version" not in meta and "version" in meta["dynamic"]
    assert pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mlrpl_data.__version__"}
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"mlrpl {mlrpl_data.__version__}"


def test_no_global_cli_module_and_no_unused_dependency():
    meta = pyproject()
    assert meta["project"]["scripts"] == {"mlrpl": "mlrpl.cli:main"}
    assert "py-modules" not in meta["tool"]["setuptools"]
    assert not any(d.startswith("requests") for d in meta["project"]["dependencies"])


def test_config_round_trips_and_refuses_unknown_keys():
    cfg = TrainConfig(method="dsrb", dataset="d", masks="m", epochs=3, crop_scales=(512, 448), weights="none",
                      dsrb=DsrbOptions(blend_start=2, csrl="sa", iprb=False))
    doc = json.loads(json.dumps(cfg.to_json()))
    back = config_from_json(doc, "config.json")
    assert back == cfg and back.crop_scales == (512, 448) and back.dsrb.csrl == "sa" and back.freeze == "none"
    doc["dsrb"]["blend_strat"] = 3
    with pytest.raises(BadInputError, match=r"config.json: dsrb: unknown option\(s\) blend_strat"):
        config_from_json(doc, "config.json")
    with pytest.raises(BadInputError, match="epochs: expected an integer"):
        config_from_json({**cfg.to_json(), "epochs": "3"}, "config.json")


def test_ranges_and_choices_are_checked_where_the_options_are_declared():
    with pytest.raises(BadInputError, match="--batch-size 0: must be >= 1"):
        TrainConfig(method="pbce", dataset="d", masks="m", batch_size=0)
    with pytest.raises(BadInputError, match="--lr 0.0: must be > 0"):
        TrainConfig(method="pbce", dataset="d", masks="m", lr=0.0)
    with pytest.raises(BadInputError, match="--crop-scales 0: must be >= 1"):
        TrainConfig(method="pbce", dataset="d", masks="m", crop_scales=(512, 0))
    with pytest.raises(BadInputError, match="--blend 'mixup': use one of map, vector"):
        DsrbOptions(blend="mixup")


def _help(args: list[str]) -> str:
    r = runner.invoke(app, args + ["--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    return r.output


def test_every_option_of_every_command_has_help_and_an_example():
    import click
    import typer

    group = typer.main.get_command(app)
    assert len(group.commands) >= 14
    for name, cmd in group.commands.items():
        assert (cmd.epilog or "").startswith("Example: mlrpl "), name
        for p in cmd.params:
            if isinstance(p, click.Option) and p.name != "help":
                assert p.help and len(p.help) > 10, f"{name} {p.opts}: no help text"
        assert "Example: mlrpl " in _help([name])


def test_sweep_documents_every_training_option():
    text = _help(["sweep"])
    for cls in (TrainConfig, DsrbOptions):
        for f in dataclasses.fields(cls):
            if f.metadata.get("cli", True) and f.name != "seed":  # sweep takes --seeds instead
                flag = (f.metadata.get("flags") or "--" + f.name.replace("_", "-")).split("/")[0]
                assert flag in text, flag
    # choices are shown, booleans read --x/--no-x, the Table 2 spellings work
    assert "[sd|sa]" in text and "--iprb / --no-iprb" in text and "--learn-alpha / --fixed-alpha" in text
    assert "--progress / --no-progress" in text and "--no-no-" not in text
