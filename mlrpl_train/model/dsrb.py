"""DSRB (Section 4 of the paper), in the cheap form, and SSGRL (DSRB without blending).

    image -> backbone -> 2x2 avg pool -> 1x1 conv+BN to D           f^n          (4.1)
          -> CSRL: semantic decoupling (or attention) -> f_c = sum_hw a_c x    (eq. 1-2)
          -> GGNN (3 steps, co-occurrence of known positives) -> tanh(fc([h_c, f_c])) -> per-class
             classifier -> s^n                                                 (eq. 5)
    training, from `blend_start`: IPRB (eq. 6-9) and PPRB (eq. 10-13) on the (B, C, D) vectors,
    the same head on the blended vectors, partial BCE on the three outputs (eq. 14-15)
    + lambda * contrastive (eq. 3-4, 16). Inference: the first line only.

Where the paper is silent or its literal form contradicts its text, the defaults follow the
authors' code (HCP-MLR-PL): the loss forms in `losses.py`, an attention width of 512, a graph
whose rows are divided by their diagonal, prototypes from training-augmented images, and the
own cell of a class at the peak of the channel sum of its weighted map.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mlrpl_data.errors import MlrplError

from ..losses import (CONTRASTIVE_FORMS, contrastive_literal, contrastive_published, contrastive_weight,
                      partial_bce)
from . import naive
from .blending import (accumulate_prototypes, choose_pprb, iprb_blend, iprb_mask, peak_cells, pprb_blend,
                       pprb_mask)


@dataclass
class DsrbOptions:
    csrl: str = "sd"  # sd: semantic decoupling; sa: semantic attention (Table 2 "w/ SA")
    iprb: bool = True
    pprb: bool = True
    learn_alpha: bool = True  # False: the "fixed alpha" row
    learn_beta: bool = True
    blend: str = "map"  # map: location-sensitive prototypes; vector: one prototype per class ("w/ RV")
    grid_k: int = 1  # prototypes on a 2^K x 2^K grid
    blend_start: int = 5
    prototype_every: int = 5
    contrastive_weight: float = 0.05  # lambda of eq. 16
    contrastive: str = "published"  # published: the authors' loss (losses.py); literal: eq. 3-4 summed
    embeddings: str | None = None
    feat_dim: int = 1024
    attn_dim: int = 512  # the authors' intermediaDim for DSRB (model/DSRB.py)
    ggnn_steps: int = 3
    pool2x2: bool = True
    form: str = "cheap"  # cheap | naive (the feature-map oracle, for tests and benchmarks)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DsrbOptions":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---- CSRL (eq. 1-2) -----------------------------------------------------------------------------------

class SemanticDecoupling(nn.Module):
    """a_c(hw) = softmax_hw( w^T tanh(U x_hw * V e_c) ); f_c = sum_hw a_c(hw) x_hw (SSGRL's SD).

    The published code applies two linear layers (D->D, then D->1) after the tanh with nothing in
    between; their product is the single vector w here, the same function, without a
    (B, C, HW, D) x (D, D) product. The tanh tensor is computed in class chunks and recomputed in
    the backward pass, so its memory stays (B, chunk, HW, A)."""

    def __init__(self, feat_dim: int, embed_dim: int, attn_dim: int, chunk: int = 16):
        super().__init__()
        self.u = nn.Linear(feat_dim, attn_dim, bias=False)
        self.v = nn.Linear(embed_dim, attn_dim, bias=False)
        self.w = nn.Linear(attn_dim, 1)
        self.chunk = chunk

    def _scores(self, ux: torch.Tensor, ve: torch.Tensor) -> torch.Tensor:
        # (B, HW, A) x (c, A) -> (B, c, HW)
        return self.w(torch.tanh(ux.unsqueeze(1) * ve[None, :, None, :])).squeeze(-1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (B, HW, D), emb (C, E) -> attention (B, C, HW)."""
        ux, ve = self.u(x), self.v(emb)
        parts = []
        for s in range(0, ve.shape[0], self.chunk):
            ve_c = ve[s:s + self.chunk]
            if torch.is_grad_enabled():
                parts.append(checkpoint(self._scores, ux, ve_c, use_reentrant=False))
            else:
                parts.append(self._scores(ux, ve_c))
        return torch.softmax(torch.cat(parts, dim=1), dim=-1)


class SemanticAttention(nn.Module):
    """Class activation maps (a 1x1 classifier over positions) -> softmax_hw -> attention (B, C, HW)."""

    def __init__(self, feat_dim: int, num_classes: int):
        super().__init__()
        self.cam = nn.Linear(feat_dim, num_classes)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return torch.softmax(self.cam(x).transpose(1, 2), dim=-1)


# ---- GGNN and the classifier (eq. 5) ------------------------------------------------------------------

class GGNN(nn.Module):
    """Gated graph network over classes; messages along the co-occurrence graph in both directions."""

    def __init__(self, dim: int, adjacency: torch.Tensor, steps: int = 3):
        super().__init__()
        self.register_buffer("adj_in", adjacency.clone())
        self.register_buffer("adj_out", adjacency.t().contiguous())
        self.steps = steps
        self.w_a = nn.Linear(2 * dim, 3 * dim)  # z, r, candidate from the messages
        self.u_zr = nn.Linear(dim, 2 * dim, bias=False)
        self.u_h = nn.Linear(dim, dim, bias=False)

    def first_linear(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The part of step 1 that is linear in h: (W_a [A_in h, A_out h] without bias, U_zr h)."""
        a = torch.cat([self.adj_in @ h, self.adj_out @ h], dim=-1)
        return F.linear(a, self.w_a.weight), self.u_zr(h)

    def first_linear_rows(self, delta: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """first_linear(delta) for a delta that is zero outside `rows` (B, C): the projections run on
        those rows only, then the C x C mixing (projecting features and mixing classes commute)."""
        b, c, d = delta.shape
        idx = rows.nonzero(as_tuple=True)
        dr = delta[idx]  # (k, D)
        w_in, w_out = self.w_a.weight[:, :d], self.w_a.weight[:, d:]
        zeros3 = delta.new_zeros(b, c, 3 * d)
        wa = self.adj_in @ zeros3.index_put(idx, dr @ w_in.t()) + self.adj_out @ zeros3.index_put(idx, dr @ w_out.t())
        return wa, delta.new_zeros(b, c, 2 * d).index_put(idx, self.u_zr(dr))

    def forward(self, h: torch.Tensor, first: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """h (B, C, D) -> (B, C, D); `first` = first_linear(h) when the caller already has it."""
        for step in range(self.steps):
            if step == 0 and first is not None:
                wa, uzr = first[0] + self.w_a.bias, first[1]
            else:
                wa = self.w_a(torch.cat([self.adj_in @ h, self.adj_out @ h], dim=-1))
                uzr = self.u_zr(h)
            wa_z, wa_r, wa_h = wa.chunk(3, dim=-1)
            uz, ur = uzr.chunk(2, dim=-1)
            z, r = torch.sigmoid(wa_z + uz), torch.sigmoid(wa_r + ur)
            cand = torch.tanh(wa_h + self.u_h(r * h))
            h = (1 - z) * h + z * cand
        return h


class Head(nn.Module):
    """GGNN -> o_c = tanh(fc([h_c, f_c])) -> per-class linear classifier: (B, C, D) -> logits (B, C).

    A blended input f + delta differs from f in a few (image, class) rows only (IPRB: the blended
    unknown labels; PPRB: one class per image). Everything linear in the input before the first
    nonlinearity (GGNN step 1's projections, fc's f half) is then the original's plus delta's
    projection on those rows: `forward_delta` reuses the original pass's terms. Same function,
    about a fifth less work per step for the two blended passes."""

    def __init__(self, dim: int, num_classes: int, adjacency: torch.Tensor, steps: int):
        super().__init__()
        self.dim = dim
        self.ggnn = GGNN(dim, adjacency, steps)
        self.fc = nn.Linear(2 * dim, dim)
        self.cls_w = nn.Parameter(torch.empty(num_classes, dim))
        self.cls_b = nn.Parameter(torch.zeros(num_classes))
        nn.init.uniform_(self.cls_w, -1 / math.sqrt(dim), 1 / math.sqrt(dim))

    def _fc_f(self, f: torch.Tensor) -> torch.Tensor:
        return F.linear(f, self.fc.weight[:, self.dim:])

    def _run(self, f, first, fc_f) -> torch.Tensor:
        h = self.ggnn(f, first)
        o = torch.tanh(F.linear(h, self.fc.weight[:, :self.dim], self.fc.bias) + fc_f)
        return (o * self.cls_w).sum(-1) + self.cls_b

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self._run(f, None, self._fc_f(f))

    def forward_cached(self, f: torch.Tensor):
        """forward(f), and the terms a blended pass can reuse."""
        cache = (self.ggnn.first_linear(f), self._fc_f(f))
        return self._run(f, cache[0], cache[1]), cache

    def forward_delta(self, f_new: torch.Tensor, delta: torch.Tensor, rows: torch.Tensor, cache) -> torch.Tensor:
        """forward(f_new) where f_new = f + delta, delta zero outside `rows` (B, C), cache from f."""
        (wa0, uzr0), fc0 = cache
        wa_d, uzr_d = self.ggnn.first_linear_rows(delta, rows)
        idx = rows.nonzero(as_tuple=True)
        fc_d = delta.new_zeros(fc0.shape).index_put(idx, self._fc_f(delta[idx]))
        return self._run(f_new, (wa0 + wa_d, uzr0 + uzr_d), fc0 + fc_d)


def cooccurrence(partial: np.ndarray | None, num_classes: int) -> torch.Tensor:
    """A[i, j] = P(j known positive | i known positive) from the training partial labels: the
    co-occurrence counts with each row divided by its diagonal, so A[i, i] = 1, as in the authors'
    code. A class with no known positive has a zero row (their code gives NaN there)."""
    if partial is None or len(partial) == 0:
        return torch.zeros(num_classes, num_classes)
    pos = (np.asarray(partial) == 1).astype(np.float64)
    co = pos.T @ pos
    diag = np.diag(co).copy()
    a = np.divide(co, diag[:, None], out=np.zeros_like(co), where=diag[:, None] > 0)
    return torch.from_numpy(a).float()


# ---- DSRB ---------------------------------------------------------------------------------------------------

class DSRB(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, embeddings: torch.Tensor | None,
                 adjacency: torch.Tensor, opts: DsrbOptions, frozen: list[nn.Module], seed: int = 0,
                 bce: str = "batch"):
        super().__init__()
        d = opts.feat_dim
        self.opts, self.seed, self._frozen, self.bce = opts, seed, frozen, bce
        self.backbone = backbone
        self.pool = nn.AvgPool2d(2, 2) if opts.pool2x2 else nn.Identity()
        self.reduce = nn.Sequential(nn.Conv2d(backbone.out_channels, d, 1, bias=False), nn.BatchNorm2d(d))
        if embeddings is None:  # learned label embeddings (no offline source was given)
            self.embeddings = nn.Parameter(torch.randn(num_classes, 300) * 0.1)
        else:
            self.register_buffer("embeddings", embeddings.float())
        if opts.csrl == "sd":
            self.csrl = SemanticDecoupling(d, self.embeddings.shape[1], opts.attn_dim)
        elif opts.csrl == "sa":
            self.csrl = SemanticAttention(d, num_classes)
        else:
            raise MlrplError(f"--csrl {opts.csrl!r}: use sd or sa")
        if opts.blend not in ("map", "vector"):
            raise MlrplError(f"--blend {opts.blend!r}: use map or vector")
        if opts.contrastive not in CONTRASTIVE_FORMS:
            raise MlrplError(f"--contrastive {opts.contrastive!r}: use one of {', '.join(CONTRASTIVE_FORMS)}")
        self.head = Head(d, num_classes, adjacency, opts.ggnn_steps)
        # eq. 8 and 12: per-class alpha and beta, initialised at 0.5, kept in [0, 1]
        self.alpha = nn.Parameter(torch.full((num_classes,), 0.5), requires_grad=opts.learn_alpha)
        self.beta = nn.Parameter(torch.full((num_classes,), 0.5), requires_grad=opts.learn_beta)
        self.cells = 1 if opts.blend == "vector" else 4 ** opts.grid_k
        self.register_buffer("prototypes", torch.zeros(num_classes, self.cells, d))
        self.register_buffer("proto_counts", torch.zeros(num_classes, self.cells))

    # -- plumbing ----------------------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen:
            m.eval()
        return self

    def after_step(self) -> None:
        with torch.no_grad():
            self.alpha.clamp_(0.0, 1.0)
            self.beta.clamp_(0.0, 1.0)

    def blending(self, epoch: int) -> bool:
        return epoch >= self.opts.blend_start

    # -- eq. 1-2 ---------------------------------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) -> x (B, HW, D), attention (B, C, HW), f (B, C, D), map size."""
        fmap = self.reduce(self.pool(self.backbone(x)))
        b, d, h, w = fmap.shape
        xs = fmap.flatten(2).transpose(1, 2)  # (B, HW, D)
        att = self.csrl(xs, self.embeddings)
        f = att @ xs  # sigma(F_c) = sum_hw a_c(hw) x(hw)
        return xs, att, f, (h, w)

    def peak_map(self, xs: torch.Tensor, att: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The class's weighted map summed over channels, a_c(hw) * sum_d x_d(hw): (B, C, H, W).

        Its peak picks the class's own grid cell, as the authors' code does (the channel sum of
        `featuremapWithCoef`, then the row and column of its maximum)."""
        return (att * xs.sum(dim=-1).unsqueeze(1)).view(att.shape[0], att.shape[1], *hw)

    def step_generator(self, step: int, stream: int) -> torch.Generator:
        """A CPU generator for one training step's random draws (stream 0: PPRB, 1: contrastive
        subsampling), seeded from the run's seed and the global step, so a resumed run draws the same."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 2 + stream)

    # -- forward ----------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, partial: torch.Tensor | None = None, epoch: int = 0, step: int = 0,
                progress: float = 1.0):
        """(B, 3, H, W) -> logits (B, C); with `partial` (B, C): (loss, logs) of eq. 16.

        `progress` (batches done / batches per epoch) ramps the contrastive weight in epoch 0."""
        xs, att, f, hw = self.features(x)
        if partial is None:
            return self.head(f)
        logits, cache = self.head.forward_cached(f)
        y = partial
        bce = self.bce
        loss = partial_bce(logits.float(), y, bce)
        logs = {"loss_cls": float(loss.detach())}
        weight = contrastive_weight(self.opts.contrastive_weight, epoch, progress, self.opts.contrastive)
        if self.opts.contrastive_weight > 0:
            if self.opts.contrastive == "published":
                cst = contrastive_published(f, y, self.step_generator(step, 1))
            else:  # eq. 4 summed over ordered pairs; divided by B like eq. 14's per-image mean
                cst = contrastive_literal(f, y) / y.shape[0]
            loss = loss + weight * cst
            logs["loss_cst"] = float(cst.detach())
        if self.blending(epoch):
            maps = naive.category_maps(att, xs) if self.opts.form == "naive" else None
            if self.opts.iprb:
                if maps is None:
                    f_hat, y_hat = iprb_blend(f, y, self.alpha)
                    s_hat = self.head.forward_delta(f_hat, f_hat - f, iprb_mask(y), cache)
                else:
                    m_hat, y_hat = naive.iprb_blend_maps(maps, y, self.alpha)
                    s_hat = self.head(naive.pool(m_hat))
                l_i = partial_bce(s_hat.float(), y_hat, bce)
                loss = loss + l_i
                logs["loss_iprb"] = float(l_i.detach())
            if self.opts.pprb and bool(self.proto_counts.sum() > 0):
                own = peak_cells(self.peak_map(xs, att, hw).detach(), 0 if self.cells == 1 else self.opts.grid_k)
                cls, cell = choose_pprb(y.cpu(), own.cpu(), (self.proto_counts > 0).cpu(), self.step_generator(step, 0))
                if maps is None:
                    f_tilde, y_tilde = pprb_blend(f, y, self.beta, self.prototypes, cls, cell)
                    s_tilde = self.head.forward_delta(f_tilde, f_tilde - f, pprb_mask(cls, y.shape[1], y.device), cache)
                else:
                    proto_maps = self._naive_proto_maps(maps)
                    m_tilde, y_tilde = naive.pprb_blend_maps(maps, y, self.beta, proto_maps, cls, cell)
                    s_tilde = self.head(naive.pool(m_tilde))
                l_p = partial_bce(s_tilde.float(), y_tilde, bce)
                loss = loss + l_p
                logs["loss_pprb"] = float(l_p.detach())
        return loss, logs

    def _naive_proto_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """The naive form keeps prototype MAPS (C, cells, HW, D), made by compute_prototypes."""
        if getattr(self, "proto_maps", None) is None:
            raise MlrplError("the naive form has no prototype maps yet: run compute_prototypes first")
        return self.proto_maps.to(maps.device)

    # -- prototypes (eq. 10-13) -----------------------------------------------------------------------------------
    def before_epoch(self, epoch: int, make_loader: Callable, device: torch.device, info) -> None:
        """Recompute the prototypes at blend_start and every prototype_every epochs after it."""
        o = self.opts
        if not (o.pprb and epoch >= o.blend_start and (epoch - o.blend_start) % o.prototype_every == 0):
            return
        self.compute_prototypes(make_loader(), device, info)

    @torch.no_grad()
    def compute_prototypes(self, loader, device: torch.device, info=None) -> None:
        """Mean representation of ALL known positives per (class, cell) (the published code used
        only the first 100 per cell). A class with no known positive has no prototype and is
        never chosen by PPRB; an empty cell is never chosen either."""
        from ..loader import to_device

        was_training = self.training
        self.eval()
        sums = torch.zeros_like(self.prototypes, dtype=torch.float64, device="cpu")
        counts = torch.zeros_like(self.proto_counts, dtype=torch.float64, device="cpu")
        map_sums = None
        k = 0 if self.cells == 1 else self.opts.grid_k
        for batch in loader:
            xs, att, f, hw = self.features(to_device(batch["images"], device))
            own = peak_cells(self.peak_map(xs, att, hw), k).cpu()
            accumulate_prototypes(f.float().cpu(), batch["partial"], own, self.cells, sums, counts)
            if self.opts.form == "naive":  # the oracle keeps whole maps: (C, cells, HW, D)
                maps = naive.category_maps(att, xs).float().cpu()
                if map_sums is None:
                    map_sums = torch.zeros(sums.shape[0], self.cells, maps.shape[2], maps.shape[3])
                accumulate_prototypes(maps.flatten(2), batch["partial"], own, self.cells,
                                      map_sums.view(sums.shape[0], self.cells, -1), torch.zeros_like(counts))
        if info is not None and info.world > 1:
            import torch.distributed as dist

            s, c = sums.to(device), counts.to(device)
            dist.all_reduce(s)
            dist.all_reduce(c)
            sums, counts = s.cpu(), c.cpu()
        self.prototypes.copy_((sums / counts.clamp(min=1).unsqueeze(-1)).to(self.prototypes.dtype))
        self.proto_counts.copy_(counts.to(self.proto_counts.dtype))
        if map_sums is not None:
            self.proto_maps = map_sums / counts.clamp(min=1)[:, :, None, None].float()
        missing = int((counts.sum(dim=1) == 0).sum())
        if missing:
            print(f"warning: {missing} class(es) have no known positive: no prototype, PPRB never blends them",
                  file=sys.stderr)
        self.train(was_training)


def load_embeddings(spec, opts: DsrbOptions) -> torch.Tensor | None:
    """DIR/label_embeddings.npy (or --embeddings PATH); None -> learned, with a warning."""
    from mlrpl_data.embeddings import read_embeddings

    if spec.extra.get("embeddings") is not None:  # evaluation: the checkpoint's own
        return spec.extra["embeddings"]
    emb = read_embeddings(spec.dataset, opts.embeddings, spec.num_classes)
    if emb is None:
        print("warning: no label embeddings (mlrpl embed-labels DIR --from glove.txt): learning them from scratch",
              file=sys.stderr)
        return None
    return torch.from_numpy(emb)


def build_dsrb(cfg, spec, backbone: nn.Module, frozen: list[nn.Module]) -> DSRB:
    opts = DsrbOptions.from_dict(cfg.model or {})
    if cfg.method == "ssgrl":  # the paper's baseline: DSRB without blending and without the contrastive loss
        opts.iprb, opts.pprb, opts.contrastive_weight = False, False, 0.0
    partial = np.stack(list(spec.partial.values())) if spec.partial else None
    return DSRB(backbone, spec.num_classes, load_embeddings(spec, opts), cooccurrence(partial, spec.num_classes),
                opts, frozen, seed=cfg.seed, bce=cfg.bce)
