"""Backbones: torchvision ResNets (weights from the local torch cache or a file) and a tiny CNN for tests.

The published setting freezes conv1..layer3 (BatchNorm in eval mode) and trains layer4.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from mlrpl_data.errors import MlrplError

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
BACKBONES = RESNETS + ("tiny",)


class WeightsError(MlrplError):
    """Pretrained weights that are absent or do not fit."""


class TinyBackbone(nn.Module):
    """A 4-stage CNN with the ResNet attribute names, for fast tests and the CPU demo."""

    def __init__(self, width: int = 16):
        super().__init__()

        def stage(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.conv1 = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.layer1 = stage(width, width, 1)
        self.layer2 = stage(width, 2 * width, 2)
        self.layer3 = stage(2 * width, 4 * width, 2)
        self.layer4 = stage(4 * width, 8 * width, 2)
        self.out_channels = 8 * width
        self.stride = 16  # a map of ceil(size / 16) cells

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its pooling and fc: (B, 3, H, W) -> (B, 2048, H/32, W/32)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.conv1 = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = net.fc.in_features
        self.stride = 32  # a map of ceil(size / 32) cells

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))


def imagenet_weights_path(name: str) -> tuple[Path, str]:
    """Where torchvision caches `name`'s ImageNet weights, and the URL to fetch them from.

    IMAGENET1K_V1: the weights `pretrained=True` gave, which the published numbers used."""
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    url = enum.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url


def _load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: weights file not found") from None
    except Exception as e:
        raise WeightsError(f"{path}: not a loadable state dict ({type(e).__name__}: {e})") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def check_weights(name: str, weights: str) -> None:
    """The weights build_backbone would load exist (a WeightsError otherwise), checked without building:
    a sweep refuses before it writes a mask or a run folder."""
    if name == "tiny":
        if weights not in ("none", ""):
            raise WeightsError("the tiny backbone has no pretrained weights: use --weights none")
        return
    if weights == "imagenet":
        path, url = imagenet_weights_path(name)
        if not path.exists():
            raise WeightsError(
                f"ImageNet weights for {name} are not in the local torch cache ({path}); nothing is downloaded at run "
                f"time. Fetch them once on a machine with internet: `curl -L -o {path} {url}` (or set TORCH_HOME), "
                f"or pass --weights PATH, or --weights none")
    elif weights not in ("none", "") and not Path(weights).is_file():
        raise WeightsError(f"{weights}: weights file not found")


def build_backbone(name: str, weights: str = "none") -> nn.Module:
    """`weights`: "imagenet" (local torch cache only, never downloaded), a file path, or "none"."""
    import torchvision

    if name not in BACKBONES:
        raise MlrplError(f"unknown backbone {name!r}: use one of {', '.join(BACKBONES)}")
    check_weights(name, weights)
    if name == "tiny":
        return TinyBackbone()
    net = torchvision.models.get_model(name, weights=None)
    if weights == "imagenet":
        weights = str(imagenet_weights_path(name)[0])
    if weights not in ("none", ""):
        state = _load_state(Path(weights))
        state = {k.removeprefix("module."): v for k, v in state.items()}
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or [k for k in unexpected if not k.startswith("fc.")]:
            raise WeightsError(f"{weights}: does not fit {name} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return ResNetTrunk(net)


FREEZE_POINTS = ("none", "layer1", "layer2", "layer3", "layer4")


def freeze_until(backbone: nn.Module, point: str) -> list[nn.Module]:
    """Freeze conv1 .. `point` (inclusive); returns the frozen modules (kept in eval mode)."""
    if point not in FREEZE_POINTS:
        raise MlrplError(f"--freeze {point!r}: use one of {', '.join(FREEZE_POINTS)}")
    if point == "none":
        return []
    names = ["conv1", "layer1", "layer2", "layer3", "layer4"]
    frozen = [getattr(backbone, n) for n in names[: names.index(point) + 1]]
    for mod in frozen:
        for p in mod.parameters():
            p.requires_grad_(False)
        mod.eval()
    return frozen
