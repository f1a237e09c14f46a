"""What every model mlrpl trains is: `PartialLabelModel`, the protocol the engine calls."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


class PartialLabelModel(nn.Module):
    """A multi-label classifier trained on partial labels; every registry builder returns one.

    `forward(x)`: images (B, 3, H, W) float -> logits (B, C), one per class (evaluation, predict).
    `forward(x, partial=y, epoch=, step=, progress=[, keys=])`: in training, with the partial
    labels y (B, C) in {-1, 0, 1} (known negative, unknown, known positive) -> (loss, logs): the
    method's own loss, a 0-d tensor, and a dict of floats logged to TensorBoard as train/<name>.
    `epoch` is 0-based, `step` the global step (seeds a step's random draws, so a resumed run
    draws the same), `progress` the fraction of the epoch done; `keys` (the batch's sample keys)
    only when `wants_keys`.

    The engine calls the hooks itself: `before_epoch` before each epoch that starts at its first
    batch (not when resuming mid-epoch: the checkpoint holds that state), `after_step` after each
    optimizer step that took a finite loss. Both do nothing here.
    """

    wants_keys: bool = False  # True: forward takes the batch's sample keys (per-image state: CL, LL-Cp)

    def forward(self, x: torch.Tensor, partial: torch.Tensor | None = None, epoch: int = 0, step: int = 0,
                progress: float = 1.0):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def before_epoch(self, epoch: int, make_loader: Callable, device: torch.device, info=None) -> None:
        """Before epoch `epoch` (0-based): `make_loader()` gives every training image once under the
        training augmentation (for DSRB's prototypes, CL's labelling rounds); `info` the ranks."""

    def after_step(self) -> None:
        """After each optimizer step (e.g. DSRB keeps alpha and beta in [0, 1])."""

