"""KGGR (mlrpl_train/model/kggr.py) against cases worked out by hand, and on the engine."""

import math

import numpy as np
import pytest
import torch

from mlrpl_train.model.backbone import build_backbone
from mlrpl_train.model.kggr import KGGR, knowledge_graph
from mlrpl_train.options import KggrOptions

# 5 training images, 3 classes: 1 known positive, -1 known negative, 0 unknown
PARTIAL = np.array([[1, 1, 0],
                    [1, -1, 1],
                    [1, 0, 0],
                    [0, 1, 1],
                    [-1, 1, -1]], dtype=np.int8)
# known positives: class 0 in images 0, 1, 2 (3); class 1 in 0, 3, 4 (3); class 2 in 1, 3 (2);
# together: 0&1 in image 0, 0&2 in image 1, 1&2 in image 3 (one each). A[i, j] = #(i, j) / #i:
GRAPH = [[1, 1 / 3, 1 / 3],
         [1 / 3, 1, 1 / 3],
         [1 / 2, 1 / 2, 1]]


def tiny_kggr(num_classes=3, partial=PARTIAL, dim=1, steps=1, embeddings=None, bce="batch") -> KGGR:
    torch.manual_seed(0)
    opts = KggrOptions(kggr_feat_dim=dim, kggr_attn_dim=4, kggr_steps=steps)
    return KGGR(build_backbone("tiny", "none"), num_classes, embeddings, knowledge_graph(partial, num_classes),
                opts, frozen=[], bce=bce)


def test_graph_from_known_positives_by_hand():
    a = knowledge_graph(PARTIAL, 3)
    assert np.allclose(a.numpy(), np.array(GRAPH), atol=1e-7, rtol=0)
    # unknown labels do not count: taking them as positives would give A[0, 1] = 2/4 (images 0, 3 of 0, 1, 2, 3)
    assert float(a[0, 1]) == pytest.approx(1 / 3, abs=1e-7)
    # rows are conditioned on the row class: A[2, 0] = P(0 | 2) = 1/2, while P(2 | 0) = A[0, 2] = 1/3
    assert float(a[2, 0]) == pytest.approx(0.5, abs=1e-7) and float(a[0, 2]) == pytest.approx(1 / 3, abs=1e-7)
    model = tiny_kggr()
    # both graph networks use that graph: in-messages along A, out-messages along A^T
    for net in (model.feature_graph, model.classifier_graph):
        assert torch.equal(net.adj_in, a) and torch.equal(net.adj_out, a.t())


def hand_set_step(net) -> None:
    """One propagation step with D = 1: z = r = sigmoid(0) = 1/2, candidate tanh(A h + 2 A^T h + r h)."""
    with torch.no_grad():
        net.w_a.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0]]))  # rows: z, r, candidate
        net.w_a.bias.zero_()
        net.u_zr.weight.zero_()
        net.u_h.weight.fill_(1.0)


def test_one_propagation_step_by_hand():
    model = tiny_kggr()
    net = model.feature_graph
    hand_set_step(net)
    h = torch.tensor([[[1.0], [-1.0], [2.0]]])  # (B=1, C=3, D=1)
    # A h = (4/3, 0, 2), A^T h = (5/3, 1/3, 2): candidate input (31/6, 1/6, 7); h' = h/2 + tanh(.)/2
    want = [0.5 + 0.5 * math.tanh(31 / 6), -0.5 + 0.5 * math.tanh(1 / 6), 1 + 0.5 * math.tanh(7)]
    assert want == pytest.approx([0.9999674706, -0.4174297935, 1.4999991685], abs=1e-9)
    got = net(h)[0, :, 0].tolist()
    assert got == pytest.approx(want, abs=1e-6)
    # the messages the other way round (A^T in, A out) would give -0.5826 for class 1
    assert got[1] != pytest.approx(-0.5825702065, abs=1e-3)


def test_classifier_propagation_and_score_by_hand():
    model = tiny_kggr()
    hand_set_step(model.classifier_graph)
    with torch.no_grad():
        model.cls_w.copy_(torch.tensor([[1.0], [-1.0], [2.0]]))  # w_c, the nodes' initial states
        model.cls_b.copy_(torch.tensor([0.1, 0.0, -0.1]))
        model.fc_w.weight.copy_(torch.tensor([[1.0, 0.5]]))  # w* = g^T + w/2
        model.fc_w.bias.zero_()
    w_star = model.classifiers()[:, 0].tolist()
    assert w_star == pytest.approx([1.4999674706, -0.9174297935, 2.4999991685], abs=1e-6)
    o = torch.tensor([[[0.5], [-0.2], [0.8]]])
    # s_c = o_c w*_c w_c + b_c; without the product with w_c (o_c w*_c + b_c) class 1 would score +0.1835, class 2 1.9
    s = model.scores(o, model.classifiers())[0].tolist()
    assert s == pytest.approx([0.8499837353, -0.1834859587, 3.8999986696], abs=1e-6)


def test_unknown_labels_contribute_nothing():
    model = tiny_kggr()
    targets = torch.tensor([[1, 0, -1], [0, 1, 0]], dtype=torch.int8)
    unknown = targets == 0
    logits = torch.tensor([[2.0, 5.0, -1.0], [7.0, 0.5, -3.0]], requires_grad=True)
    loss = model.loss(logits, targets)
    # one mean over the 3 known entries: softplus(-2), softplus(-1), softplus(-0.5); with the unknown entries
    # scored as negatives it would be 2.1617
    assert float(loss.detach()) == pytest.approx((0.1269280110 + 0.3132616875 + 0.4740769842) / 3, abs=1e-8)
    assert float(loss.detach()) == pytest.approx(0.3047555609, abs=1e-8)
    loss.backward()
    assert logits.grad[unknown].abs().max() == 0
    other = logits.detach().clone()
    other[unknown] = torch.tensor([-40.0, 12.0, 0.3])
    other.requires_grad_(True)
    loss2 = model.loss(other, targets)
    loss2.backward()
    assert float(loss2.detach()) == float(loss.detach())
    assert torch.equal(other.grad, logits.grad)
    # --bce per-image: each image over its own known labels, then the mean over images
    per_image = tiny_kggr(bce="per-image").loss(logits.detach(), targets)
    assert float(per_image) == pytest.approx(((0.1269280110 + 0.3132616875) / 2 + 0.4740769842) / 2, abs=1e-8)


def test_class_without_known_positive_is_finite():
    partial = np.array([[1, 1, 0], [1, 0, -1], [0, 1, 0]], dtype=np.int8)  # class 2: never a known positive
    a = knowledge_graph(partial, 3)
    assert a[2].tolist() == [0, 0, 0] and a[:, 2].tolist() == [0, 0, 0]
    assert a[:2, :2].tolist() == [[1, 0.5], [0.5, 1]]
    model = tiny_kggr(partial=partial, dim=8, steps=3, embeddings=torch.randn(3, 5))
    model.train()
    torch.manual_seed(1)
    loss, _ = model(torch.rand(2, 3, 32, 32), partial=torch.tensor([[1, 0, -1], [0, 1, -1]], dtype=torch.int8))
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.rand(2, 3, 32, 32))).all()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from trainkit import tiny_training_set

    return tiny_training_set(tmp_path_factory.mktemp("kggr"), n_train=32, n_test=24)


def test_kggr_trains_and_evaluates(data, tmp_path):
    import csv

    from mlrpl_train.data import resolve_data
    from mlrpl_train.checkpoint import load_checkpoint
    from mlrpl_train.engine import train
    from mlrpl_train.reports import evaluate_checkpoint
    from mlrpl_train.options import TrainConfig

    emb = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    np.save(tmp_path / "emb.npy", emb)
    cfg = TrainConfig(method="kggr", dataset=str(data), masks="uniform-p0.50-s0", out=str(tmp_path / "run"),
                      embeddings=str(tmp_path / "emb.npy"), backbone="tiny", weights="none", freeze="none",
                      epochs=2, batch_size=4, lr=3e-3, image_size=32, workers=0, progress=False, shuffle_buffer=8,
                      val_fraction=0.0, kggr=KggrOptions(kggr_feat_dim=16, kggr_attn_dim=8, kggr_steps=2))
    run = train(cfg)
    state = load_checkpoint(run / "last.pt")["model"]
    # the graph is the co-occurrence of the mask's KNOWN positives; the embeddings are the --embeddings file
    want = knowledge_graph(resolve_data(str(data), "uniform-p0.50-s0").fit_partial(), 3)
    assert torch.equal(state["feature_graph.adj_in"], want) and torch.equal(state["classifier_graph.adj_out"], want.t())
    assert np.array_equal(state["embeddings"].numpy(), emb)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 2 and all(math.isfinite(float(r["train_loss"])) for r in rows)
    assert float(rows[-1]["mAP"]) > 0.6  # it learns (chance is about 0.45)
    # rebuilt from the checkpoint alone (graph and embeddings from the state): the same test mAP as training logged
    result = evaluate_checkpoint(run, str(data), workers=0)
    assert rows[-1]["mAP_classes"] == "3/3" and result["classes_evaluated"] == 3
    for key in ("mAP", "mAP_voc", "OF1", "CF1"):
        assert result[key] == pytest.approx(float(rows[-1][key]), abs=1e-6), key
    # the exported graphs (torch alone, no mlrpl) give the run's scores
    from mlrpl_train.inference import export_run, load_predictor

    images = sorted((data.parent / "raw" / "val2014").glob("*.jpg"))[:4]
    ref = load_predictor(run, device="cpu").predict(images)
    assert not np.allclose(ref, ref[:1])  # not one constant answer
    for fmt in ("torchscript", "exported"):
        export_run(run, tmp_path / f"{fmt}.pt", fmt)
        np.testing.assert_allclose(load_predictor(tmp_path / f"{fmt}.pt", device="cpu").predict(images), ref, atol=1e-5)
