"""Losses of the paper: partial BCE (eq. 14-15) and the category-wise contrastive loss (eq. 3-4);
and the loss baselines labs compare against: ASL and Large Loss Matters (LL-R, LL-Ct, LL-Cp).

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

import math

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


# ---- loss baselines on the partial-BCE architecture (backbone -> pool -> linear) ----------------------

def asymmetric_loss(logits: torch.Tensor, targets: torch.Tensor, gamma_pos: float = 0.0, gamma_neg: float = 4.0,
                    clip: float = 0.05, eps: float = 1e-8) -> torch.Tensor:
    """ASL (Ridnik et al., ICCV 2021) over the known entries, as its authors' AsymmetricLoss computes
    it: positives -(1-p)^g+ log p; negatives -p_m^g- log(1-p_m) with the shifted probability
    p_m = max(p - clip, 0); the focusing weights carry no gradient; the SUM over known entries."""
    t = targets.to(logits.dtype)
    pos, neg = t > 0, t < 0
    p = torch.sigmoid(logits)
    q = (1 - p + clip).clamp(max=1) if clip > 0 else 1 - p  # 1 - p_m
    log_pos, log_neg = torch.log(p.clamp(min=eps)), torch.log(q.clamp(min=eps))
    with torch.no_grad():
        w_pos = (1 - p).pow(gamma_pos)
        w_neg = (1 - q).pow(gamma_neg)
    loss = torch.where(pos, -w_pos * log_pos, torch.where(neg, -w_neg * log_neg, 0.0))
    return loss.sum()


LL_VARIANTS = ("r", "ct", "cp")


def large_loss(logits: torch.Tensor, targets: torch.Tensor, epoch: int, delta_rel: float = 0.002,
               variant: str = "r") -> tuple[torch.Tensor, torch.Tensor]:
    """Large Loss Matters (Kim et al., CVPR 2022), as its authors' compute_batch_loss: every unknown
    label is taken as a negative (BCE), and from the second epoch on the k = ceil(B*C*rate) largest
    losses among the unknown entries are rejected (LL-R: weight 0) or corrected (LL-Ct, LL-Cp: the
    BCE of a positive instead); rate = epoch * delta_rel (epoch counted from 0), for LL-Cp delta_rel
    itself. The loss is the mean over all B*C entries. Known negatives are never candidates (the
    authors' single-positive setting has none). Returns (loss, the (B, C) mask of corrected or
    rejected entries: LL-Cp makes those positive for good)."""
    t = targets
    y = (t > 0).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    b, c = logits.shape
    rate = delta_rel if variant == "cp" else min(1.0, epoch * delta_rel)
    chosen = torch.zeros_like(t, dtype=torch.bool)
    if epoch > 0 and rate > 0:
        unknown = t == 0
        u = torch.where(unknown, loss.detach(), torch.full_like(loss, -1.0))
        k = min(math.ceil(b * c * rate), int(unknown.sum()))
        if k > 0:
            threshold = torch.topk(u.flatten(), k).values[-1]
            chosen = unknown & (u >= threshold)
    if variant == "r":
        loss = torch.where(chosen, torch.zeros_like(loss), loss)
    elif variant in ("ct", "cp"):
        loss = torch.where(chosen, F.binary_cross_entropy_with_logits(logits, torch.ones_like(y), reduction="none"), loss)
    else:
        raise ValueError(f"large_loss variant {variant!r}: use one of {LL_VARIANTS}")
    return loss.mean(), chosen


# ---- Curriculum Labeling's normalised partial BCE (Durand, Mehrasa, Mori, CVPR 2019, eq. 2-3) ------------------

def normalisation_coefficients(gamma: float = 1.0, g_at_tenth: float = 5.0) -> tuple[float, float]:
    """(alpha, beta) of g(p) = alpha p^gamma + beta from its two constraints: g(1) = 1 (the loss is
    plain BCE when every label is known) and g(0.1) = `g_at_tenth`. Durand et al. fix gamma = 1 and
    g(0.1) = 5, so alpha = -40/9 and beta = 49/9 (public re-implementations round to -4.45, 5.45).
    Raises ValueError for gamma = 0 (g would be constant: the two constraints cannot both hold)."""
    if gamma == 0:
        raise ValueError("normalisation gamma 0: g(p) = alpha + beta is constant; use a non-zero gamma")
    alpha = (g_at_tenth - 1.0) / (0.1 ** gamma - 1.0)
    return alpha, 1.0 - alpha


def label_proportion_weight(proportion: torch.Tensor, gamma: float = 1.0, g_at_tenth: float = 5.0) -> torch.Tensor:
    """g(p) = alpha p^gamma + beta (Durand et al. eq. 3) of each image's known-label proportion p in [0, 1]
    (B,) -> (B,). An image with p = 0 has no loss term to weight: its g is returned as 0 (with gamma < 0
    g(0) would be infinite)."""
    alpha, beta = normalisation_coefficients(gamma, g_at_tenth)
    p = proportion.clamp(min=0.0, max=1.0)
    has = p > 0
    safe = torch.where(has, p, torch.ones_like(p))
    return torch.where(has, alpha * safe.pow(gamma) + beta, torch.zeros_like(p))


def normalised_partial_bce(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 1.0,
                           g_at_tenth: float = 5.0) -> torch.Tensor:
    """Durand et al.'s partial-BCE (eq. 2): l(x, y) = g(p_y) / C * sum over the KNOWN labels of the BCE
    terms, p_y = the image's proportion of known labels, then the mean over the B images of the batch.

    logits (B, C); targets (B, C) in {-1, 0, 1} (0 = unknown: no term, no gradient). Unlike mlrpl's
    `partial_bce` (one mean over the batch's known labels), an image with few known labels is
    weighted up by g (g(0.1) = 5 by default) rather than averaged with the others."""
    t = targets.to(logits.dtype)
    pos, neg = t > 0, t < 0
    known = pos | neg
    terms = torch.where(pos, F.softplus(-logits), torch.where(neg, F.softplus(logits), torch.zeros_like(logits)))
    c = logits.shape[1]
    g = label_proportion_weight(known.sum(dim=1).to(logits.dtype) / c, gamma, g_at_tenth)
    return (g * terms.sum(dim=1) / c).mean()
