"""The "Partial BCE" row of Table 1: backbone -> global average pool -> linear, trained with
partial BCE on the known labels only (eq. 14). The loss baselines share the architecture and
differ in the loss: ASL (Table 1's row) and Large Loss Matters (LL-R, LL-Ct, LL-Cp)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..losses import asymmetric_loss, large_loss, partial_bce
from .base import PartialLabelModel


class Corrections(nn.Module):
    """LL-Cp's permanent corrections: key -> the classes made positive. Kept in the checkpoint (its
    extra state), so a resumed run corrects the same labels."""

    def __init__(self):
        super().__init__()
        self.table: dict[str, list[int]] = {}

    def apply(self, keys: list[str], targets: torch.Tensor) -> torch.Tensor:
        out = targets.clone()
        for i, k in enumerate(keys):
            for j in self.table.get(k, ()):
                out[i, j] = 1
        return out

    def record(self, keys: list[str], chosen: torch.Tensor) -> None:
        for i, j in chosen.nonzero().tolist():
            row = self.table.setdefault(keys[i], [])
            if j not in row:
                row.append(j)

    def get_extra_state(self):
        return {k: sorted(v) for k, v in sorted(self.table.items())}

    def set_extra_state(self, state) -> None:
        self.table = {str(k): [int(j) for j in v] for k, v in dict(state).items()}


class PartialBCEModel(PartialLabelModel):
    def __init__(self, backbone: nn.Module, num_classes: int, frozen: list[nn.Module], bce: str = "batch",
                 loss: str = "pbce", options=None):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.out_channels, num_classes)
        self._frozen, self.bce, self.loss, self.options = frozen, bce, loss, options
        self.wants_keys = loss == "llr" and str(options.variant) == "cp"
        if self.wants_keys:
            self.corrections = Corrections()

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen:  # frozen layers keep their BatchNorm statistics
            m.eval()
        return self

    def forward(self, x: torch.Tensor, partial: torch.Tensor | None = None, epoch: int = 0, step: int = 0,
                progress: float = 1.0, keys: list[str] | None = None):
        """(B, 3, H, W) -> logits (B, C); with `partial` (B, C): (loss, logs)."""
        logits = self.fc(self.backbone(x).mean(dim=(2, 3)))
        if partial is None:
            return logits
        z = logits.float()
        o = self.options
        if self.loss == "asl":
            return asymmetric_loss(z, partial, o.asl_gamma_pos, o.asl_gamma_neg, o.asl_clip), {}
        if self.loss == "llr":
            targets = self.corrections.apply(keys, partial) if self.wants_keys else partial
            loss, chosen = large_loss(z, targets, epoch, o.delta_rel / 100, str(o.variant))
            if self.wants_keys:
                self.corrections.record(keys, chosen)
            return loss, {"ll_changed": float(chosen.float().mean())}
        return partial_bce(z, partial, self.bce), {}


def _builder(loss: str):
    def build(cfg, spec, backbone: nn.Module, frozen: list[nn.Module], state: dict | None) -> PartialBCEModel:
        return PartialBCEModel(backbone, spec.num_classes, frozen, cfg.bce, loss=loss, options=cfg.baselines)

    build.__doc__ = f"The registry's builder of the partial-BCE architecture trained with the {loss} loss."
    return build


# the registry's builders: one architecture, three losses
build_pbce, build_asl, build_llr = _builder("pbce"), _builder("asl"), _builder("llr")
