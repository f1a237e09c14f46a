"""The "Partial BCE" row of Table 1: backbone -> global average pool -> linear, trained with
partial BCE on the known labels only (eq. 14)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..losses import partial_bce


class PartialBCEModel(nn.Module):
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
        return partial_bce(logits.float(), partial, self.bce), {}
