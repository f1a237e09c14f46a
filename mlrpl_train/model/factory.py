"""One place that turns a run's config into its model."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from .backbone import build_backbone, freeze_until
from .pbce import PartialBCEModel


def build_model(cfg, spec, state: dict[str, Any] | None = None) -> nn.Module:
    """The model of `cfg` for the data of `spec`. With `state` (a checkpoint's model state) the
    backbone is not given pretrained weights and the state is loaded instead (evaluation, predict)."""
    backbone = build_backbone(cfg.backbone, "none" if state is not None else cfg.weights)
    frozen = freeze_until(backbone, cfg.freeze)
    if cfg.method in ("pbce", "asl", "llr"):
        model = PartialBCEModel(backbone, spec.num_classes, frozen, cfg.bce, loss=str(cfg.method), options=cfg.baselines)
    else:
        from .dsrb import build_dsrb

        model = build_dsrb(cfg, spec, backbone, frozen, embeddings=None if state is None else state.get("embeddings"),
                           from_checkpoint=state is not None)
    if state is not None:
        model.load_state_dict(state)  # DSRB's prototypes and graph are buffers: they come with it
    return model
