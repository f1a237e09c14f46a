"""KGGR, Table 1's "KGGR" row: T. Chen, L. Lin, R. Chen, X. Hui, H. Wu, "Knowledge-guided multi-label
few-shot learning for general image recognition", TPAMI 44(3), 2022 (arXiv 2009.09450), its general
multi-label recognition (MLR) framework, adapted to partial labels as the DSRB paper adapted every
method it compares (Sec. 5.2: partial BCE in place of BCE, every other component unchanged).

    image -> backbone -> 1x1 conv+BN to D                                       f_hw     (B, HW, D)
          -> semantic-specific features, guided by the label embeddings e_c:
             a_c(hw) = softmax_hw(w^T tanh(U f_hw * V e_c)),  x_c = sum_hw a_c(hw) f_hw  (B, C, D)
          -> graph feature learning: a gated graph network over the knowledge graph A, h^0_c = x_c,
             T steps (messages A h and A^T h), o_c = tanh(W_o [h^T_c, x_c] + b_o)      (B, C, D)
          -> graph classifier learning: a second gated graph network (its own weights, the same
             graph) from the classifier weights, g^0_c = w_c, T steps,
             w*_c = W_w [g^T_c, w_c] + b_w                                               (C, D)
          -> s_c = sum_d o_cd w*_cd w_cd + b_c                                           (B, C)

The knowledge graph is the statistical label co-occurrence, A[i, j] = P(j | i), counted on the
KNOWN positives of the training partial labels (mlrpl's `cooccurrence`, shared with SSGRL/DSRB).

What the paper's abstract states (its method section was not readable from here): a knowledge
graph of statistical label co-occurrence, label semantics guiding semantic-specific features that
initialise the graph, a propagation network over them, and classifier weights initialising the
nodes of another propagation network. No code of KGGR's authors was found; the details follow the one
public implementation of its MLR framework (zizizihua/WS-MLR `model/KGGR.py`, built on
HCP-MLR-PL's `GatedGNN`, `SemanticDecoupling` and `Element_Wise_Layer`): D = 1024 with no pooling
of the backbone map, an attention width of 512, T = 3 for both networks, the concatenations
[h^T, x] and [g^T, w], tanh on the features only, a score that multiplies by the propagated AND
the original classifier, and uniform(+-1/sqrt(D)) classifier weights and biases. Their graph has
NaN rows for a class with no positive; here they are zero rows (and columns), so such a class
touches no other class and makes nothing NaN.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
import torch.nn as nn

from ..losses import partial_bce
from .base import PartialLabelModel
from .dsrb import GGNN, SemanticDecoupling, cooccurrence, load_embeddings


def knowledge_graph(partial: np.ndarray | None, num_classes: int) -> torch.Tensor:
    """KGGR's statistical label co-occurrence graph from training partial labels (N, C) in {-1, 0, 1}:
    A[i, j] = #(i and j known positive) / #(i known positive), so A[i, i] = 1 for a class with a known
    positive; unknown (0) and negative (-1) labels count for nothing. A class with no known positive
    has a zero row and a zero column. Returns (C, C) float32."""
    return cooccurrence(partial, num_classes)


class KGGR(PartialLabelModel):
    """KGGR's MLR framework (see the module docstring). `embeddings` (C, E) from the dataset's
    label_embeddings.npy (kept as a buffer), or None: learned from a random start (E = 300);
    `adjacency` (C, C) from `knowledge_graph`; `opts` a KggrOptions; `frozen` the backbone layers
    kept in eval mode; `bce` the partial-BCE form (losses.partial_bce)."""

    def __init__(self, backbone: nn.Module, num_classes: int, embeddings: torch.Tensor | None,
                 adjacency: torch.Tensor, opts, frozen: list[nn.Module], bce: str = "batch"):
        super().__init__()
        d, c = opts.kggr_feat_dim, num_classes
        self.opts, self._frozen, self.bce = opts, frozen, bce
        self.backbone = backbone
        self.reduce = nn.Sequential(nn.Conv2d(backbone.out_channels, d, 1, bias=False), nn.BatchNorm2d(d))
        if embeddings is None:  # no offline source was given: learned, as DSRB does
            self.embeddings = nn.Parameter(torch.randn(c, 300) * 0.1)
        else:
            self.register_buffer("embeddings", embeddings.float())
        self.decoupling = SemanticDecoupling(d, self.embeddings.shape[1], opts.kggr_attn_dim)
        self.feature_graph = GGNN(d, adjacency, opts.kggr_steps)  # graph feature learning
        self.classifier_graph = GGNN(d, adjacency, opts.kggr_steps)  # graph classifier learning
        self.fc_o = nn.Linear(2 * d, d)  # o_c = tanh(W_o [h^T_c, x_c] + b_o)
        self.fc_w = nn.Linear(2 * d, d)  # w*_c = W_w [g^T_c, w_c] + b_w
        bound = 1 / math.sqrt(d)  # Element_Wise_Layer's initialisation, bias included
        self.cls_w = nn.Parameter(torch.empty(c, d).uniform_(-bound, bound))
        self.cls_b = nn.Parameter(torch.empty(c).uniform_(-bound, bound))

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen:  # frozen layers keep their BatchNorm statistics
            m.eval()
        return self

    @property
    def adjacency(self) -> torch.Tensor:
        """The knowledge graph A (C, C), A[i, j] = P(j | i)."""
        return self.feature_graph.adj_in

    def semantic_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> x_c = sum_hw a_c(hw) f_hw: (B, C, D)."""
        fmap = self.reduce(self.backbone(x))
        f = fmap.flatten(2).transpose(1, 2)  # (B, HW, D)
        return self.decoupling(f, self.embeddings) @ f

    def contextual_features(self, xc: torch.Tensor) -> torch.Tensor:
        """Graph feature learning: (B, C, D) -> o = tanh(W_o [GGNN(x), x] + b_o), (B, C, D)."""
        return torch.tanh(self.fc_o(torch.cat([self.feature_graph(xc), xc], dim=-1)))

    def classifiers(self) -> torch.Tensor:
        """Graph classifier learning: the classifier weights w (C, D) propagated over the graph,
        w* = W_w [GGNN'(w), w] + b_w, (C, D)."""
        w = self.cls_w
        return self.fc_w(torch.cat([self.classifier_graph(w), w], dim=-1))

    def scores(self, o: torch.Tensor, w_star: torch.Tensor) -> torch.Tensor:
        """s_c = sum_d o_cd w*_cd w_cd + b_c: o (B, C, D), w* (C, D) -> logits (B, C)."""
        return (o * w_star * self.cls_w).sum(-1) + self.cls_b

    def loss(self, logits: torch.Tensor, partial: torch.Tensor) -> torch.Tensor:
        """Partial BCE over the known labels (unknown = 0 contributes nothing): (B, C), (B, C) -> scalar."""
        return partial_bce(logits.float(), partial, self.bce)

    def forward(self, x: torch.Tensor, partial: torch.Tensor | None = None, epoch: int = 0, step: int = 0,
                progress: float = 1.0):
        """(B, 3, H, W) -> logits (B, C); with `partial` (B, C) in {-1, 0, 1}: (loss, logs)."""
        logits = self.scores(self.contextual_features(self.semantic_features(x)), self.classifiers())
        if partial is None:
            return logits
        return self.loss(logits, partial), {}


def build(cfg, spec, backbone: nn.Module, frozen: list[nn.Module], state: dict | None) -> KGGR:
    """The registry's builder of `kggr`: the graph from the KNOWN positives of the training partial
    labels (spec.fit_partial()), the label embeddings from --embeddings or DATASET/label_embeddings.npy
    (learned, with a warning, when there are none). A model rebuilt from a checkpoint `state` takes
    its embeddings from the state here and its graph by load_state_dict (both are buffers)."""
    if state is not None:
        return KGGR(backbone, spec.num_classes, state.get("embeddings"), knowledge_graph(None, spec.num_classes),
                    cfg.kggr, frozen, bce=str(cfg.bce))
    partial = spec.fit_partial()
    missing = 0 if partial is None else int(((np.asarray(partial) == 1).sum(axis=0) == 0).sum())
    if missing:
        print(f"warning: {missing} class(es) have no known positive: KGGR's graph has no edge to or from them",
              file=sys.stderr)
    return KGGR(backbone, spec.num_classes, load_embeddings(spec, cfg.embeddings),
                knowledge_graph(partial, spec.num_classes), cfg.kggr, frozen, bce=str(cfg.bce))
