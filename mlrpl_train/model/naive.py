"""The naive feature-map form of IPRB and PPRB (eq. 6-13 as the published code computes them):
blends the (B, C, H, W, D) category-specific maps, then pools. Kept as the oracle the cheap
form is tested against (`NaiveDSRB` in dsrb.py blends with these: `--form naive`), and as the
"(c)" row of benchmarks/train_step.py. Same choices (pairs, class, cell) as the cheap form, so
outputs, targets and gradients can be compared.
"""

from __future__ import annotations

import torch

from .blending import iprb_mask, pprb_mask


def category_maps(attention: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """F_c(h, w) = a_c(h, w) x(h, w): attention (B, C, HW), x (B, HW, D) -> (B, C, HW, D)."""
    return attention.unsqueeze(-1) * x.unsqueeze(1)


def pool(maps: torch.Tensor) -> torch.Tensor:
    """sigma of eq. 2: the sum over positions, (B, C, HW, D) -> (B, C, D)."""
    return maps.sum(dim=2)


def iprb_blend_maps(maps: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    blend = iprb_mask(y)
    a = torch.where(blend, alpha.to(maps.dtype).expand_as(y), torch.ones_like(y, dtype=maps.dtype))
    a4 = a[:, :, None, None]
    maps_hat = a4 * maps + (1 - a4) * torch.flip(maps, dims=[0])
    y_hat = a * y.to(maps.dtype) + (1 - a) * torch.flip(y, dims=[0]).to(maps.dtype)
    return maps_hat, y_hat


def prototype_maps(maps: torch.Tensor, y: torch.Tensor, own_cell: torch.Tensor, cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean category map of the known positives per (class, cell): (C, cells, HW, D), counts (C, cells)."""
    b, c, hw, d = maps.shape
    sums = torch.zeros((c, cells, hw, d), dtype=maps.dtype)
    counts = torch.zeros((c, cells), dtype=maps.dtype)
    for n in range(b):
        for k in range(c):
            if y[n, k] == 1:
                sums[k, own_cell[n, k]] += maps[n, k]
                counts[k, own_cell[n, k]] += 1
    return sums / counts.clamp(min=1)[:, :, None, None], counts


def pprb_blend_maps(maps: torch.Tensor, y: torch.Tensor, beta: torch.Tensor, proto_maps: torch.Tensor,
                    cls: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b, c = y.shape
    onehot = pprb_mask(cls, c)
    rows = torch.nonzero(cls >= 0).squeeze(1)
    bmat = torch.where(onehot, beta.to(maps.dtype).expand(b, c), torch.ones((b, c), dtype=maps.dtype))
    p = torch.zeros_like(maps)
    p[rows, cls[rows]] = proto_maps[cls[rows], cell[rows]].to(maps.dtype)
    b4 = bmat[:, :, None, None]
    return b4 * maps + (1 - b4) * p, bmat * y.to(maps.dtype) + (1 - bmat)
