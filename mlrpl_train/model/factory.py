"""One place that turns a run's config into its model: the backbone, then the method's builder from the registry."""

from __future__ import annotations

from typing import Any

from ..registry import get
from .backbone import build_backbone, freeze_until
from .base import PartialLabelModel


def build_model(cfg, spec, state: dict[str, Any] | None = None) -> PartialLabelModel:
    """The model of `cfg` for the data of `spec`. With `state` (a checkpoint's model state) the
    backbone is not given pretrained weights and the state is loaded instead (evaluation, predict)."""
    backbone = build_backbone(cfg.backbone, "none" if state is not None else cfg.weights)
    frozen = freeze_until(backbone, cfg.freeze)
    model = get(cfg.method).build()(cfg, spec, backbone, frozen, state)
    if state is not None:
        model.load_state_dict(state)  # DSRB's prototypes and graph are buffers: they come with it
    return model
