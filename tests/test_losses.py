import torch
import torch.nn.functional as F

from mlrpl_train.losses import contrastive_loss, partial_bce


def test_partial_bce_ignores_unknown_and_matches_bce_on_known():
    x = torch.randn(4, 6)
    t = torch.tensor([[1, -1, 0, 0, 1, -1]] * 4, dtype=torch.int8)
    known = t != 0
    ref = F.binary_cross_entropy_with_logits(x[known].view(4, 4), (t[known].view(4, 4) > 0).float(), reduction="none")
    assert torch.allclose(partial_bce(x, t), ref.mean(dim=1).mean(), atol=1e-6)
    x2 = x.clone()
    x2[:, 2:4] += 100  # unknown entries change nothing
    assert torch.allclose(partial_bce(x2, t), partial_bce(x, t))


def test_soft_targets_and_all_unknown_images():
    x = torch.randn(2, 3, requires_grad=True)
    t = torch.tensor([[0.5, 0.0, -1.0], [0.0, 0.0, 0.0]])
    expected = (F.binary_cross_entropy_with_logits(x[0, 0], torch.tensor(0.5)) + F.softplus(x[0, 2])) / 2
    assert torch.allclose(partial_bce(x, t), expected)
    assert partial_bce(x, torch.zeros(2, 3)).item() == 0.0


def test_contrastive_loss_hand_case():
    f = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]])  # B=3, C=1, D=2
    y = torch.tensor([[1], [1], [-1]])
    # pairs (0,1),(1,0): both positive, cos 1 -> 0; pairs with 2: cos 0 -> 1 each (4 ordered pairs)
    assert contrastive_loss(f, y).item() == 4.0
