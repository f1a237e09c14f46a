"""The "CL" row of Table 1: Curriculum Labeling (T. Durand, N. Mehrasa, G. Mori, "Learning a deep
ConvNet for multi-label classification with partial labels", CVPR 2019, arXiv 1902.09720), the
paper whose loss alone is also the "Partial BCE" row.

    image -> backbone -> global average pool -> dropout -> linear -> logits (B, C)
    loss: their normalised partial BCE (eq. 2-3, `losses.normalised_partial_bce`) on the known labels
          and the pseudo-labels, g(p) = alpha p^gamma + beta with g(1) = 1, g(0.1) = 5, gamma = 1
    curriculum (their Algorithm 1, "train, then label the easy unknown labels and fine-tune, repeat"):
          from epoch `label_start`, every `label_every` epochs, every training image is scored once and
          the unknown labels the chosen strategy finds easy become pseudo-labels for good.

Strategies (Sec. 3.3 of the paper): `bayes` (low Bayesian uncertainty, estimated by Monte-Carlo
dropout on the classifier; the paper's best, our default), `threshold` (|score| above a threshold),
`proportion` (a fixed fraction of the most confident unknown labels), `positive` (high scores as
positives only). Their code was never released: the schedule, the uncertainty measure, the
dropout and every threshold here are our choices (README, choice table).

A pseudo-label never replaces a known label, and an unknown label contributes nothing to the loss
until it is pseudo-labelled. The pseudo-labels are per image (key) and live in the checkpoint (the
model's extra state), and every random draw (training dropout, MC samples) comes from a generator
seeded by the run's seed and the step or epoch, so a resumed run continues exactly.
"""

from __future__ import annotations

import math
import sys
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import dist as D
from ..device import to_device
from ..losses import normalised_partial_bce
from .base import PartialLabelModel

STRATEGIES = ("bayes", "threshold", "proportion", "positive", "none")


def binary_entropy_bits(p: torch.Tensor) -> torch.Tensor:
    """H(p) = -p log2 p - (1-p) log2(1-p), elementwise, in bits (0 at p = 0 or 1, 1 at p = 0.5)."""
    p = p.clamp(0.0, 1.0)
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)) / math.log(2)


def choose_pseudo_labels(logits: torch.Tensor, unknown: torch.Tensor, strategy: str, *,
                         score_threshold: float = 2.0, label_fraction: float = 0.1, max_uncertainty: float = 0.3,
                         mc_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Which unknown entries become pseudo-labels, and as what: (N, C) int8 in {-1, 0, 1}, 0 = left unknown.

    logits (N, C): the classifier's scores x (dropout off); unknown (N, C) bool: the entries that may be
    labelled (neither known nor already pseudo-labelled: nothing else is ever chosen).
    - threshold: |x| > score_threshold, labelled sign(x) (paper: "score threshold strategy").
    - positive: x > score_threshold, labelled +1 only (paper: "predict only positive labels").
    - proportion: the round(label_fraction * #unknown) unknown entries of largest |x|, labelled sign(x);
      ties go to the earlier entry in row-major order (paper: "score proportion strategy").
    - bayes: mc_probs (N, C), the mean sigmoid over the MC-dropout samples; an entry whose entropy
      H(mean) in bits is below max_uncertainty is labelled +1 if mean > 0.5, -1 if below (paper: "Bayesian
      uncertainty strategy", after Kendall and Gal; the exact measure is ours).
    Raises ValueError for an unknown strategy or bayes without mc_probs."""
    out = torch.zeros(logits.shape, dtype=torch.int8)
    z, unknown = logits.detach().float().cpu(), unknown.cpu().bool()
    sign = torch.where(z > 0, 1, -1).to(torch.int8)
    if strategy == "none":
        return out
    if strategy == "threshold":
        chosen = unknown & (z.abs() > score_threshold)
    elif strategy == "positive":
        chosen = unknown & (z > score_threshold)
    elif strategy == "proportion":
        flat = torch.where(unknown, z.abs(), torch.full_like(z, -1.0)).flatten()
        k = min(int(math.floor(label_fraction * int(unknown.sum()) + 0.5)), int(unknown.sum()))
        chosen = torch.zeros(flat.shape, dtype=torch.bool)
        if k > 0:
            order = torch.sort(-flat, stable=True).indices[:k]  # stable: ties keep row-major order
            chosen[order] = True
        chosen = chosen.view(z.shape) & unknown
    elif strategy == "bayes":
        if mc_probs is None:
            raise ValueError("choose_pseudo_labels: the bayes strategy needs mc_probs (the MC-dropout mean)")
        p = mc_probs.detach().float().cpu()
        chosen = unknown & (binary_entropy_bits(p) < max_uncertainty) & (p != 0.5)
        sign = torch.where(p > 0.5, 1, -1).to(torch.int8)
    else:
        raise ValueError(f"curriculum strategy {strategy!r}: use one of {STRATEGIES}")
    return torch.where(chosen, sign, out)


class PseudoLabels(nn.Module):
    """The curriculum's pseudo-labels: one int8 row in {-1, 0, 1} per image key that has any (0: none),
    kept in the checkpoint (extra state: the keys and an (N, C) int8 tensor; on COCO at most
    82,783 x 80 bytes, where a dict per entry would take hundreds of megabytes)."""

    def __init__(self):
        super().__init__()
        self.keys: list[str] = []
        self.index: dict[str, int] = {}
        self.labels = torch.zeros((0, 0), dtype=torch.int8)

    def apply(self, keys: list[str], partial: torch.Tensor) -> torch.Tensor:
        """The training targets (B, C): the known labels, and the pseudo-labels where the label is unknown."""
        rows = torch.tensor([self.index.get(k, -1) for k in keys], dtype=torch.long)
        pseudo = torch.zeros(tuple(partial.shape), dtype=torch.int8)
        have = rows >= 0
        if have.any():
            pseudo[have] = self.labels[rows[have]]
        pseudo = pseudo.to(device=partial.device, dtype=partial.dtype)
        return torch.where(partial == 0, pseudo, partial)  # a known label is never replaced

    def record(self, keys: list[str], labels: torch.Tensor) -> int:
        """Add the non-zero entries of `labels` (N, C) as pseudo-labels of `keys`; returns how many."""
        labels = labels.to(torch.int8).cpu()
        if self.labels.numel() == 0:
            self.labels = torch.zeros((0, labels.shape[1]), dtype=torch.int8)
        rows = []
        for i in labels.any(dim=1).nonzero().flatten().tolist():
            if keys[i] not in self.index:
                self.index[keys[i]] = len(self.keys)
                self.keys.append(keys[i])
            rows.append((i, self.index[keys[i]]))
        if len(self.keys) > len(self.labels):
            grow = torch.zeros((len(self.keys) - len(self.labels), labels.shape[1]), dtype=torch.int8)
            self.labels = torch.cat([self.labels, grow])
        if not rows:
            return 0
        src, dst = (torch.tensor(x, dtype=torch.long) for x in zip(*rows))
        new = labels[src]
        self.labels[dst] = torch.where(new != 0, new, self.labels[dst])
        return int((new != 0).sum())

    def count(self) -> tuple[int, int]:
        """(pseudo-labels, of which positive)."""
        return int((self.labels != 0).sum()), int((self.labels > 0).sum())

    def as_dict(self) -> dict[str, dict[int, int]]:
        """{key: {class: label}}, for reading and tests."""
        return {k: {int(j): int(self.labels[i, j]) for j in self.labels[i].nonzero().flatten().tolist()}
                for i, k in enumerate(self.keys)}

    def get_extra_state(self):
        return {"keys": list(self.keys), "labels": self.labels.clone()}

    def set_extra_state(self, state) -> None:
        keys, labels = list(state["keys"]), torch.as_tensor(state["labels"]).to(torch.int8)
        if labels.dim() != 2 or len(keys) != len(labels):
            raise ValueError(f"pseudo-labels: {len(keys)} keys for labels of shape {tuple(labels.shape)}")
        self.keys, self.labels = [str(k) for k in keys], labels.clone()
        self.index = {k: i for i, k in enumerate(self.keys)}


class CurriculumLabelingModel(PartialLabelModel):
    """Backbone -> global average pool -> dropout -> linear, trained with the normalised partial BCE
    on known + pseudo labels; `before_epoch` runs the curriculum. See the module docstring."""

    wants_keys = True  # the engine passes the batch's keys: pseudo-labels are per image

    def __init__(self, backbone: nn.Module, num_classes: int, frozen: list[nn.Module], opts, seed: int = 0):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.out_channels, num_classes)
        self.pseudo = PseudoLabels()
        self._frozen, self.opts, self.seed = frozen, opts, seed

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen:  # frozen layers keep their BatchNorm statistics
            m.eval()
        return self

    def _generator(self, index: int, stream: int) -> torch.Generator:
        """A CPU generator seeded by the run's seed and a step (stream 0) or an epoch (stream 1)."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + index) * 2 + stream)

    def _dropout_mask(self, shape, generator: torch.Generator, device) -> torch.Tensor:
        p = float(self.opts.head_dropout)
        keep = (torch.rand(shape, generator=generator) >= p).float() / max(1.0 - p, 1e-12)
        return keep.to(device)

    def forward(self, x: torch.Tensor, partial: torch.Tensor | None = None, epoch: int = 0, step: int = 0,
                progress: float = 1.0, keys: list[str] | None = None):
        """(B, 3, H, W) -> logits (B, C); with `partial` (B, C) in {-1, 0, 1}: (loss, logs). Dropout
        (training only) draws its mask from the step's generator, so a resumed run draws the same."""
        f = self.backbone(x).mean(dim=(2, 3))
        if partial is None:
            return self.fc(f)
        if self.training and self.opts.head_dropout > 0:
            f = f * self._dropout_mask(f.shape, self._generator(step, 0), f.device).to(f.dtype)
        logits = self.fc(f).float()
        targets = self.pseudo.apply(keys, partial) if keys is not None else partial
        loss = normalised_partial_bce(logits, targets, self.opts.norm_gamma, self.opts.g_at_tenth)
        return loss, {"pseudo_labels": float(self.pseudo.count()[0])}

    # -- the curriculum ---------------------------------------------------------------------------------------
    def labels_at(self, epoch: int) -> bool:
        o = self.opts
        return str(o.curriculum) != "none" and epoch >= o.label_start and (epoch - o.label_start) % o.label_every == 0

    def before_epoch(self, epoch: int, make_loader: Callable, device: torch.device, info=None) -> None:
        """At the labelling epochs of the schedule, score every training image once and add pseudo-labels."""
        if self.labels_at(epoch):
            self.label(make_loader(), device, info, epoch)

    @torch.no_grad()
    def score(self, loader, device: torch.device, epoch: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None]:
        """(keys, partial (N, C), logits (N, C), MC-dropout mean probabilities (N, C) or None) of this
        rank's share of the training images, BatchNorm in eval mode."""
        bayes = str(self.opts.curriculum) == "bayes"
        gen = self._generator(epoch, 1)
        keys, partial, logits, probs = [], [], [], []
        for batch in loader:
            f = self.backbone(to_device(batch["images"], device)).mean(dim=(2, 3)).float()
            logits.append(F.linear(f, self.fc.weight.float(), self.fc.bias.float()).cpu())
            if bayes:
                acc = torch.zeros_like(logits[-1])
                for _ in range(self.opts.mc_samples):
                    masked = f * self._dropout_mask(f.shape, gen, f.device)
                    acc += torch.sigmoid(F.linear(masked, self.fc.weight.float(), self.fc.bias.float())).cpu()
                probs.append(acc / self.opts.mc_samples)
            partial.append(batch["partial"].cpu())
            keys += list(batch["keys"])
        c = self.fc.out_features
        cat = (lambda xs: torch.cat(xs).numpy()) if keys else (lambda xs: np.zeros((0, c), np.float32))
        return keys, cat(partial), cat(logits), (cat(probs) if bayes else None)

    def label(self, loader, device: torch.device, info=None, epoch: int = 0) -> int:
        """One labelling round over every training image (all ranks' shares gathered, in key order, so
        every rank chooses the same); returns the number of pseudo-labels added."""
        was_training = self.training
        self.eval()
        try:
            part = self.score(loader, device, epoch)
        finally:
            self.train(was_training)
        parts = D.gather_objects(part, info) if info is not None else [part]
        keys = [k for p in parts for k in p[0]]
        order = np.asarray(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
        keys = [keys[i] for i in order]
        c = self.fc.out_features

        def stack(i: int) -> torch.Tensor:
            rows = [p[i] for p in parts if p[i] is not None and len(p[i])]
            return torch.from_numpy(np.concatenate(rows)[order] if rows else np.zeros((0, c), np.float32))

        partial, logits = stack(1), stack(2)
        mc = stack(3) if str(self.opts.curriculum) == "bayes" else None
        unknown = self.pseudo.apply(keys, partial.to(torch.int8)) == 0
        o = self.opts
        chosen = choose_pseudo_labels(logits, unknown, str(o.curriculum), score_threshold=o.score_threshold,
                                      label_fraction=o.label_fraction, max_uncertainty=o.max_uncertainty,
                                      mc_probs=mc)
        added = self.pseudo.record(keys, chosen)
        if info is None or info.main:
            total, positive = self.pseudo.count()
            n_unknown = int(unknown.sum())
            print(f"cl: epoch {epoch + 1}: {added:,} of {n_unknown:,} unknown labels pseudo-labelled "
                  f"({int((chosen > 0).sum()):,} positive), {total:,} pseudo-labels in all ({positive:,} positive)",
                  file=sys.stderr)
        return added


def build(cfg, spec, backbone: nn.Module, frozen: list[nn.Module], state=None) -> CurriculumLabelingModel:
    """The CL model of `cfg` (its options: cfg.cl) for the data of `spec`; a checkpoint's `state` brings
    the pseudo-labels with it (extra state), loaded by the caller."""
    return CurriculumLabelingModel(backbone, spec.num_classes, frozen, cfg.cl, seed=cfg.seed)
