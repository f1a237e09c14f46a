"""GCN-ML and P-GCN (Table 1 rows), sharing one label graph and one graph convolution.

GCN-ML = ML-GCN (Z.-M. Chen, X.-S. Wei, P. Wang, Y. Guo, "Multi-label image recognition with graph
convolutional networks", CVPR 2019; the authors' code megvii-research/ML-GCN, `models.py` and `util.py`):

    image -> backbone -> global MAX pool                 -> x (B, D)
    label embeddings Z (C, E) -> GC(E -> 1024) -> LeakyReLU(0.2) -> GC(1024 -> D) -> W (C, D)
    logits = x W^T (B, C)                                   (paper eq. 4; `GCNResnet.forward`)

P-GCN (same authors, "Learning graph convolutional networks for multi-label recognition and
applications", TPAMI 2021; no code released). Its abstract: the visual representation of an image is
decomposed into label-aware features, which a "prediction learning GCN" encodes into inter-dependent
image-level prediction scores. Its layers are not public; ours (README's choice table):

    image -> backbone -> (B, D, h, w) -> class-specific spatial attention (1x1 conv -> softmax over
    positions) -> label-aware features F (B, C, D)
    -> GC(D -> 1024) -> LeakyReLU(0.2) -> per-class score u_c = <h_c, w_c> -> scores = A u + b (B, C)

so both graph layers propagate along the label graph and the second propagates the per-class
scores themselves (the "inter-dependent prediction scores"). It needs no label embeddings.

The label graph (both methods) from the TRAINING partial labels: M_ij = images where i and j are both
KNOWN positives (i != j; unknown labels never count), N_i = images where i is a known positive,
P_ij = M_ij / N_i = P(j | i) (paper eq. 6; a class with no known positive: a zero row, never NaN),
B_ij = [P_ij >= tau] (eq. 7), then re-weighted (`--adjacency`):

- code (default; the authors' `gen_A` then `gen_adj`, which produced the published numbers):
  A = p B / (column sums of B) + I with p = 0.25, then A_hat = D^-1/2 A^T D^-1/2, D = diag(row sums of A).
  Note the transpose: node i then gathers from j where P(i | j) >= tau.
- paper (eq. 8 as corrected in the authors' README): A'_ij = p B_ij / sum_{k != i} B_ik off the
  diagonal, 1 - p on it, p = 0.2, used as it is (its rows already sum to 1); node i gathers from j
  where P(j | i) >= tau. A class with no neighbour keeps 1 - p on its diagonal.

The loss is partial BCE over the known labels only (`losses.partial_bce`, `--bce`), as the DSRB paper
adapted every method ("replacing the BCE loss with partial BCE loss, every other component unchanged").
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
import torch.nn as nn

from mlrpl_data.errors import BadInputError

from ..losses import partial_bce
from .base import PartialLabelModel

ADJACENCY_FORMS = ("code", "paper")
PUBLISHED_P = {"code": 0.25, "paper": 0.2}  # gen_A's 0.25; the paper's Sec. 4.1: p = 0.2
EMBED_DIM = 300  # learned embeddings when no file is given (the paper's GloVe size)


# ---- the label graph (paper eq. 6-8; authors' gen_A, gen_adj) ------------------------------------------------

def label_counts(partial: np.ndarray | None, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(M, N) from partial labels (N_img, C) in {-1, 0, 1}: M (C, C) the co-occurrence counts of KNOWN
    positives, zero on the diagonal (the authors' adj counts pairs of different labels); N (C,) the known
    positives per class. Unknown (0) and negative (-1) labels never count. No labels: zeros."""
    if partial is None or len(partial) == 0:
        return np.zeros((num_classes, num_classes)), np.zeros(num_classes)
    pos = (np.asarray(partial) == 1).astype(np.float64)
    if pos.ndim != 2 or pos.shape[1] != num_classes:
        raise BadInputError(f"partial labels of shape {pos.shape}: expected (images, {num_classes})")
    m = pos.T @ pos
    np.fill_diagonal(m, 0.0)
    return m, pos.sum(axis=0)


def conditional_probability(m: np.ndarray, n: np.ndarray) -> np.ndarray:
    """P_ij = M_ij / N_i = P(label j | label i) (C, C); a class with N_i = 0 has a zero row (the authors'
    code divides 0 by 0 there and every node of the network becomes NaN)."""
    return np.divide(m, n[:, None], out=np.zeros_like(m, dtype=np.float64), where=n[:, None] > 0)


def adjacency_code(p_cond: np.ndarray, tau: float, p: float) -> np.ndarray:
    """The authors' gen_A + gen_adj: B = [P >= tau] (and P > 0); A = p B / colsum(B) + I; D^-1/2 A^T D^-1/2.

    gen_A divides by (colsum + 1e-6); here an empty column stays 0 and every other entry is exact
    (a relative difference below 1e-6)."""
    c = p_cond.shape[0]
    b = ((p_cond >= tau) & (p_cond > 0)).astype(np.float64)  # tau = 0 links no class that never co-occurs
    col = b.sum(axis=0, keepdims=True)
    a = np.divide(b * p, col, out=np.zeros_like(b), where=col > 0) + np.eye(c)
    d = a.sum(axis=1) ** -0.5  # every row sum >= 1 (the identity): never a division by zero
    return d[:, None] * a.T * d[None, :]


def adjacency_paper(p_cond: np.ndarray, tau: float, p: float) -> np.ndarray:
    """Eq. 7-8 (eq. 8 as corrected in the authors' README): B = [P >= tau] (and P > 0) off the diagonal;
    A'_ij = p B_ij / sum_{k != i} B_ik (i != j), A'_ii = 1 - p. A row without neighbours: (1 - p) on its
    diagonal and zeros elsewhere."""
    c = p_cond.shape[0]
    b = ((p_cond >= tau) & (p_cond > 0)).astype(np.float64) * (1 - np.eye(c))
    row = b.sum(axis=1, keepdims=True)
    return np.divide(b * p, row, out=np.zeros_like(b), where=row > 0) + (1 - p) * np.eye(c)


def correlation_matrix(partial: np.ndarray | None, num_classes: int, form: str = "code", tau: float = 0.4,
                       p: float | None = None) -> torch.Tensor:
    """The propagation matrix of both GCNs (C, C) float32 from the training partial labels.

    form: "code" | "paper" (see the module docstring); p None = the form's published value
    (code 0.25, paper 0.2). ValueError on another form."""
    if form not in ADJACENCY_FORMS:
        raise ValueError(f"adjacency form {form!r}: use one of {ADJACENCY_FORMS}")
    p = PUBLISHED_P[form] if p is None else p
    p_cond = conditional_probability(*label_counts(partial, num_classes))
    build = adjacency_code if form == "code" else adjacency_paper
    return torch.from_numpy(build(p_cond, tau, p)).float()


# ---- the graph convolution (ML-GCN's GraphConvolution) -----------------------------------------------------

class GraphConvolution(nn.Module):
    """H' = A H W (Kipf & Welling's layer without bias, as ML-GCN's default): H (..., C, in) -> (..., C, out);
    W initialised uniform(-1/sqrt(out), 1/sqrt(out)) as the authors' reset_parameters."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        bound = 1.0 / math.sqrt(out_features)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, h: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        return torch.matmul(adjacency, torch.matmul(h, self.weight))


class _Frozen(PartialLabelModel):
    """Frozen backbone layers stay in eval mode (their BatchNorm statistics kept) in train()."""

    _frozen: list

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen:
            m.eval()
        return self


# ---- GCN-ML -----------------------------------------------------------------------------------------------------

class MLGCN(_Frozen):
    """ML-GCN with partial BCE: logits = maxpool(backbone(x)) @ GCN(embeddings)^T.

    embeddings (C, E) or None (learned, (C, 300), init N(0, 0.1^2)); adjacency (C, C) from
    `correlation_matrix` (kept as a buffer, so a checkpoint carries it); hidden: the first layer's width
    (the authors' 1024); the second maps to the backbone's channels (2048 for ResNet-101)."""

    def __init__(self, backbone: nn.Module, num_classes: int, embeddings: torch.Tensor | None,
                 adjacency: torch.Tensor, frozen: list[nn.Module], hidden: int = 1024, bce: str = "batch"):
        super().__init__()
        self.backbone, self._frozen, self.bce = backbone, frozen, bce
        if embeddings is None:
            self.embeddings = nn.Parameter(torch.randn(num_classes, EMBED_DIM) * 0.1)
        else:
            self.register_buffer("embeddings", embeddings.float().clone())
        self.register_buffer("adjacency", adjacency.float().clone())
        self.gc1 = GraphConvolution(self.embeddings.shape[1], hidden)
        self.gc2 = GraphConvolution(hidden, backbone.out_channels)
        self.act = nn.LeakyReLU(0.2)

    def classifiers(self) -> torch.Tensor:
        """The C inter-dependent classifiers (C, D): GC2(LeakyReLU(GC1(Z)))."""
        return self.gc2(self.act(self.gc1(self.embeddings, self.adjacency)), self.adjacency)

    def forward(self, x: torch.Tensor, partial: torch.Tensor | None = None, epoch: int = 0, step: int = 0,
                progress: float = 1.0):
        """(B, 3, H, W) -> logits (B, C); with `partial` (B, C): (partial BCE on the known labels, logs)."""
        feature = self.backbone(x).amax(dim=(2, 3))  # global max pool (the authors' MaxPool2d(14) at 448 px)
        logits = feature @ self.classifiers().t().to(feature.dtype)
        if partial is None:
            return logits
        return partial_bce(logits.float(), partial, self.bce), {}


# ---- P-GCN ------------------------------------------------------------------------------------------------------

class PGCN(_Frozen):
    """P-GCN as we read its TPAMI abstract (layers our choice): label-aware features by class-specific
    spatial attention, a graph layer D -> hidden with LeakyReLU(0.2), then per-class scores propagated by a
    second graph layer: scores = A (h_c . w_c)_c + b. (B, 3, H, W) -> logits (B, C)."""

    def __init__(self, backbone: nn.Module, num_classes: int, adjacency: torch.Tensor, frozen: list[nn.Module],
                 hidden: int = 1024, bce: str = "batch"):
        super().__init__()
        d = backbone.out_channels
        self.backbone, self._frozen, self.bce = backbone, frozen, bce
        self.register_buffer("adjacency", adjacency.float().clone())
        self.attention = nn.Conv2d(d, num_classes, 1)
        self.gc1 = GraphConvolution(d, hidden)
        self.act = nn.LeakyReLU(0.2)
        bound = 1.0 / math.sqrt(hidden)
        self.score_w = nn.Parameter(torch.empty(num_classes, hidden).uniform_(-bound, bound))
        self.score_b = nn.Parameter(torch.zeros(num_classes))

    def label_features(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, C, D): f_c = sum_hw softmax_hw(a_c)(hw) x(hw), a = 1x1 conv of the map."""
        att = torch.softmax(self.attention(fmap).flatten(2), dim=-1)  # (B, C, hw)
        return att @ fmap.flatten(2).transpose(1, 2)

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """Label-aware features (B, C, D) -> inter-dependent scores (B, C)."""
        adj = self.adjacency.to(feats.dtype)
        h = self.act(self.gc1(feats, adj))
        u = (h * self.score_w.to(h.dtype)).sum(-1)  # (B, C): each node's own score
        return u @ adj.t() + self.score_b.to(h.dtype)  # score_i = sum_j A_ij u_j + b_i

    def forward(self, x: torch.Tensor, partial: torch.Tensor | None = None, epoch: int = 0, step: int = 0,
                progress: float = 1.0):
        """(B, 3, H, W) -> logits (B, C); with `partial` (B, C): (partial BCE on the known labels, logs)."""
        logits = self.scores(self.label_features(self.backbone(x)))
        if partial is None:
            return logits
        return partial_bce(logits.float(), partial, self.bce), {}


# ---- construction -----------------------------------------------------------------------------------------------

def _graph(cfg, spec, state) -> torch.Tensor:
    """The checkpoint's graph when rebuilding one, else the graph of the run's training partial labels."""
    if state is not None:
        if "adjacency" not in state:
            raise BadInputError(f"this {cfg.method} checkpoint has no label graph ('adjacency'): it was not written "
                                f"by a {cfg.method} run; evaluate it with the method it was trained with")
        return state["adjacency"]
    o, partial = cfg.gcn, spec.fit_partial()
    _, known = label_counts(partial, spec.num_classes)
    if (known == 0).any():
        print(f"warning: {int((known == 0).sum())} class(es) have no known positive in the training labels: no "
              f"edge in the label graph (a zero row of P(j | i))", file=sys.stderr)
    return correlation_matrix(partial, spec.num_classes, str(o.adjacency), o.gcn_tau, o.gcn_p)


def build_gcn_ml(cfg, spec, backbone: nn.Module, frozen: list[nn.Module], state=None) -> MLGCN:
    """GCN-ML for `cfg` (options cfg.gcn, embeddings cfg.embeddings) on `spec`'s training labels; from a
    checkpoint's `state` the graph and the embeddings come from the state."""
    from .dsrb import load_embeddings  # the shared reader of --embeddings (learned, with a warning, when absent)

    emb = state["embeddings"] if state is not None else load_embeddings(spec, cfg.embeddings)
    return MLGCN(backbone, spec.num_classes, emb, _graph(cfg, spec, state), frozen, cfg.gcn.gcn_hidden, str(cfg.bce))


def build_p_gcn(cfg, spec, backbone: nn.Module, frozen: list[nn.Module], state=None) -> PGCN:
    """P-GCN for `cfg` (options cfg.gcn) on `spec`'s training labels (the graph from `state` when given)."""
    return PGCN(backbone, spec.num_classes, _graph(cfg, spec, state), frozen, cfg.gcn.gcn_hidden, str(cfg.bce))
