"""The GPU path, run on a CPU: the same functions choose bf16 autocast, channels-last memory and the
on-device normalisation, so a slip in those branches fails here, not on a lab's cluster."""

import csv

import pytest
import torch

from mlrpl_train.device import DeviceError, autocast, pick_device, to_device, uses_fast_path

from trainkit import tiny_training_set


def test_normalisation_on_the_device_by_hand():
    images = torch.zeros(1, 2, 2, 3, dtype=torch.uint8)
    images[0, 0, 0] = torch.tensor([255, 0, 128], dtype=torch.uint8)
    x = to_device(images, torch.device("cpu"))
    assert x.shape == (1, 3, 2, 2) and x.dtype == torch.float32
    assert x[0, 0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-6)
    assert x[0, 1, 0, 0].item() == pytest.approx(-0.456 / 0.224, rel=1e-6)
    assert x[0, 2, 0, 0].item() == pytest.approx((128 / 255 - 0.406) / 0.225, rel=1e-6)
    fast = to_device(images, torch.device("cpu"), channels_last=True)
    assert fast.is_contiguous(memory_format=torch.channels_last) and torch.equal(fast, x)


def test_the_fast_path_switch_and_bf16_autocast_on_cpu():
    cpu = torch.device("cpu")
    assert not uses_fast_path(cpu) and uses_fast_path(cpu, "bf16") and not uses_fast_path(cpu, "fp32")
    assert uses_fast_path(torch.device("cuda", 0)) and not uses_fast_path(torch.device("cuda", 0), "fp32")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(cpu, True):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(cpu):
        assert (a @ b).dtype == torch.float32


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        pick_device("cuda")
    assert pick_device("auto").type == "cpu"


@pytest.mark.parametrize("method", ["pbce", "dsrb"])
def test_a_whole_run_on_the_gpu_path_on_cpu(tmp_path, method):
    from mlrpl_train.engine import train
    from mlrpl_train.reports import evaluate_checkpoint
    from mlrpl_train.options import DsrbOptions, TrainConfig

    data = tiny_training_set(tmp_path, n_train=24, n_test=8)
    runs = {}
    for precision in ("bf16", "fp32"):
        cfg = TrainConfig(method=method, dataset=str(data), masks="uniform-p0.50-s0", out=str(tmp_path / precision),
                          backbone="tiny", weights="none", epochs=2, batch_size=4, lr=3e-3, image_size=32, workers=0,
                          progress=False, val_fraction=0.0, precision=precision,
                          dsrb=DsrbOptions(feat_dim=16, attn_dim=16, blend_start=0, prototype_every=1, pool2x2=False))
        runs[precision] = train(cfg)
    rows = {p: list(csv.DictReader(open(r / "metrics.csv"))) for p, r in runs.items()}
    loss16, loss32 = float(rows["bf16"][0]["train_loss"]), float(rows["fp32"][0]["train_loss"])
    assert loss16 == pytest.approx(loss32, rel=0.05)  # bf16 autocast: the same run, to bf16's precision
    assert loss16 != loss32  # ... and really in bf16
    m = evaluate_checkpoint(runs["bf16"], str(data), tmp_path / "rep", workers=0)
    assert m["keys_evaluated"] == 8 and 0 <= m["mAP"] <= 1
