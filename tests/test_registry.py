"""The method registry: one entry per method, read by the CLI, sweep, published rows, resume and DDP."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mlrpl_data.errors import BadInputError
from mlrpl_train import registry
from mlrpl_train.checkpoint import RESUME_CHANGEABLE, resume_config
from mlrpl_train.options import Method, TrainConfig, config_from_json, option_groups
from mlrpl_train.published import published_rows, table1_name


def test_every_entry_is_whole_and_named_once():
    names = registry.method_names()
    assert len(names) == len(set(names))
    assert [m.value for m in Method] == names  # the CLI's choices are the registry's, in its order
    groups = {f.name for f in dataclasses.fields(TrainConfig)
              if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)}
    used = {m.group for m in registry.METHODS if m.group}
    assert used == groups  # every option group belongs to a method, every method's group exists
    for m in registry.METHODS:
        assert callable(m.build()), m.name
        assert m.summary.split(":")[0] and ":" in m.summary, m.name


def test_table1_names_are_the_published_rows():
    rows = {r["method"] for r in published_rows() if r["table"] == 1}
    named = {m.table1 for m in registry.METHODS if m.table1}
    assert named <= rows
    assert table1_name("pbce") == "Partial BCE" and table1_name("llr") is None


def _other(value):
    """A different value of the same kind, for any option."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, enum_type()):
        return next(v for v in type(value) if v != value)
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.25
    if isinstance(value, tuple):
        return (256,)
    return "elsewhere.npy"


def enum_type():
    from mlrpl_data.options import Choice

    return Choice


def _options(cfg: TrainConfig):
    """(holder, name) for every option of a config, its groups' options included."""
    for obj in (cfg, *option_groups(cfg)):
        for f in dataclasses.fields(obj):
            if not dataclasses.is_dataclass(getattr(obj, f.name)):
                yield obj, f.name


@pytest.mark.parametrize("method", registry.method_names())
def test_resume_applies_or_refuses_every_changed_option(tmp_path, method):
    """No option of any method is dropped silently on --resume: applied where it may change, else refused."""
    run = tmp_path / "run"
    run.mkdir()
    stored = TrainConfig(method=Method(method), dataset=str(tmp_path / "data"), masks="m", out=str(run))
    (run / "config.json").write_text(json.dumps({"config": stored.to_json()}))
    checked = 0
    for holder_name in [n for _, n in _options(stored)]:
        if holder_name in ("method", "out", "dataset", "masks"):
            continue
        asked = config_from_json(stored.to_json(), "test")
        holder = next(h for h, n in _options(asked) if n == holder_name)
        setattr(holder, holder_name, _other(getattr(holder, holder_name)))
        if holder_name in RESUME_CHANGEABLE:
            cfg, changed = resume_config(run, asked, {holder_name})
            got = next(getattr(h, n) for h, n in _options(cfg) if n == holder_name)
            assert got == getattr(holder, holder_name) and changed, holder_name
        else:
            flag = "--" + holder_name.replace("_", "-")
            with pytest.raises(BadInputError, match=f"{flag} "):
                resume_config(run, asked, {holder_name})
        checked += 1
    assert checked >= 30  # the whole config, the groups' options included


def test_a_config_from_before_embeddings_moved_up_reads_as_meant():
    doc = TrainConfig(method=Method.dsrb, dataset="d", masks="m").to_json()
    doc["dsrb"]["embeddings"] = "glove.npy"
    del doc["embeddings"]
    assert config_from_json(doc, "old config.json").embeddings == "glove.npy"


def test_the_readme_shows_every_method():
    """The docs read the registry: every method has a runnable `mlrpl train NAME` example in the README."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [m.name for m in registry.METHODS if f"mlrpl train {m.name} " not in readme]
    assert not missing, f"README.md has no `mlrpl train NAME ...` example for {missing}"


def test_sweep_takes_one_several_or_table1_methods():
    from mlrpl.cli import sweep_methods
    from mlrpl_data.errors import MlrplError

    table1 = [m.name for m in registry.METHODS if m.table1]
    assert sweep_methods("table1") == table1 and "llr" not in table1
    rows = [r for r in dict.fromkeys(r["method"] for r in published_rows() if r["table"] == 1)]
    ours = [registry.get(n).table1 for n in table1]
    assert ours == [r for r in rows if r in ours]  # the paper's row order
    assert sweep_methods("dsrb, pbce,dsrb") == ["dsrb", "pbce"]
    with pytest.raises(MlrplError, match="nope is not a method"):
        sweep_methods("dsrb,nope")


@pytest.mark.parametrize("entry", [m for m in registry.METHODS if not m.ddp_unused], ids=lambda m: m.name)
def test_a_method_that_tells_ddp_every_parameter_learns_gives_each_a_gradient(entry, tmp_path):
    """DDP is told find_unused_parameters=False for these: one training step must give every trainable
    parameter a gradient, or a multi-GPU run would hang or fail at its first step."""
    import numpy as np
    import torch

    from mlrpl_train.model.factory import build_model
    from mlrpl_train.options import GcnOptions, KggrOptions

    class Spec:  # what the builders read of a DataSpec
        num_classes, dataset, fingerprint = 3, str(tmp_path), "x"

        def fit_partial(self):
            return np.array([[1, 1, -1], [1, 0, 1], [-1, 1, 0], [1, -1, 1]])

    cfg = TrainConfig(method=Method(entry.name), dataset=str(tmp_path), backbone="tiny", weights="none",
                      freeze="none", image_size=32, gcn=GcnOptions(gcn_hidden=8), kggr=KggrOptions(kggr_feat_dim=16))
    torch.manual_seed(0)
    model = build_model(cfg, Spec()).train()
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor(Spec().fit_partial(), dtype=torch.float32)
    extra = {"keys": [f"k{i}" for i in range(4)]} if getattr(model, "wants_keys", False) else {}
    loss, _ = model(x, partial=y, epoch=0, step=0, progress=0.5, **extra)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{entry.name}: no gradient for {missing[:5]}"
