"""The model protocol (mlrpl_train/model/base.py): every method's model declares it, and the engine's
step calls its hooks and passes the keys as the model says, without probing for them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlrpl_train import registry
from mlrpl_train.engine import train_step
from mlrpl_train.model.base import PartialLabelModel
from mlrpl_train.options import BaselineOptions, GcnOptions, KggrOptions, LlVariant, Method, TrainConfig


@pytest.mark.parametrize("entry", registry.METHODS, ids=lambda m: m.name)
def test_every_registry_builder_returns_a_partial_label_model(entry, tmp_path):
    from mlrpl_train.model.factory import build_model

    class Spec:  # what the builders read of a DataSpec
        num_classes, dataset, fingerprint = 3, str(tmp_path), "x"

        def fit_partial(self):
            return np.array([[1, 1, -1], [1, 0, 1], [-1, 1, 0], [1, -1, 1]])

    cfg = TrainConfig(method=Method(entry.name), dataset=str(tmp_path), backbone="tiny", weights="none",
                      freeze="none", image_size=32, gcn=GcnOptions(gcn_hidden=8), kggr=KggrOptions(kggr_feat_dim=16),
                      baselines=BaselineOptions(variant=LlVariant.cp))
    model = build_model(cfg, Spec())
    assert isinstance(model, PartialLabelModel)
    # per-image state needs the keys: CL's pseudo-labels, LL-Cp's corrections (llr is built as cp here)
    assert model.wants_keys is (entry.name in ("cl", "llr"))


class Toy(PartialLabelModel):
    """loss = w * (B + 1) for a batch of B images (NaN when told): counts its hook calls, keeps the keys."""

    def __init__(self, wants_keys: bool = False, nan: bool = False):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([2.0]))
        self.wants_keys, self.nan, self.after, self.keys = wants_keys, nan, 0, None

    def forward(self, x, partial=None, epoch=0, step=0, progress=1.0, keys=None):
        self.keys = keys
        loss = (self.w * (x.shape[0] + 1)).sum() * (float("nan") if self.nan else 1.0)
        return loss, {"w": float(self.w)}

    def after_step(self):
        self.after += 1


def _batch():
    # two uint8 images of 1x1 pixel: loss = 2 * (2 + 1) = 6, d loss / d w = 3
    return {"images": torch.zeros(2, 1, 1, 3, dtype=torch.uint8), "partial": torch.zeros(2, 1), "keys": ["a", "b"]}


@pytest.mark.parametrize("wants_keys", [False, True])
def test_train_step_calls_after_step_and_passes_keys_as_the_model_says(wants_keys):
    model = Toy(wants_keys)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss, logs = train_step(model, _batch(), opt, torch.device("cpu"), epoch=0, global_step=0, fast=False)
    assert loss == 6.0 and logs == {"w": 2.0}
    assert float(model.w) == pytest.approx(2.0 - 0.5 * 3)  # one SGD step on the gradient 3
    assert model.after == 1
    assert model.keys == (["a", "b"] if wants_keys else None)


def test_a_non_finite_loss_takes_no_step_and_no_after_step():
    model = Toy(nan=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss, _ = train_step(model, _batch(), opt, torch.device("cpu"), epoch=0, global_step=0, fast=False)
    assert np.isnan(loss) and float(model.w) == 2.0 and model.after == 0


def test_the_base_hooks_do_nothing_and_forward_must_be_written():
    base = PartialLabelModel()
    assert base.wants_keys is False
    assert base.before_epoch(0, lambda: [], torch.device("cpu")) is None and base.after_step() is None
    with pytest.raises(NotImplementedError, match="PartialLabelModel.forward"):
        base(torch.zeros(1, 3, 4, 4))
