"""Losses of the paper: partial BCE (eq. 14) and the category-wise contrastive loss (eq. 3-4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def partial_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 14, averaged over the images of the batch that have a known label.

    targets (B, C): 1 positive, -1 negative, 0 unknown (ignored). A blended soft target
    y in (0, 1) (IPRB/PPRB, eq. 7 and 11) is a soft positive: -[y log s + (1-y) log(1-s)],
    as in the published code. Each image is normalised by its number of known labels.
    """
    t = targets.to(logits.dtype)
    pos, neg = t > 0, t < 0
    # BCE(x, y) = softplus(x) - x*y for y > 0;  BCE(-x, -y) = softplus(-x) - x*y for y < 0
    loss = torch.where(pos, F.softplus(logits) - logits * t, torch.where(neg, F.softplus(-logits) - logits * t, 0.0))
    known = (pos | neg).sum(dim=1)
    has_known = known > 0
    if not has_known.any():
        return logits.sum() * 0
    return (loss.sum(dim=1)[has_known] / known[has_known]).mean()


def contrastive_loss(feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 3-4: sum over image pairs (n != m) and classes of 1 - cos if both are known positives,
    else 1 + cos. feats (B, C, D), labels (B, C). Pairs n = m are left out (cos = 1 gives a
    constant 0 or 2). Summed over the batch, as eq. 4 writes it."""
    f = F.normalize(feats.float(), dim=-1)
    cos = torch.einsum("ncd,mcd->cnm", f, f)  # (C, B, B)
    pos = (labels == 1).float()
    both = torch.einsum("nc,mc->cnm", pos, pos)
    off = 1 - torch.eye(f.shape[0], device=f.device)
    per = torch.where(both > 0, 1 - cos, 1 + cos) * off
    return per.sum()
