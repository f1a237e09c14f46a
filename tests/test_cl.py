"""Curriculum Labeling (Durand et al., CVPR 2019): the normalised partial BCE, the curriculum's choice
of pseudo-labels, worked out by hand, and a resumed training run that ends where an uninterrupted one does."""

import math

import pytest
import torch
import torch.nn as nn

from mlrpl_train.losses import (label_proportion_weight, normalisation_coefficients, normalised_partial_bce,
                                partial_bce)
from mlrpl_train.model.cl import CurriculumLabelingModel, PseudoLabels, binary_entropy_bits, choose_pseudo_labels
from mlrpl_train.options import ClOptions
from trainkit import train_killed_at

LN2 = math.log(2)


def test_normalisation_g_by_hand():
    # g(1) = 1 and g(0.1) = 5: gamma = 1 -> 0.1 a + b = 5, a + b = 1 -> a = -40/9, b = 49/9
    a, b = normalisation_coefficients(1.0, 5.0)
    assert a == pytest.approx(-40 / 9, abs=1e-12) and b == pytest.approx(49 / 9, abs=1e-12)
    g = label_proportion_weight(torch.tensor([1.0, 0.1, 1 / 3, 0.0], dtype=torch.float64))
    assert g.tolist() == pytest.approx([1.0, 5.0, 107 / 27, 0.0], abs=1e-12)  # p = 0: no term to weight
    # gamma = -1 (normalise by the known count): 10 a + b = 5, a + b = 1 -> a = 4/9, b = 5/9; g(1/3) = 17/9
    a, b = normalisation_coefficients(-1.0, 5.0)
    assert (a, b) == (pytest.approx(4 / 9), pytest.approx(5 / 9))
    assert float(label_proportion_weight(torch.tensor([1 / 3], dtype=torch.float64), -1.0)) == pytest.approx(17 / 9)
    with pytest.raises(ValueError, match="gamma 0"):
        normalisation_coefficients(0.0, 5.0)


LOGITS = [[math.log(3), -math.log(3), 0.0], [0.0, 5.0, -7.0]]
TARGETS = torch.tensor([[1, -1, -1], [1, 0, 0]], dtype=torch.int8)


def test_normalised_partial_bce_on_a_2x3_batch_by_hand():
    z = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    loss = normalised_partial_bce(z, TARGETS)
    # image 1: all 3 known (g = 1): [ln(4/3) + ln(4/3) + ln 2] / 3 = ln(32/9) / 3
    # image 2: 1 of 3 known (g(1/3) = 107/27): 107/27 * ln 2 / 3; the loss is the mean of the two
    want = (math.log(32 / 9) / 3 + 107 / 81 * LN2) / 2
    assert float(loss.detach()) == pytest.approx(want, abs=1e-12) == pytest.approx(0.6692379883, abs=1e-9)
    # the plausible other forms differ: one mean over the 4 known entries, and per image / known count (eq. 14)
    assert float(partial_bce(z.detach(), TARGETS, "batch")) == pytest.approx((math.log(32 / 9) + LN2) / 4, abs=1e-12)
    assert float(partial_bce(z.detach(), TARGETS, "per-image")) == pytest.approx((math.log(32 / 9) / 3 + LN2) / 2, abs=1e-12)
    assert abs(want - (math.log(32 / 9) + LN2) / 4) > 0.1 and abs(want - (math.log(32 / 9) / 3 + LN2) / 2) > 0.1
    loss.backward()
    # d/dz of image 2's known positive at z = 0: (1/B) g/C (sigmoid(0) - 1) = 1/2 * 107/81 * -1/2 = -107/324
    assert float(z.grad[1, 0]) == pytest.approx(-107 / 324, abs=1e-12)
    assert float(z.grad[1, 1]) == 0.0 and float(z.grad[1, 2]) == 0.0  # unknown: no gradient


def test_unknown_labels_contribute_nothing():
    z = torch.tensor(LOGITS, dtype=torch.float64)
    moved = z.clone()
    moved[1, 1:] = torch.tensor([-40.0, 60.0])  # only the unknown entries change
    assert float(normalised_partial_bce(moved, TARGETS)) == float(normalised_partial_bce(z, TARGETS))
    # nothing known at all: 0, with a graph
    empty = torch.zeros(2, 3, dtype=torch.int8)
    z.requires_grad_()
    loss = normalised_partial_bce(z, empty)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.count_nonzero(z.grad) == 0


# ---- the curriculum's choice --------------------------------------------------------------------------------

SCORES = torch.tensor([[5.0, -2.5, 0.5, -4.0],
                       [1.9, -0.1, 2.1, 6.0],
                       [-3.0, 2.0, -1.0, 0.0]])
PARTIAL = torch.tensor([[1, 0, 0, 0],
                        [0, 0, 0, -1],
                        [0, 0, 0, 0]], dtype=torch.int8)
UNKNOWN = PARTIAL == 0


def test_score_threshold_choice_by_hand():
    got = choose_pseudo_labels(SCORES, UNKNOWN, "threshold", score_threshold=2.0)
    # |x| > 2 on unknown entries only: (0,1) -2.5, (0,3) -4, (1,2) 2.1, (2,0) -3; (2,1) = 2.0 is not above 2;
    # the known (0,0) (x = 5) and (1,3) (known -1, x = +6) are never chosen
    assert got.tolist() == [[0, -1, 0, -1], [0, 0, 1, 0], [-1, 0, 0, 0]]
    assert choose_pseudo_labels(SCORES, UNKNOWN, "positive", score_threshold=2.0).tolist() == [
        [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_score_proportion_choice_by_hand():
    # 10 unknown entries, 30% -> the 3 most confident: |x| = 4.0 (0,3), 3.0 (2,0), 2.5 (0,1), all negatives.
    # (A fraction of ALL 12 entries would take 4, adding (1,2) = 2.1; the known 5.0 and 6.0 are never taken.)
    got = choose_pseudo_labels(SCORES, UNKNOWN, "proportion", label_fraction=0.3)
    assert got.tolist() == [[0, -1, 0, -1], [0, 0, 0, 0], [-1, 0, 0, 0]]
    # ties keep row-major order: two entries of |x| = 1, one place
    tie = choose_pseudo_labels(torch.tensor([[1.0, -1.0]]), torch.tensor([[True, True]]), "proportion",
                               label_fraction=0.5)
    assert tie.tolist() == [[1, 0]]


def test_bayesian_uncertainty_choice_by_hand():
    # entropy in bits of the MC-mean probability: H(0.95) = 0.2864, H(0.94) = 0.3274, H(0.9) = 0.4690,
    # H(0.02) = 0.1414, H(0.001) = 0.0114, H(0.5) = 1
    h = binary_entropy_bits(torch.tensor([0.95, 0.94, 0.9, 0.02, 0.001, 0.5], dtype=torch.float64))
    assert h.tolist() == pytest.approx([0.286397, 0.327445, 0.468996, 0.141441, 0.011408, 1.0], abs=1e-6)
    probs = torch.tensor([[0.99, 0.02, 0.9, 0.95],
                          [0.5, 0.94, 0.97, 0.01],
                          [0.001, 0.6, 0.05, 0.5]])
    got = choose_pseudo_labels(SCORES, UNKNOWN, "bayes", max_uncertainty=0.3, mc_probs=probs)
    # below 0.3 bits and unknown: (0,1) 0.02 -> -1, (0,3) 0.95 -> +1, (1,2) 0.97 -> +1, (2,0) -> -1, (2,2) -> -1;
    # (1,1) 0.94 is just above; the known (0,0) and (1,3) stay as they are
    assert got.tolist() == [[0, -1, 0, 1], [0, 0, 1, 0], [-1, 0, -1, 0]]
    with pytest.raises(ValueError, match="mc_probs"):
        choose_pseudo_labels(SCORES, UNKNOWN, "bayes")


def test_pseudo_labels_never_replace_a_known_label_and_are_checkpointed():
    table = PseudoLabels()
    labels = torch.tensor([[0, -1, 0, -1], [0, 0, 1, 1]], dtype=torch.int8)
    assert table.record(["a", "b"], labels) == 4
    partial = torch.tensor([[1, 0, 0, 0], [0, 0, -1, 0], [0, 0, 0, 0]], dtype=torch.int8)
    got = table.apply(["a", "b", "c"], partial)
    # b's pseudo +1 at class 2 does not replace its known -1; c has no pseudo-label
    assert got.tolist() == [[1, -1, 0, -1], [0, 0, -1, 1], [0, 0, 0, 0]]
    assert table.count() == (4, 2)
    assert table.record(["c", "a"], torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.int8)) == 1
    other = PseudoLabels()
    other.load_state_dict(table.state_dict())
    assert other.as_dict() == table.as_dict() == {"a": {0: 1, 1: -1, 3: -1}, "b": {2: 1, 3: 1}}  # c: none
    assert other.apply(["a"], torch.tensor([[-1, 0, 0, 0]], dtype=torch.int8)).tolist() == [[-1, -1, 0, -1]]


class Features(nn.Module):
    """A stand-in backbone: the image's first D values as a (B, D, 1, 1) map."""

    out_channels = 4

    def forward(self, x):
        return x.flatten(1)[:, :4, None, None]


def test_an_unknown_label_has_no_gradient_until_pseudo_labelled():
    torch.manual_seed(0)
    model = CurriculumLabelingModel(Features(), 3, [], ClOptions(head_dropout=0.0, curriculum="threshold"))
    x = torch.randn(2, 1, 2, 2)
    partial = torch.tensor([[1, -1, 0], [-1, 0, 0]], dtype=torch.int8)  # class 2 unknown everywhere
    loss, _ = model(x, partial=partial, keys=["a", "b"])
    loss.backward()
    assert torch.count_nonzero(model.fc.weight.grad[2]) == 0 and float(model.fc.bias.grad[2]) == 0.0
    assert torch.count_nonzero(model.fc.weight.grad[0]) > 0
    model.zero_grad()
    model.pseudo.record(["b"], torch.tensor([[0, 0, 1]], dtype=torch.int8))
    loss2, logs = model(x, partial=partial, keys=["a", "b"])
    loss2.backward()
    assert torch.count_nonzero(model.fc.weight.grad[2]) > 0 and logs["pseudo_labels"] == 1.0
    # b now has 2 of 3 labels (g(2/3) = 67/27 instead of g(1/3) = 107/27) and a term more
    assert float(loss2.detach()) != float(loss.detach())


# ---- through the engine ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from trainkit import tiny_training_set

    return tiny_training_set(tmp_path_factory.mktemp("cl"), n_train=16, n_test=8)


def cl_config(data, out, **cl):
    from mlrpl_train.options import TrainConfig

    opts = {"label_start": 1, "max_uncertainty": 0.995, **cl}
    return TrainConfig(method="cl", dataset=str(data), masks="uniform-p0.50-s0", out=str(out), backbone="tiny",
                       weights="none", freeze="none", epochs=3, batch_size=4, lr=3e-3, image_size=32, workers=0,
                       progress=False, shuffle_buffer=8, val_fraction=0.0, cl=ClOptions(**opts))


def test_cl_trains_and_a_resumed_run_ends_with_the_same_pseudo_labels_and_weights(data, tmp_path, monkeypatch):
    import csv

    from mlrpl_train.checkpoint import load_checkpoint, load_run_config
    from mlrpl_train.data import resolve_data
    from mlrpl_train.engine import train

    ref = train(cl_config(data, tmp_path / "ref"))
    c = cl_config(data, tmp_path / "killed")
    c.checkpoint_every = 2
    # 4 batches per epoch: step 7 is the 3rd of epoch 2, after its first labelling
    train_killed_at(c, 7, monkeypatch)
    mid = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert (mid["epoch"], mid["step"]) == (1, 2) and mid["model"]["pseudo._extra_state"]["keys"]  # labelled, killed
    train(load_run_config(tmp_path / "killed"), resume=True)
    a, b = load_checkpoint(ref / "last.pt")["model"], load_checkpoint(tmp_path / "killed" / "last.pt")["model"]
    pseudo, other = a.pop("pseudo._extra_state"), b.pop("pseudo._extra_state")
    assert pseudo["keys"] == other["keys"] and torch.equal(pseudo["labels"], other["labels"])
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # two labelling rounds (epochs 2 and 3): pseudo-labels only where the mask's label is unknown
    partial = resolve_data(str(data), "uniform-p0.50-s0").partial
    entries = [(key, j, int(pseudo["labels"][i, j])) for i, key in enumerate(pseudo["keys"])
               for j in pseudo["labels"][i].nonzero().flatten().tolist()]
    assert len(entries) > 0 and all(partial[key][j] == 0 and v in (-1, 1) for key, j, v in entries)
    rows = list(csv.DictReader(open(ref / "metrics.csv")))
    resumed = list(csv.DictReader(open(tmp_path / "killed" / "metrics.csv")))
    assert [r["mAP"] for r in rows] == [r["mAP"] for r in resumed] and len(rows) == 3
    assert float(rows[-1]["mAP"]) > 0.6  # it learns (chance is about 0.45)


def test_bad_options_are_one_line_errors_naming_the_flag():
    from mlrpl_data.errors import BadInputError

    from mlrpl_train.options import TrainConfig

    def cl(**kw):  # CL's own rules hold when cl is the method trained
        return TrainConfig(method="cl", dataset="d", cl=ClOptions(**kw))

    with pytest.raises(BadInputError, match=r"^--norm-gamma 0: .*use a non-zero gamma"):
        cl(norm_gamma=0.0)
    with pytest.raises(BadInputError, match=r"^--curriculum bayes with --head-dropout 0: "):
        cl(head_dropout=0.0)
    with pytest.raises(BadInputError, match=r"^--bce per-image: CL trains with its own normalised partial BCE"):
        TrainConfig(method="cl", dataset="d", bce="per-image")
    with pytest.raises(BadInputError, match=r"--label-fraction"):
        ClOptions(label_fraction=1.5)  # a range: checked for every method
    cl(head_dropout=0.0, curriculum="threshold")  # no MC sampling: no dropout needed
    TrainConfig(method="pbce", dataset="d", cl=ClOptions(head_dropout=0.0))  # not CL's run: its rules do not apply
