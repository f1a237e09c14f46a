"""Where tensors run and in what precision: device choice, input normalisation on the device,
channels-last memory and bf16 autocast. The GPU path is one function with the CPU path, so the
tests run it on CPU (`autocast(device, enabled=True)` is bf16 on either)."""

from __future__ import annotations

import functools

import torch

from mlrpl_data.errors import MlrplError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DeviceError(MlrplError):
    """A device that is asked for but not there."""


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """auto: this rank's GPU when there is one, else the CPU; cuda without a GPU is an error."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda: no CUDA GPU is visible here (use --device cpu or auto)")
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def uses_fast_path(device: torch.device, precision: str = "auto") -> bool:
    """bf16 autocast and channels-last: on by default on a GPU (on a CPU bf16 is slower), or as asked."""
    return device.type == "cuda" if precision == "auto" else precision == "bf16"


def autocast(device: torch.device, enabled: bool | None = None):
    """bf16 autocast on `device` (default: on a GPU only)."""
    on = uses_fast_path(device) if enabled is None else enabled
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


@functools.lru_cache(maxsize=8)
def normalisation(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / 255 - mean) / std as x * scale + shift; made once per device, not per batch."""
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
    scale = (1 / (255 * std)).to(device=device, dtype=dtype).view(1, 3, 1, 1)
    shift = (-torch.tensor(IMAGENET_MEAN, dtype=torch.float64) / std).to(device=device, dtype=dtype).view(1, 3, 1, 1)
    return scale, shift


def to_device(images: torch.Tensor, device: torch.device, dtype=torch.float32,
              channels_last: bool | None = None) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W) on the device; channels-last in memory on the
    fast path (the permuted uint8 batch already is; `contiguous` keeps it so after the arithmetic)."""
    device = torch.device(device)
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).to(dtype)
    scale, shift = normalisation(device, dtype)
    x = torch.addcmul(shift, x, scale)
    if uses_fast_path(device) if channels_last is None else channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
