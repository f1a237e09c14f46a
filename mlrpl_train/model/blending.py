"""IPRB (eq. 6-9) and PPRB (eq. 10-13) in the cheap form, and the choices they share with the
naive feature-map form (`naive.py`).

The cheap form. The category-specific map of class c is F_c(h, w) = a_c(h, w) x(h, w) and its
representation is f_c = sigma(F_c) = sum_hw F_c(h, w). Both blends are linear in the maps and
sigma is a sum, so sigma(A F^n + (1 - A) F^m) = A f^n + (1 - A) f^m, and a prototype map
enters only through its pooled vector. The blends therefore run on (B, C, D) vectors and
(C, cells, D) prototypes; only the (B, C, H, W) peak map is needed to pick cells.
"""

from __future__ import annotations

import numpy as np
import torch


def iprb_mask(y: torch.Tensor) -> torch.Tensor:
    """(B, C) bool: blend where y^n_c = 0 (unknown) and the mirror image y^m_c = 1 (eq. 6)."""
    return (y == 0) & (torch.flip(y, dims=[0]) == 1)


def iprb_blend(f: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8-9 on vectors: f (B, C, D), y (B, C), alpha (C,) -> (f_hat, y_hat).

    Image n is paired with its mirror m = B - 1 - n in the batch (Algorithm 1)."""
    blend = iprb_mask(y)
    a = torch.where(blend, alpha.to(f.dtype).expand_as(y), torch.ones_like(y, dtype=f.dtype))  # A of eq. 8
    f_hat = a.unsqueeze(-1) * f + (1 - a).unsqueeze(-1) * torch.flip(f, dims=[0])
    y_hat = a * y.to(f.dtype) + (1 - a) * torch.flip(y, dims=[0]).to(f.dtype)  # eq. 9: 1 - alpha where blended
    return f_hat, y_hat


def peak_cells(peak_map: torch.Tensor, grid_k: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C) index of the 2^K x 2^K grid cell holding each class's peak.

    A row belongs to band min(row // (H // g), g - 1) (columns alike): at K = 1 a 7x7 map splits
    at H // 2 = 3 (rows 0-2 top, 3-6 bottom), as the authors' `index >= halfSize` does."""
    b, c, h, w = peak_map.shape
    g = 2 ** grid_k
    idx = peak_map.flatten(2).argmax(dim=2)
    row, col = idx // w, idx % w
    band_r, band_c = max(1, h // g), max(1, w // g)
    return (row // band_r).clamp(max=g - 1) * g + (col // band_c).clamp(max=g - 1)


def choose_pprb(y: torch.Tensor, own_cell: torch.Tensor, proto_valid: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image one random UNKNOWN class with a prototype, and a random prototype cell other
    than the image's own cell for that class (eq. 10, 12).

    y (B, C), own_cell (B, C), proto_valid (C, cells) bool -> (cls (B,), cell (B,)); cls = -1
    for an image with no unknown class that has a prototype (nothing is blended then).
    Cells without a prototype are never chosen; when a class's only prototype is the image's
    own cell, that cell is used (there is no other). An own cell of -1 (K-means prototypes,
    which have no location) excludes nothing: the draw is uniform over the class's non-empty
    centres. SARB's code draws one centre index per batch for every image; here each image draws
    its own (the same uniform marginal, and never an empty slot of a class with fewer than K
    known positives)."""
    b, c = y.shape
    cells = proto_valid.shape[1]
    cand = (y == 0) & proto_valid.any(dim=1).unsqueeze(0)  # unknown and blendable
    u = torch.rand((b, c), generator=generator)
    score = torch.where(cand, u, torch.full_like(u, -1.0))
    cls = score.argmax(dim=1)
    cls = torch.where(cand.any(dim=1), cls, torch.full_like(cls, -1))
    safe = cls.clamp(min=0)
    valid = proto_valid[safe]  # (B, cells)
    own = own_cell.gather(1, safe.unsqueeze(1)).squeeze(1).cpu()
    other = valid & (torch.arange(cells).unsqueeze(0) != own.unsqueeze(1))
    pick_from = torch.where(other.any(dim=1, keepdim=True), other, valid)
    v = torch.rand((b, cells), generator=generator)
    cell = torch.where(pick_from, v, torch.full_like(v, -1.0)).argmax(dim=1)
    return cls, cell


def pprb_mask(cls: torch.Tensor, num_classes: int, device=None) -> torch.Tensor:
    """(B, C) bool: the (image, class) PPRB blends, from choose_pprb's `cls` (-1: none)."""
    mask = torch.zeros((len(cls), num_classes), dtype=torch.bool, device=device)
    rows = torch.nonzero(cls >= 0).squeeze(1)
    mask[rows.to(device), cls[rows].to(device)] = True
    return mask


def pprb_blend(f: torch.Tensor, y: torch.Tensor, beta: torch.Tensor, prototypes: torch.Tensor,
               cls: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 12-13 on vectors: f (B, C, D), prototypes (C, cells, D) -> (f_tilde, y_tilde)."""
    b, c, _ = f.shape
    onehot = pprb_mask(cls, c, f.device)
    rows = torch.nonzero(cls >= 0).squeeze(1).to(f.device)
    bmat = torch.where(onehot, beta.to(f.dtype).expand(b, c), torch.ones((b, c), dtype=f.dtype, device=f.device))
    proto = prototypes[cls.clamp(min=0).to(f.device), cell.to(f.device)].to(f.dtype)  # (B, D): p^k of the chosen class
    p = torch.zeros_like(f)
    p[rows, cls.to(f.device)[rows]] = proto[rows]
    f_tilde = bmat.unsqueeze(-1) * f + (1 - bmat).unsqueeze(-1) * p
    y_tilde = bmat * y.to(f.dtype) + (1 - bmat)  # eq. 13: 1 - beta where blended
    return f_tilde, y_tilde


def accumulate_prototypes(f: torch.Tensor, y: torch.Tensor, own_cell: torch.Tensor, cells: int,
                          sums: torch.Tensor, counts: torch.Tensor) -> None:
    """Add the representations of every KNOWN positive (y = 1) to its class's cell (in place).

    f (B, C, D), own_cell (B, C); sums (C, cells, D), counts (C, cells)."""
    pos = y == 1
    n_idx, c_idx = torch.nonzero(pos, as_tuple=True)
    k_idx = own_cell[n_idx, c_idx]
    flat = c_idx * cells + k_idx
    sums.view(-1, sums.shape[-1]).index_add_(0, flat, f[n_idx, c_idx].to(sums.dtype))
    counts.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=counts.dtype))


def kmeans_prototypes(vectors: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SARB's prototypes of one class: K-means centres of its known positives' representations.

    vectors (N, D) float, in a fixed order (the caller sorts them by sample key); -> centres (k, D)
    float32 and sizes (k,) int64, the number of vectors in each centre's cluster. As SARB's
    `computePrototype` (HCP-MLR-PL model/SARB.py): scikit-learn's KMeans with k clusters, but
    seeded (random_state=seed) with n_init=10 fixed (the authors' scikit-learn default then), so a
    run and its resume compute the same centres. N <= k (SARB's KMeans raises there): each vector
    is its own centre and the k - N other slots are empty (size 0, never chosen by choose_pprb);
    N = 0: every slot is empty."""
    n, d = vectors.shape
    centres = np.zeros((k, d), dtype=np.float32)
    sizes = np.zeros(k, dtype=np.int64)
    if n <= k:
        centres[:n], sizes[:n] = vectors, 1
        return centres, sizes
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    from threadpoolctl import threadpool_limits

    # one thread: a multithreaded fit sums its per-thread buffers in lock order, so a resume could differ in the
    # last bits; fewer distinct vectors than k: the surplus clusters come back empty
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(np.asarray(vectors, dtype=np.float64))
    centres[:] = km.cluster_centers_
    sizes[:] = np.bincount(km.labels_, minlength=k)
    return centres, sizes
