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
import os
import sys
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mlrpl_data.errors import BadInputError, MlrplError

from .. import dist as D
from ..device import to_device
from ..losses import contrastive_literal, contrastive_published, contrastive_weight, partial_bce
from ..options import DsrbOptions
from .base import PartialLabelModel
from .blending import (accumulate_prototypes, choose_pprb, iprb_blend, iprb_mask, kmeans_prototypes, peak_cells,
                       pprb_blend, pprb_mask)
from .naive import category_maps, iprb_blend_maps, pool, pprb_blend_maps


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

    def first_linear(self, h: torch.Tensor, bias: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The part of step 1 that is linear in h: (W_a [A_in h, A_out h] (+ its bias), U_zr h)."""
        a = torch.cat([self.adj_in @ h, self.adj_out @ h], dim=-1)
        return F.linear(a, self.w_a.weight, self.w_a.bias if bias else None), self.u_zr(h)

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
            h = self._step(h, *first) if step == 0 and first is not None else self._step(h)
        return h

    def _step(self, h: torch.Tensor, wa: torch.Tensor | None = None, uzr: torch.Tensor | None = None) -> torch.Tensor:
        """One propagation step; `wa`, `uzr` = first_linear(h) (W_a's product without its bias) when given."""
        if wa is None:
            wa, uzr = self.first_linear(h, bias=True)  # the bias fused into the product
        else:
            wa = wa + self.w_a.bias
        wa_z, wa_r, wa_h = wa.chunk(3, dim=-1)
        uz, ur = uzr.chunk(2, dim=-1)
        z, r = torch.sigmoid(wa_z + uz), torch.sigmoid(wa_r + ur)
        cand = torch.tanh(wa_h + self.u_h(r * h))
        return (1 - z) * h + z * cand


class Head(nn.Module):
    """GGNN -> o_c = tanh(fc([h_c, f_c])) -> per-class linear classifier: (B, C, D) -> logits (B, C).

    A blended input f + delta differs from f in a few (image, class) rows only (IPRB: the blended
    unknown labels; PPRB: one class per image). Everything linear in the input before the first
    nonlinearity (GGNN step 1's projections, fc's f half) is then the original's plus delta's
    projection on those rows: `forward_delta` reuses the original pass's terms. Same function,
    about a fifth less work per step for the two blended passes.

    `save_memory` wraps each pass (and the shared terms) in an activation checkpoint: a pass keeps
    only its inputs and is recomputed whole in its backward, one pass at a time. (Checkpointing each
    graph step inside it as well cut the extra memory a little more, 0.165 instead of 0.20 of the
    naive form's at C = 80 (ResNet-101, 448 px, batch 8), but ran every step forward three times.)"""

    def __init__(self, dim: int, num_classes: int, adjacency: torch.Tensor, steps: int, save_memory: bool = False):
        super().__init__()
        self.dim, self.save_memory = dim, save_memory
        self.ggnn = GGNN(dim, adjacency, steps)
        self.fc = nn.Linear(2 * dim, dim)
        self.cls_w = nn.Parameter(torch.empty(num_classes, dim))
        self.cls_b = nn.Parameter(torch.zeros(num_classes))
        nn.init.uniform_(self.cls_w, -1 / math.sqrt(dim), 1 / math.sqrt(dim))

    def _call(self, fn: Callable, *args):
        if self.save_memory and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _shared(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The terms linear in f that a blended pass reuses: step 1's two projections and fc's f half."""
        wa, uzr = self.ggnn.first_linear(f)
        return wa, uzr, F.linear(f, self.fc.weight[:, self.dim:])

    def _run(self, f, wa, uzr, fc_f) -> torch.Tensor:
        h = self.ggnn(f, (wa, uzr))
        o = torch.tanh(F.linear(h, self.fc.weight[:, :self.dim], self.fc.bias) + fc_f)
        return (o * self.cls_w).sum(-1) + self.cls_b

    def _run_delta(self, f_new, delta, rows, wa0, uzr0, fc0) -> torch.Tensor:
        wa_d, uzr_d = self.ggnn.first_linear_rows(delta, rows)
        idx = rows.nonzero(as_tuple=True)
        fc_d = delta.new_zeros(fc0.shape).index_put(idx, F.linear(delta[idx], self.fc.weight[:, self.dim:]))
        return self._run(f_new, wa0 + wa_d, uzr0 + uzr_d, fc0 + fc_d)

    def _plain(self, f: torch.Tensor) -> torch.Tensor:
        return self._run(f, *self._shared(f))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self._call(self._plain, f)

    def forward_cached(self, f: torch.Tensor):
        """forward(f), and the terms a blended pass reuses (6D numbers per (image, class))."""
        cache = self._call(self._shared, f)
        return self._call(self._run, f, *cache), cache

    def forward_delta(self, f_new: torch.Tensor, delta: torch.Tensor, rows: torch.Tensor, cache) -> torch.Tensor:
        """forward(f_new) where f_new = f + delta, delta zero outside `rows` (B, C), cache from f."""
        return self._call(self._run_delta, f_new, delta, rows, *cache)


def cooccurrence(partial: np.ndarray | None, num_classes: int) -> torch.Tensor:
    """A[i, j] = P(j known positive | i known positive) from the training partial labels: the
    co-occurrence counts with each row divided by its diagonal, so A[i, i] = 1, as in the authors'
    code. A class with no known positive has a zero row (their code gives a NaN row there, which
    the outgoing message A^T h spreads to every node in one propagation step)."""
    if partial is None or len(partial) == 0:
        return torch.zeros(num_classes, num_classes)
    pos = (np.asarray(partial) == 1).astype(np.float64)
    co = pos.T @ pos
    diag = np.diag(co).copy()
    a = np.divide(co, diag[:, None], out=np.zeros_like(co), where=diag[:, None] > 0)
    return torch.from_numpy(a).float()


# ---- DSRB ---------------------------------------------------------------------------------------------------

class DSRB(PartialLabelModel):
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
        else:
            self.csrl = SemanticAttention(d, num_classes)
        self.head = Head(d, num_classes, adjacency, opts.ggnn_steps, opts.save_memory)
        # eq. 8 and 12: per-class alpha and beta (--alpha-shape class), or one scalar each as the
        # authors' code has (scalar: shape (1,), broadcast over the classes); 0.5 at first, kept in [0, 1]
        n_ab = num_classes if opts.alpha_shape == "class" else 1
        self.alpha = nn.Parameter(torch.full((n_ab,), 0.5), requires_grad=opts.learn_alpha)
        self.beta = nn.Parameter(torch.full((n_ab,), 0.5), requires_grad=opts.learn_beta)
        self.kmeans = opts.prototypes == "kmeans"
        # prototype slots per class: SARB's K centres, one vector, or the 4^K grid cells of eq. 10-11
        self.cells = opts.prototype_clusters if self.kmeans else 1 if opts.blend == "vector" else 4 ** opts.grid_k
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
        loss = partial_bce(logits.float(), y, self.bce)  # eq. 14
        logs = {"loss_cls": float(loss.detach())}
        if self.opts.contrastive_weight > 0:  # eq. 3-4, weighted by lambda (eq. 16)
            if self.opts.contrastive == "published":
                cst = contrastive_published(f, y, self.step_generator(step, 1))
            else:  # eq. 4 summed over ordered pairs; divided by B like eq. 14's per-image mean
                cst = contrastive_literal(f, y) / y.shape[0]
            loss = loss + contrastive_weight(self.opts.contrastive_weight, epoch, progress, self.opts.contrastive) * cst
            logs["loss_cst"] = float(cst.detach())
        if self.blending(epoch):
            if self.opts.iprb:  # eq. 6-9
                s_hat, y_hat = self.iprb_outputs(f, y, cache, xs, att)
                l_i = partial_bce(s_hat.float(), y_hat, self.bce)
                loss = loss + l_i
                logs["loss_iprb"] = float(l_i.detach())
            if self.opts.pprb and bool(self.proto_counts.sum() > 0):  # eq. 10-13
                own = self.own_cells(xs, att, hw)
                cls, cell = choose_pprb(y.cpu(), own.cpu(), (self.proto_counts > 0).cpu(), self.step_generator(step, 0))
                s_tilde, y_tilde = self.pprb_outputs(f, y, cache, xs, att, cls, cell)
                l_p = partial_bce(s_tilde.float(), y_tilde, self.bce)
                loss = loss + l_p
                logs["loss_pprb"] = float(l_p.detach())
        return loss, logs  # eq. 15-16: the three classification terms + lambda * contrastive

    def iprb_outputs(self, f, y, cache, xs, att) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 8-9 on the pooled vectors, then the head on the rows that changed: (s_hat, y_hat)."""
        f_hat, y_hat = iprb_blend(f, y, self.alpha)
        return self.head.forward_delta(f_hat, f_hat - f, iprb_mask(y), cache), y_hat

    def pprb_outputs(self, f, y, cache, xs, att, cls, cell) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 12-13 with the pooled prototypes, then the head on the rows that changed: (s_tilde, y_tilde)."""
        f_tilde, y_tilde = pprb_blend(f, y, self.beta, self.prototypes, cls, cell)
        return self.head.forward_delta(f_tilde, f_tilde - f, pprb_mask(cls, y.shape[1], y.device), cache), y_tilde

    @property
    def grid_k(self) -> int:
        return 0 if self.cells == 1 or self.kmeans else self.opts.grid_k

    def own_cells(self, xs, att, hw) -> torch.Tensor:
        """(B, C) each class's own grid cell (the one PPRB avoids), or -1 with K-means prototypes,
        which have no location (SARB draws among all of a class's centres)."""
        if self.kmeans:
            return torch.full(att.shape[:2], -1, dtype=torch.long)
        return peak_cells(self.peak_map(xs, att, hw).detach(), self.grid_k)

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
        never chosen by PPRB; an empty cell is never chosen either. With --prototypes kmeans:
        SARB's K-means centres instead (`compute_kmeans_prototypes`)."""
        was_training = self.training
        self.eval()
        if self.kmeans:
            counts = self.compute_kmeans_prototypes(loader, device, info)
            self._warn_missing(counts)
            self.train(was_training)
            return
        sums = torch.zeros_like(self.prototypes, dtype=torch.float64, device="cpu")
        counts = torch.zeros_like(self.proto_counts, dtype=torch.float64, device="cpu")
        for batch in loader:
            xs, att, f, hw = self.features(to_device(batch["images"], device))
            own = peak_cells(self.peak_map(xs, att, hw), self.grid_k).cpu()
            accumulate_prototypes(f.float().cpu(), batch["partial"], own, self.cells, sums, counts)
            self.accumulate_extra(xs, att, batch["partial"], own)
        if info is not None:
            sums, counts = D.all_reduce_sum([sums, counts], info, device)
        self.prototypes.copy_((sums / counts.clamp(min=1).unsqueeze(-1)).to(self.prototypes.dtype))
        self.proto_counts.copy_(counts.to(self.proto_counts.dtype))
        self.finish_extra(counts)
        self._warn_missing(counts)
        self.train(was_training)

    @staticmethod
    def _warn_missing(counts: torch.Tensor) -> None:
        missing = int((counts.sum(dim=1) == 0).sum())
        if missing:
            print(f"warning: {missing} class(es) have no known positive: no prototype, PPRB never blends them",
                  file=sys.stderr)

    def compute_kmeans_prototypes(self, loader, device: torch.device, info=None) -> torch.Tensor:
        """SARB's prototypes (HCP-MLR-PL model/SARB.py `computePrototype`): the pooled representation
        f_c of every known positive of class c, K-means with K = --prototype-clusters per class
        (`kmeans_prototypes`, seeded from the run's seed and the class). The vectors are sorted by
        sample key first, so the centres depend neither on the loader's order nor on the number of
        processes (every rank gathers all vectors and clusters the same). Memory: every known
        positive's vector, N_pos x D x 4 bytes on the CPU (as SARB keeps them). Returns the
        cluster sizes (C, K), also stored in proto_counts."""
        c = self.prototypes.shape[0]
        keys: list[list[str]] = [[] for _ in range(c)]
        vecs: list[list[np.ndarray]] = [[] for _ in range(c)]
        for batch in loader:
            _, _, f, _ = self.features(to_device(batch["images"], device))
            f = f.float().cpu().numpy()
            n_idx, c_idx = torch.nonzero(batch["partial"] == 1, as_tuple=True)
            for n, k in zip(n_idx.tolist(), c_idx.tolist()):
                keys[k].append(batch["keys"][n])
                vecs[k].append(f[n, k])
        if info is not None and info.world > 1:
            parts = D.gather_objects((keys, vecs), info)
            keys = [[x for p in parts for x in p[0][k]] for k in range(c)]
            vecs = [[x for p in parts for x in p[1][k]] for k in range(c)]
        protos = np.zeros(tuple(self.prototypes.shape), dtype=np.float32)
        sizes = np.zeros(tuple(self.proto_counts.shape), dtype=np.int64)
        dim = protos.shape[-1]
        for k in range(c):
            order = sorted(range(len(keys[k])), key=keys[k].__getitem__)
            x = np.stack([vecs[k][i] for i in order]) if order else np.zeros((0, dim), dtype=np.float32)
            protos[k], sizes[k] = kmeans_prototypes(x, self.cells, (self.seed * 100_003 + k) % 2 ** 32)
        self.prototypes.copy_(torch.from_numpy(protos).to(self.prototypes.dtype))
        counts = torch.from_numpy(sizes).to(torch.float64)
        self.proto_counts.copy_(counts.to(self.proto_counts.dtype))
        return counts

    def accumulate_extra(self, xs, att, partial, own) -> None:
        """A hook for forms that keep more than pooled prototypes (the naive oracle keeps maps)."""

    def finish_extra(self, counts: torch.Tensor) -> None:
        """See accumulate_extra."""


class NaiveDSRB(DSRB):
    """DSRB blending whole category maps and keeping prototype MAPS (C, cells, HW, D)."""

    proto_maps: torch.Tensor | None = None
    _map_sums: torch.Tensor | None = None  # while compute_prototypes runs

    def iprb_outputs(self, f, y, cache, xs, att):
        m_hat, y_hat = iprb_blend_maps(category_maps(att, xs), y, self.alpha)
        return self.head(pool(m_hat)), y_hat

    def pprb_outputs(self, f, y, cache, xs, att, cls, cell):
        if self.proto_maps is None:
            raise MlrplError("the naive form has no prototype maps yet: run compute_prototypes first")
        maps = category_maps(att, xs)
        m_tilde, y_tilde = pprb_blend_maps(maps, y, self.beta, self.proto_maps.to(maps.device), cls, cell)
        return self.head(pool(m_tilde)), y_tilde

    def accumulate_extra(self, xs, att, partial, own) -> None:
        maps = category_maps(att, xs).float().cpu()
        if self._map_sums is None:
            self._map_sums = torch.zeros(maps.shape[1], self.cells, maps.shape[2], maps.shape[3])
        c = self._map_sums.shape[0]
        accumulate_prototypes(maps.flatten(2), partial, own, self.cells, self._map_sums.view(c, self.cells, -1),
                              torch.zeros(c, self.cells))

    def finish_extra(self, counts: torch.Tensor) -> None:
        if self._map_sums is not None:
            self.proto_maps = self._map_sums / counts.clamp(min=1)[:, :, None, None].float()
        self._map_sums = None


def load_embeddings(spec, path: str | None) -> torch.Tensor | None:
    """DIR/label_embeddings.npy (or --embeddings PATH): (C, E) float; None -> learned, with a warning.
    Every method whose registry entry says uses_embeddings reads them here."""
    from mlrpl_data.embeddings import read_embeddings

    emb = read_embeddings(spec.dataset, path, spec.num_classes)
    if emb is None:
        if os.environ.get("RANK", "0") == "0":  # every rank of --nproc builds the model: one warning, not N
            print("warning: no label embeddings (mlrpl embed-labels DIR --from glove.txt): learning them from scratch",
                  file=sys.stderr)
        return None
    return torch.from_numpy(emb)


def build_dsrb(cfg, spec, backbone: nn.Module, frozen: list[nn.Module],
               embeddings: torch.Tensor | None = None, from_checkpoint: bool = False) -> DSRB:
    """DSRB, or SSGRL (DSRB without blending and without the contrastive loss), or the naive oracle.

    A model rebuilt `from_checkpoint` takes its label embeddings from the checkpoint (`embeddings`,
    None when they were learned) rather than from the dataset folder."""
    from dataclasses import replace

    opts = cfg.dsrb
    stride = getattr(backbone, "stride", 1)  # the backbone's map is ceil(size / stride) cells a side
    if opts.pool2x2 and int(cfg.image_size) <= stride:  # the 2x2 pool needs a map of 2 cells or more
        raise BadInputError(f"--image-size {cfg.image_size}: {cfg.method} with the {cfg.backbone} backbone and the "
                            f"2x2 pool needs at least {stride + 1} px (a feature map of 2x2 cells); pass "
                            f"--image-size {stride + 1} or more, or --no-pool2x2")
    if cfg.method == "ssgrl":
        opts = replace(opts, iprb=False, pprb=False, contrastive_weight=0.0)
    if not from_checkpoint:
        embeddings = load_embeddings(spec, cfg.embeddings)
    partial = spec.fit_partial()
    cls = NaiveDSRB if opts.form == "naive" else DSRB
    return cls(backbone, spec.num_classes, embeddings, cooccurrence(partial, spec.num_classes), opts, frozen,
               seed=cfg.seed, bce=cfg.bce)


def build(cfg, spec, backbone: nn.Module, frozen: list[nn.Module], state: dict | None) -> DSRB:
    """The registry's builder of dsrb and ssgrl: a model rebuilt from a checkpoint `state` takes its
    label embeddings from it (None there: they were learned and come with the state)."""
    return build_dsrb(cfg, spec, backbone, frozen, embeddings=None if state is None else state.get("embeddings"),
                      from_checkpoint=state is not None)
