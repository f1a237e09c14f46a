"""Peak memory measured as torch.cuda.max_memory_allocated would on a GPU, and what --save-memory saves."""

import torch

from mlrpl_train.data import DataSpec
from mlrpl_train.memory import peak_allocated, tensor_bytes
from mlrpl_train.model.factory import build_model
from mlrpl_train.options import DsrbOptions, TrainConfig

MIB = 2**20


def test_peak_allocated_counts_live_tensors_once_and_frees():
    x = torch.zeros(MIB // 4)  # 1 MiB alive before the work

    def work():
        a = torch.ones(MIB // 4)  # +1 -> 1 MiB
        b = torch.ones(MIB // 2)  # +2 -> 3
        del a  # -> 2
        c = torch.ones(MIB)  # +4 -> 6: the peak
        del b, c  # -> 0

    kept, first = peak_allocated(lambda: torch.ones(MIB // 4), torch.device("cpu"))  # stays alive: in the running total
    _, peak = peak_allocated(work, torch.device("cpu"), live=[x, x[:10], x.view(2, -1)])  # views: one storage
    assert first == MIB
    # 1 live + 6; without the frees it would read 8, with every view counted 10, with the tensor
    # kept from the first profiling session in the allocator's running total 8
    assert peak == 7 * MIB


def test_tensor_bytes_counts_each_storage_once():
    w = torch.zeros(10, 10)
    assert tensor_bytes([w, w.t(), w[3], torch.zeros(5, dtype=torch.float64)]) == 400 + 40


def blended_step(save_memory: bool, classes: int = 60) -> tuple[int, int, float, dict[str, torch.Tensor]]:
    """One blended DSRB training step (tiny backbone, wide head): what its forward pass and the whole
    step allocate at their peaks over the model, its loss and its gradients."""
    torch.manual_seed(0)
    opts = DsrbOptions(feat_dim=256, attn_dim=64, blend_start=0, pool2x2=False, save_memory=save_memory)
    cfg = TrainConfig(method="dsrb", dataset="", masks="", backbone="tiny", weights="none", freeze="none",
                      image_size=32, batch_size=8, dsrb=opts)
    spec = DataSpec(dataset="", fingerprint="", num_classes=classes, class_names=[str(i) for i in range(classes)],
                    train_urls=[], test_urls=[], train_samples=0, test_samples=0, partial=None)
    model = build_model(cfg, spec).train()
    with torch.no_grad():
        model.prototypes.normal_()
        model.proto_counts.fill_(1)
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(-1, 2, (8, classes), generator=torch.Generator().manual_seed(1)).to(torch.int8)
    cpu = torch.device("cpu")
    (loss, _), forward_peak = peak_allocated(lambda: model(x, partial=y, epoch=3, step=5), cpu)
    value = float(loss.detach())
    del loss  # its graph would sit under the step's peak
    _, step_peak = peak_allocated(lambda: model(x, partial=y, epoch=3, step=5)[0].backward(), cpu)
    return forward_peak, step_peak, value, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_save_memory_lowers_the_peak_of_a_blended_step_and_changes_nothing_else():
    plain_fwd, plain_step, plain_loss, plain_grads = blended_step(False)
    saving_fwd, saving_step, saving_loss, saving_grads = blended_step(True)
    # measured 0.40 and 0.65: the forward pass keeps each head pass's input only; the backward
    # recomputes one pass at a time beside the gradients of the shared terms (without it: 1.0)
    assert saving_fwd < 0.55 * plain_fwd
    assert saving_step < 0.8 * plain_step
    assert abs(plain_loss - saving_loss) < 1e-6 and plain_grads.keys() == saving_grads.keys()
    for n in plain_grads:
        assert torch.allclose(plain_grads[n], saving_grads[n], atol=1e-5, rtol=1e-4), n
