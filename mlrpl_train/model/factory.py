"""One place that turns a run's config into its model."""

from __future__ import annotations

import torch
import torch.nn as nn

from mlrpl_data.errors import MlrplError

from ..losses import partial_bce
from .backbone import build_backbone, freeze_until

METHODS = ("pbce", "ssgrl", "dsrb")


class PartialBCEModel(nn.Module):
    """The "Partial BCE" row of Table 1: backbone -> global average pool -> linear, eq. 14."""

    def __init__(self, backbone: nn.Module, num_classes: int, frozen: list[nn.Module], bce: str = "batch"):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.out_channels, num_classes)
        self._frozen, self.bce = frozen, bce

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen:  # frozen layers keep their BatchNorm statistics
            m.eval()
        return self

    def forward(self, x: torch.Tensor, partial: torch.Tensor | None = None, epoch: int = 0, step: int = 0,
                progress: float = 1.0):
        """(B, 3, H, W) -> logits (B, C); with `partial` (B, C): (loss, logs)."""
        logits = self.fc(self.backbone(x).mean(dim=(2, 3)))
        if partial is None:
            return logits
        loss = partial_bce(logits.float(), partial, self.bce)
        return loss, {}


def build_model(cfg, spec, for_eval: bool = False) -> nn.Module:
    if cfg.method not in METHODS:
        raise MlrplError(f"unknown method {cfg.method!r}: use one of {', '.join(METHODS)}")
    weights = "none" if for_eval else cfg.weights  # evaluation loads the checkpoint's own weights
    backbone = build_backbone(cfg.backbone, weights)
    frozen = freeze_until(backbone, cfg.freeze)
    if cfg.method == "pbce":
        return PartialBCEModel(backbone, spec.num_classes, frozen, cfg.bce)
    from .dsrb import build_dsrb

    return build_dsrb(cfg, spec, backbone, frozen)
