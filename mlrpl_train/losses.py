"""Losses of the paper: partial BCE (eq. 14-15) and the category-wise contrastive loss (eq. 3-4).

Each has two forms. The default is the form of the authors' code that produced the published
numbers (HCP-MLR-PL `loss/DSRB.py`); the paper-literal form is kept behind a flag:

- partial BCE: `batch` (default, their BCELoss with size_average): one mean over every known
  entry of the batch; `per-image` (eq. 14-15): each image normalised by its own known count,
  then averaged over images.
- contrastive: `published` (default, their ContrastiveLoss): unordered pairs n < m, known labels
  only, negatives subsampled, then the MEAN; `literal` (eq. 3-4): every ordered pair and class
  summed, every pair touching an unknown label scored as a negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BCE_FORMS = ("batch", "per-image")
CONTRASTIVE_FORMS = ("published", "literal")


def partial_bce(logits: torch.Tensor, targets: torch.Tensor, form: str = "batch") -> torch.Tensor:
    """Partial BCE over the known entries: logits (B, C), targets (B, C) in [-1, 1], 0 = unknown.

    A blended soft target y in (0, 1) (IPRB/PPRB, eq. 7 and 11) is a soft positive,
    -[y log s + (1-y) log(1-s)], as in the published code. `form`: see the module docstring.
    A batch with no known entry gives 0 (with a graph, so backward still works)."""
    t = targets.to(logits.dtype)
    pos, neg = t > 0, t < 0
    # BCE(x, y) = softplus(x) - x*y for y > 0;  BCE(-x, -y) = softplus(-x) - x*y for y < 0
    loss = torch.where(pos, F.softplus(logits) - logits * t, torch.where(neg, F.softplus(-logits) - logits * t, 0.0))
    known = pos | neg
    if not known.any():
        return logits.sum() * 0
    if form == "batch":
        return loss.sum() / known.sum()
    if form == "per-image":
        per_image = known.sum(dim=1)
        has = per_image > 0
        return (loss.sum(dim=1)[has] / per_image[has]).mean()
    raise ValueError(f"partial_bce form {form!r}: use one of {BCE_FORMS}")


def _pair_index(b: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The unordered pairs n < m of a batch of b, in (n, m) row-major order."""
    n, m = torch.triu_indices(b, b, offset=1, device=device)
    return n, m


def _subsample(terms: torch.Tensor, p: int, generator: torch.Generator | None) -> torch.Tensor:
    """2p terms drawn at random (without replacement) plus the p largest, as the authors keep them."""
    if p == 0 or terms.numel() == 0:
        return terms
    pick = torch.randperm(terms.numel(), generator=generator)[: 2 * p].to(terms.device)
    hardest = torch.topk(terms, min(p, terms.numel())).values
    return torch.cat([terms[pick], hardest])


def contrastive_terms(feats: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The published form's raw terms over unordered pairs n < m and classes, known labels only:
    pos-pos 1 - cos, pos-neg 1 + cos, neg-neg 1 + cos (each a 1-D tensor, pair-major order)."""
    n, m = _pair_index(feats.shape[0], feats.device)
    unit = F.normalize(feats.float(), dim=-1, eps=1e-9)
    cos = torch.einsum("ncd,mcd->nmc", unit, unit)[n, m]  # (pairs, C), without materialising (pairs, C, D)
    yn, ym = labels[n], labels[m]
    pp = (yn == 1) & (ym == 1)
    pn = ((yn == 1) & (ym == -1)) | ((yn == -1) & (ym == 1))
    nn_ = (yn == -1) & (ym == -1)
    return {"pos_pos": (1 - cos)[pp], "pos_neg": (1 + cos)[pn], "neg_neg": (1 + cos)[nn_]}


def contrastive_published(feats: torch.Tensor, labels: torch.Tensor,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """The authors' contrastive loss (the default): feats (B, C, D), labels (B, C) -> scalar.

    With P > 0 positive-positive terms, keep of the pos-neg terms 2P random + the P largest, and
    the same of the neg-neg terms; with P = 0 keep all. The loss is the mean of the kept terms
    (0 when there is none). The random draw uses `generator`, so a resumed run draws the same."""
    t = contrastive_terms(feats, labels)
    p = t["pos_pos"].numel()
    kept = torch.cat([t["pos_pos"], _subsample(t["pos_neg"], p, generator), _subsample(t["neg_neg"], p, generator)])
    if kept.numel() == 0:
        return feats.sum() * 0
    return kept.mean()


def contrastive_literal(feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 3-4 as written: sum over ordered pairs n != m and classes of 1 - cos if both are known
    positives, else 1 + cos (unknown labels count as "otherwise"). feats (B, C, D), labels (B, C).
    Pairs n = m are left out (cos = 1 gives a constant 0 or 2)."""
    f = F.normalize(feats.float(), dim=-1)
    cos = torch.einsum("ncd,mcd->cnm", f, f)  # (C, B, B)
    pos = (labels == 1).float()
    both = torch.einsum("nc,mc->cnm", pos, pos)
    off = 1 - torch.eye(f.shape[0], device=f.device)
    per = torch.where(both > 0, 1 - cos, 1 + cos) * off
    return per.sum()


def contrastive_weight(weight: float, epoch: int, progress: float, form: str) -> float:
    """lambda of eq. 16 for this step; the published form ramps it in linearly over the first
    epoch (`progress` = batches done / batches per epoch), as the authors' training loop does."""
    if form == "published" and epoch == 0:
        return weight * min(max(progress, 0.0), 1.0)
    return weight
