"""Each loss against a case worked out by hand, in both its forms (authors' code, paper literal)."""

import math

import pytest
import torch
import torch.nn.functional as F

from mlrpl_train.losses import (contrastive_literal, contrastive_published, contrastive_terms, contrastive_weight,
                                partial_bce)

LN2 = math.log(2)


def test_partial_bce_batch_mean_differs_from_per_image_mean():
    # image 0: one known positive at logit 0 -> ln 2; image 1: three known positives at logit 30 -> ~0 each;
    # an unknown entry with a huge logit contributes nothing
    x = torch.tensor([[0.0, 99.0, 0.0, 0.0], [30.0, 30.0, 30.0, -99.0]])
    t = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.int8)
    assert partial_bce(x, t, "batch").item() == pytest.approx(LN2 / 4, abs=1e-9)  # 4 known entries in the batch
    assert partial_bce(x, t, "per-image").item() == pytest.approx(LN2 / 2, abs=1e-9)  # (ln 2 / 1 + 0 / 3) / 2
    assert partial_bce(x, t).item() == partial_bce(x, t, "batch").item()  # the authors' form is the default


def test_partial_bce_negatives_soft_targets_and_nothing_known():
    x = torch.tensor([[0.0, 0.0, 5.0]], requires_grad=True)
    t = torch.tensor([[-1.0, 0.5, 0.0]])
    # -1 at logit 0: ln 2; soft positive 0.5 at logit 0: -(0.5 ln .5 + 0.5 ln .5) = ln 2; mean of 2 known
    assert partial_bce(x, t).item() == pytest.approx(LN2)
    zero = partial_bce(x, torch.zeros(1, 3))
    assert zero.item() == 0.0
    zero.backward()  # still part of the graph


def test_partial_bce_matches_torch_on_known_entries():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g)
    t = torch.tensor([[1, -1, 0, 0, 1, -1]] * 4, dtype=torch.int8)
    known = t != 0
    ref = F.binary_cross_entropy_with_logits(x[known], (t[known] > 0).float())
    assert torch.allclose(partial_bce(x, t), ref, atol=1e-6)


def _hand_batch():
    """B=3, C=2, D=2. Class 0: labels (1, 1, -1); class 1: (0, -1, -1), image 0's label unknown."""
    f = torch.tensor([[[1.0, 0.0], [1.0, 0.0]],
                      [[1.0, 0.0], [1.0, 0.0]],
                      [[0.0, 1.0], [0.0, 1.0]]])
    y = torch.tensor([[1, 0], [1, -1], [-1, -1]])
    return f, y


def test_published_contrastive_hand_case():
    f, y = _hand_batch()
    # class 0: pair (0,1) pos-pos 1 - 1 = 0; (0,2), (1,2) pos-neg 1 + 0 = 1 each
    # class 1: (0,1), (0,2) touch the unknown label of image 0 -> no term; (1,2) neg-neg 1 + 0 = 1
    t = contrastive_terms(f, y)
    assert t["pos_pos"].tolist() == [0.0] and t["pos_neg"].tolist() == [1.0, 1.0] and t["neg_neg"].tolist() == [1.0]
    # P = 1: pos-neg keeps 2 random (both) + the largest -> 1, 1, 1; neg-neg 1 random (all) + the largest -> 1, 1
    # mean of [0, 1, 1, 1, 1, 1] = 5/6
    assert contrastive_published(f, y, torch.Generator().manual_seed(0)).item() == pytest.approx(5 / 6)
    # eq. 3-4 literally: class 0 ordered pairs 0+0+1+1+1+1 = 4; class 1 (unknowns count as "otherwise"):
    # (0,1) 1+1 = 2 twice, (0,2) 1+0 = 1 twice, (1,2) 1+0 = 1 twice = 8; total 12
    assert contrastive_literal(f, y).item() == pytest.approx(12.0)


def test_an_unknown_label_contributes_nothing():
    f, y = _hand_batch()
    moved = f.clone()
    moved[0, 1] = torch.tensor([-3.0, 7.0])  # image 0's representation of class 1, whose label is unknown
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert contrastive_published(moved, y, gen()).item() == pytest.approx(contrastive_published(f, y, gen()).item())
    assert contrastive_literal(moved, y).item() != pytest.approx(contrastive_literal(f, y).item())  # the literal form moves
    grad = torch.autograd.grad(contrastive_published(moved.requires_grad_(), y, gen()), moved)[0]
    assert torch.equal(grad[0, 1], torch.zeros(2))


def test_negatives_are_subsampled_to_2p_random_plus_p_hardest():
    # B=4, C=1: two positives at [1,0], two negatives at [0,1]
    f = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]], [[0.0, 1.0]]])
    y = torch.tensor([[1], [1], [-1], [-1]])
    t = contrastive_terms(f, y)
    assert len(t["pos_pos"]) == 1 and t["pos_neg"].tolist() == [1.0] * 4 and t["neg_neg"].tolist() == [2.0]
    # P = 1: pos-neg 2 random + 1 hardest = three 1s; neg-neg 1 (all there is) + 1 hardest = two 2s
    # mean of [0, 1, 1, 1, 2, 2] = 7/6 (keeping everything would give (0 + 4 + 2) / 6 = 1)
    for seed in range(5):
        assert contrastive_published(f, y, torch.Generator().manual_seed(seed)).item() == pytest.approx(7 / 6)


def test_no_positive_pair_keeps_every_term():
    # B=3, C=1, labels (-1, -1, 1): P = 0 -> keep all: neg-neg (0,1) 1 + 0; pos-neg (0,2) 1 + 1, (1,2) 1 + 0
    f = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]])
    y = torch.tensor([[-1], [-1], [1]])
    assert contrastive_published(f, y).item() == pytest.approx(4 / 3)
    # nothing known at all: zero, with a graph
    z = contrastive_published(f.requires_grad_(), torch.zeros(3, 1, dtype=torch.long))
    assert z.item() == 0.0 and z.requires_grad


def test_the_random_draw_follows_the_generator():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(8, 3, 4, generator=g)
    y = torch.randint(-1, 2, (8, 3), generator=g)
    y[0] = y[1] = 1
    a = contrastive_published(f, y, torch.Generator().manual_seed(5))
    b = contrastive_published(f, y, torch.Generator().manual_seed(5))
    assert a.item() == b.item()


def test_contrastive_weight_ramps_in_over_the_first_epoch_only_in_the_published_form():
    assert contrastive_weight(0.05, epoch=0, progress=0.0, form="published") == 0.0
    assert contrastive_weight(0.05, epoch=0, progress=0.5, form="published") == pytest.approx(0.025)
    assert contrastive_weight(0.05, epoch=1, progress=0.0, form="published") == 0.05
    assert contrastive_weight(0.05, epoch=0, progress=0.5, form="literal") == 0.05
