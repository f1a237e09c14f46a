"""GCN-ML and P-GCN: the label graph, the graph layers and the loss against numbers worked out by hand."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from mlrpl_train.model.gcn import (MLGCN, PGCN, adjacency_code, adjacency_paper, conditional_probability,
                                   correlation_matrix, label_counts)
from trainkit import train_killed_at

# Five images, three classes. Known positives: {0,1}, {0,1}, {0,2}, {0}, {2}; the zeros are unknown and
# must not count: counting them as positives would give N = (5, 4, 3) and M01 = 3, M02 = 2, M12 = 2.
PARTIAL = np.array([[1, 1, -1],
                    [1, 1, 0],
                    [1, 0, 1],
                    [1, -1, -1],
                    [0, -1, 1]], dtype=np.int8)


def test_counts_come_from_known_positives_only():
    m, n = label_counts(PARTIAL, 3)
    assert n.tolist() == [4, 2, 2]
    assert m.tolist() == [[0, 2, 1], [2, 0, 0], [1, 0, 0]]  # pairs of different labels: zero diagonal
    # P(j | i) = M_ij / N_i: row 0 = (0, 2/4, 1/4), row 1 = (2/2, 0, 0), row 2 = (1/2, 0, 0)
    assert conditional_probability(m, n).tolist() == [[0, 0.5, 0.25], [1, 0, 0], [0.5, 0, 0]]


def test_code_adjacency_by_hand():
    # tau 0.4: B = [[0,1,0],[1,0,0],[1,0,0]] (P02 = 0.25 falls under it); column sums (2, 1, 0);
    # A = 0.25 B / colsum + I = [[1, .25, 0], [.125, 1, 0], [.125, 0, 1]]; row sums d = (1.25, 1.125, 1.125);
    # gen_adj: A_hat_ij = A_ji / sqrt(d_i d_j)
    s = math.sqrt(1.25 * 1.125)
    want = [[1 / 1.25, 0.125 / s, 0.125 / s],
            [0.25 / s, 1 / 1.125, 0],
            [0, 0, 1 / 1.125]]
    got = correlation_matrix(PARTIAL, 3, "code", tau=0.4)
    assert got.numpy() == pytest.approx(np.array(want), abs=1e-6)
    assert float(got[0, 2]) == pytest.approx(0.1054093, abs=1e-6)  # without the transpose this would be 0
    assert float(got[2, 0]) == 0.0 and float(got[1, 0]) == pytest.approx(0.2108185, abs=1e-6)


def test_paper_adjacency_by_hand():
    # eq. 8 with p = 0.2: each row's one neighbour gets p / 1, the diagonal 1 - p; no transpose, no D^-1/2
    got = correlation_matrix(PARTIAL, 3, "paper", tau=0.4)
    assert got.numpy() == pytest.approx(np.array([[0.8, 0.2, 0], [0.2, 0.8, 0], [0.2, 0, 0.8]]), abs=1e-7)
    # a lower tau lets P02 = 0.25 through: row 0 then has two neighbours, p / 2 each
    low = correlation_matrix(PARTIAL, 3, "paper", tau=0.25)
    assert low[0].tolist() == pytest.approx([0.8, 0.1, 0.1], abs=1e-7)
    # the p of each form: the paper's 0.2 is not the code's 0.25
    assert correlation_matrix(PARTIAL, 3, "paper", tau=0.4, p=0.25)[0].tolist() == pytest.approx([0.75, 0.25, 0])


def test_a_class_without_known_positive_has_a_finite_zero_row(capsys):
    partial = np.concatenate([PARTIAL, np.array([[-1], [0], [-1], [0], [0]], dtype=np.int8)], axis=1)
    m, n = label_counts(partial, 4)
    p = conditional_probability(m, n)
    assert n[3] == 0 and p[3].tolist() == [0, 0, 0, 0] and p[:, 3].tolist() == [0, 0, 0, 0]
    code = correlation_matrix(partial, 4, "code")
    paper = correlation_matrix(partial, 4, "paper")
    assert torch.isfinite(code).all() and torch.isfinite(paper).all()
    assert code[3].tolist() == [0, 0, 0, 1] and code[:, 3].tolist() == [0, 0, 0, 1]  # only its self-loop
    assert paper[3].tolist() == pytest.approx([0, 0, 0, 0.8])
    # the other classes' graph is what it was without the fourth class
    assert code[:3, :3].numpy() == pytest.approx(correlation_matrix(PARTIAL, 3, "code").numpy(), abs=1e-7)
    from types import SimpleNamespace

    from mlrpl_train.model.gcn import _graph
    from mlrpl_train.options import GcnOptions

    spec = SimpleNamespace(num_classes=4, fit_partial=lambda: partial)
    assert torch.equal(_graph(SimpleNamespace(gcn=GcnOptions()), spec, None), code)  # the run's graph, said so:
    assert "1 class(es) have no known positive" in capsys.readouterr().err
    # no training labels at all: the identity (code), 1 - p on the diagonal (paper)
    assert correlation_matrix(None, 2, "code").tolist() == [[1, 0], [0, 1]]
    with pytest.raises(ValueError, match="adjacency form"):
        correlation_matrix(PARTIAL, 3, "kipf")


def test_adjacency_helpers_take_any_probability_matrix():
    p = np.array([[0, 0.9], [0.1, 0]])  # 0 -> 1 strong, 1 -> 0 weak: only B01 = 1
    # code: A = [[1, .25], [0, 1]], d = (1.25, 1): A_hat = [[.8, 0], [.25/sqrt(1.25), 1]]
    assert adjacency_code(p, 0.4, 0.25) == pytest.approx(np.array([[0.8, 0], [0.25 / math.sqrt(1.25), 1]]))
    # paper: row 0 gathers from 1, row 1 has no neighbour
    assert adjacency_paper(p, 0.4, 0.2) == pytest.approx(np.array([[0.8, 0.2], [0, 0.8]]))


class MapBackbone(nn.Module):
    """The input is the feature map: (B, D, h, w) -> the same."""

    def __init__(self, channels: int):
        super().__init__()
        self.out_channels = channels

    def forward(self, x):
        return x


def _identity_gcn(model):
    with torch.no_grad():
        for layer in (model.gc1, getattr(model, "gc2", None)):
            if layer is not None:
                layer.weight.copy_(torch.eye(layer.weight.shape[0], layer.weight.shape[1]))
    return model


def test_ml_gcn_classifiers_and_logits_by_hand():
    adj = torch.tensor([[0.8, 0.2], [0.2, 0.8]])
    emb = torch.tensor([[1.0, -2.0], [3.0, 1.0]])
    model = _identity_gcn(MLGCN(MapBackbone(2), 2, emb, adj, [], hidden=2))
    # A Z = [[1.4, -1.4], [2.6, 0.4]] -> LeakyReLU(0.2) -> [[1.4, -0.28], [2.6, 0.4]] -> A . = W
    w = model.classifiers()
    assert w.shape == (2, 2)
    # (a ReLU would give 0.08 and 0.32 in the second column)
    assert w.detach().numpy() == pytest.approx(np.array([[1.64, -0.144], [2.36, 0.264]]), abs=1e-6)
    # the map's channels: (1, -3) and (2, 0) -> global MAX (1, 2) (the mean would be (-1, 1))
    x = torch.tensor([[[[1.0, -3.0]], [[2.0, 0.0]]]])
    logits = model(x)
    assert logits.shape == (1, 2)
    want = [[1.64 - 2 * 0.144, 2.36 + 2 * 0.264]]  # (1.352, 2.888)
    assert logits.detach().numpy() == pytest.approx(np.array(want), abs=1e-6)


def test_p_gcn_scores_by_hand():
    adj = torch.tensor([[0.8, 0.2], [0.2, 0.8]])
    model = _identity_gcn(PGCN(MapBackbone(2), 2, adj, [], hidden=2))
    with torch.no_grad():
        model.attention.weight.copy_(torch.tensor([[math.log(3), 0.0], [0.0, 0.0]]).view(2, 2, 1, 1))
        model.attention.bias.zero_()
        model.score_w.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        model.score_b.copy_(torch.tensor([0.1, -0.1]))
    # two positions x = (1, -2) and (0, 1): class 0 attends (3/4, 1/4), class 1 (1/2, 1/2)
    x = torch.tensor([[[[1.0, 0.0]], [[-2.0, 1.0]]]])
    feats = model.label_features(x)
    assert feats.detach().numpy() == pytest.approx(np.array([[[0.75, -1.25], [0.5, -0.5]]]), abs=1e-6)
    # A F = [[0.7, -1.1], [0.55, -0.65]] -> LeakyReLU -> [[0.7, -0.22], [0.55, -0.13]];
    # own scores u = (0.48, 0.68); propagated: A u + b = (0.62, 0.54) (without the last propagation 0.58, 0.58)
    logits = model(x)
    assert logits.shape == (1, 2)
    assert logits.detach().numpy() == pytest.approx(np.array([[0.62, 0.54]]), abs=1e-6)


def _ml_gcn_2x3(emb_values):
    return _identity_gcn(MLGCN(MapBackbone(2), 3, torch.tensor(emb_values), torch.eye(3), [], hidden=2))


X2 = torch.tensor([[[[1.0]], [[0.0]]], [[[0.0]], [[1.0]]]])  # pooled features (1, 0) and (0, 1)


def test_loss_on_a_2x3_batch_by_hand():
    # identity graph and weights: W = LeakyReLU(Z) = [[0, 1], [2, 0], [-1, 3]], logits = [[0, 2, -1], [1, 0, 3]]
    model = _ml_gcn_2x3([[0.0, 1.0], [2.0, 0.0], [-5.0, 3.0]])
    assert model(X2).detach().numpy() == pytest.approx(np.array([[0, 2, -1], [1, 0, 3]]), abs=1e-6)
    y = torch.tensor([[1, 1, -1], [0, -1, 1]], dtype=torch.int8)
    # known terms: log 2, softplus(-2), softplus(-1) | softplus(0), softplus(-3)
    terms = [math.log(2), math.log1p(math.exp(-2)), math.log1p(math.exp(-1)), math.log(2), math.log1p(math.exp(-3))]
    loss = model(X2, partial=y)[0].detach()
    assert float(loss) == pytest.approx(sum(terms) / 5, abs=1e-6) == pytest.approx(0.3750142, abs=1e-6)
    model.bce = "per-image"  # eq. 14-15: each image over its own known labels
    loss = model(X2, partial=y)[0].detach()
    assert float(loss) == pytest.approx((sum(terms[:3]) / 3 + sum(terms[3:]) / 2) / 2, abs=1e-6)
    assert float(loss) == pytest.approx(0.3743226, abs=1e-6)


@pytest.mark.parametrize("kind", ["gcn-ml", "p-gcn"])
def test_unknown_labels_contribute_nothing(kind):
    y = torch.tensor([[1, -1, 0], [-1, 1, 0]], dtype=torch.int8)  # class 2 unknown in both images
    torch.manual_seed(0)
    if kind == "gcn-ml":
        model = MLGCN(MapBackbone(2), 3, None, torch.eye(3), [], hidden=4)
        own = model.embeddings  # with the identity graph, row 2 moves class 2's logits only
    else:
        model = PGCN(MapBackbone(2), 3, torch.eye(3), [], hidden=4)
        own = model.score_w
    x = torch.randn(2, 2, 2, 3)
    loss, _ = model(x, partial=y)
    loss.backward()
    assert own.grad[2].abs().max() == 0 and own.grad[:2].abs().max() > 0
    before = model(x)
    with torch.no_grad():
        own[2] += 5.0
    after = model(x)
    assert (after[:, 2] - before[:, 2]).abs().min() > 0.01  # the unknown entries' logits did change
    assert torch.equal(after[:, :2], before[:, :2])
    assert float(model(x, partial=y)[0].detach()) == float(loss.detach())  # and the loss did not


# ---- through the engine: train, resume mid-epoch, evaluate ----------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from trainkit import tiny_training_set

    return tiny_training_set(tmp_path_factory.mktemp("gcn"), n_train=32, n_test=8)


def _config(data, out, method, **kw):
    from mlrpl_train.options import GcnOptions, TrainConfig

    base = dict(method=method, dataset=str(data), masks="uniform-p0.50-s0", out=str(out), backbone="tiny",
                weights="none", freeze="none", epochs=3, batch_size=4, lr=3e-3, image_size=32, workers=0,
                progress=False, shuffle_buffer=8, val_fraction=0.0, checkpoint_every=3, gcn=GcnOptions(gcn_hidden=16))
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("method", ["gcn-ml", "p-gcn"])
def test_train_resume_and_evaluate(data, tmp_path, monkeypatch, method, capsys):
    import csv

    from mlrpl_train.checkpoint import load_checkpoint, load_run_config
    from mlrpl_train.data import resolve_data
    from mlrpl_train.engine import train
    from mlrpl_train.reports import evaluate_checkpoint

    ref = train(_config(data, tmp_path / "ref", method))
    if method == "gcn-ml":  # the trainkit set has no label_embeddings.npy: learned, and said so
        assert "no label embeddings" in capsys.readouterr().err
        from mlrpl_train.model.dsrb import load_embeddings

        monkeypatch.setenv("RANK", "1")  # another rank of --nproc: rank 0 has said it
        assert load_embeddings(resolve_data(str(data), None), None) is None and capsys.readouterr().err == ""
        monkeypatch.delenv("RANK")
    state = load_checkpoint(ref / "last.pt")["model"]
    spec = resolve_data(str(data), "uniform-p0.50-s0", 0.0)
    # the graph is the mask's known positives' (the code form by default), carried in the checkpoint
    assert torch.equal(state["adjacency"], correlation_matrix(spec.fit_partial(), 3, "code"))
    rows = list(csv.DictReader(open(ref / "metrics.csv")))
    assert len(rows) == 3 and float(rows[-1]["mAP"]) > 0.6  # it learns (chance is about 0.45)

    # 8 batches per epoch: the 5th step of epoch 2, after its step-3 checkpoint
    train_killed_at(_config(data, tmp_path / "killed", method), 13, monkeypatch)
    mid = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert (mid["epoch"], mid["step"]) == (1, 3)
    train(load_run_config(tmp_path / "killed"), resume=True)
    resumed = load_checkpoint(tmp_path / "killed" / "last.pt")["model"]
    assert state.keys() == resumed.keys()
    for k in state:
        assert torch.equal(state[k], resumed[k]), k
    m = evaluate_checkpoint(ref, str(data), tmp_path / "report", workers=0)
    assert m["checkpoint"]["method"] == method and m["mAP"] == pytest.approx(float(rows[-1]["mAP"]), abs=1e-6)


def test_gcn_ml_reads_the_embeddings_file_and_the_paper_graph(data, tmp_path):
    from mlrpl_train.checkpoint import load_checkpoint
    from mlrpl_train.engine import train
    from mlrpl_train.options import GcnOptions

    emb = np.arange(15, dtype=np.float32).reshape(3, 5) / 10
    np.save(tmp_path / "emb.npy", emb)
    run = train(_config(data, tmp_path / "run", "gcn-ml", epochs=1, embeddings=str(tmp_path / "emb.npy"),
                        gcn=GcnOptions(gcn_hidden=8, adjacency="paper", gcn_tau=0.3)))
    state = load_checkpoint(run / "last.pt")["model"]
    assert torch.equal(state["embeddings"], torch.from_numpy(emb))  # a file's embeddings are not trained
    from mlrpl_train.data import resolve_data

    partial = resolve_data(str(data), "uniform-p0.50-s0", 0.0).fit_partial()
    assert torch.equal(state["adjacency"], correlation_matrix(partial, 3, "paper", tau=0.3))
    assert state["gc1.weight"].shape == (5, 8) and state["gc2.weight"].shape == (8, 128)  # E -> hidden -> D


def test_a_checkpoint_without_a_graph_is_refused_in_one_line():
    from types import SimpleNamespace

    from mlrpl_data.errors import BadInputError
    from mlrpl_train.model.gcn import build_p_gcn

    cfg = SimpleNamespace(method="p-gcn")
    with pytest.raises(BadInputError, match="no label graph .*evaluate it with the method it was trained with"):
        build_p_gcn(cfg, SimpleNamespace(num_classes=3), MapBackbone(2), [], state={"score_b": torch.zeros(3)})


def test_sweep_tables_show_the_published_rows_and_p_gcn_as_its_authors_reported(tmp_path):
    from mlrpl_train.sweep import write_table

    for method, (m10, m50) in (("gcn-ml", (0.60, 0.70)), ("p-gcn", (0.65, 0.75))):
        for p, m in ((0.1, m10), (0.5, m50)):
            run = tmp_path / f"{method}-p{p:.2f}-s0"
            run.mkdir()
            (run / "metrics.csv").write_text(f"epoch,mAP,mAP_voc,OF1,CF1\n1,{m},{m},0.5,0.4\n")
    write_table(tmp_path, dataset="coco2014")
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert "| GCN-ML (published) | 63.8 | 76.7 | 70.2 | 73.1 | 68.4 |" in lines  # Table 1, MS-COCO, 10% and 50%
    assert "| Δ gcn-ml − published | -3.8 | -6.7 | -5.2 | | |" in lines
    assert "| P-GCN (published, reported by its authors) | 67.5 | 77.4 | 72.5 | - | - |" in lines  # no OF1/CF1
    assert any(ln.startswith("P-GCN (published): reported by its authors") for ln in lines)
    write_table(tmp_path, dataset="vg200")  # the paper has no P-GCN figure on VG-200: "-", never a number
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert "| P-GCN (published, reported by its authors) | - | - | - | - | - |" in lines
    assert "| Δ p-gcn − published | - | - | - | | |" in lines
    assert "| GCN-ML (published) | 32.0 | 39.6 | 35.8 | 38.7 | 25.6 |" in lines


def test_evaluate_marks_p_gcn_published_figures_as_its_authors(monkeypatch):
    from mlrpl_data.specs import load_spec
    from mlrpl_train import reports

    from mlrpl_train.published import whole_counts

    monkeypatch.setattr(reports, "read_card", lambda d: {"name": "coco2014", "counts": whole_counts("coco2014")})
    coco = [c["name"] for c in load_spec("coco80")["categories"]]
    pub = reports._published_beside("d", coco, "p-gcn", "uniform-p0.10-s0", {"mAP_voc": 0.7})
    assert pub["source"] == "arXiv 2205.13092, Table 1; reported by its authors"
    assert pub["mAP"] == pytest.approx(0.675) and pub["delta_mAP_voc"] == pytest.approx(0.025)
    pub = reports._published_beside("d", coco, "gcn-ml", "uniform-p0.10-s0", {"mAP_voc": 0.7})
    assert pub["source"] == "arXiv 2205.13092, Table 1" and pub["mAP"] == pytest.approx(0.638)


def test_tau_zero_links_no_class_that_never_co_occurs():
    """P >= 0 holds everywhere: at --gcn-tau 0 only observed co-occurrence (P > 0) makes an edge, so a
    class without a known positive keeps no edge (the warning's claim), in both forms."""
    from mlrpl_train.model.gcn import correlation_matrix

    partial = np.array([[1, 1, 0], [1, 0, -1]])
    code = correlation_matrix(partial, 3, "code", tau=0.0)
    assert code[2].tolist() == [0.0, 0.0, 1.0] and code[:, 2].tolist() == [0.0, 0.0, 1.0]
    paper = correlation_matrix(partial, 3, "paper", tau=0.0, p=0.2)
    assert paper[2].tolist() == pytest.approx([0.0, 0.0, 0.8]) and paper[0].tolist() == pytest.approx([0.8, 0.2, 0.0])


def test_resume_after_the_embeddings_appeared_is_one_clear_line(tmp_path):
    """Learned in the run (no file), then `embed-labels` before the resume: the model built now has a
    buffer where the checkpoint has a parameter. One line naming the file and the fix, not Adam's error."""
    import dataclasses

    from mlrpl_data.errors import BadInputError
    from mlrpl_train.engine import train
    from trainkit import tiny_training_set

    d = tiny_training_set(tmp_path / "d", n_train=8, n_test=4)
    cfg = _config(d, tmp_path / "run", "gcn-ml", epochs=1, checkpoint_every=0)
    train(cfg)
    np.save(d / "label_embeddings.npy", np.ones((3, 300), dtype=np.float32))
    with pytest.raises(BadInputError, match=r"last\.pt: the model built for this resume differs .*learned in the run"):
        train(dataclasses.replace(cfg, epochs=2), resume=True)
