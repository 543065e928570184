"""PreAct-ResNet-18/-34 (He et al., 2016), the paper's architectures, with a width parameter.

Inputs are images in [0, 1]: normalization is the model's first layer, so DeepFool's
perturbations and their L2 norms live in pixel space. ``features(x)`` returns the penultimate
(pooled) representation used by Fig. 1.

The default is BackdoorBench's ``models/preact_resnet.py``: layer4's output goes straight to
the average pool and the linear layer, so features can be negative. ``final_bn_relu=True``
adds a BatchNorm + ReLU before the pool (the common pre-activation variant); the repository's
results before the re-baseline (preset ``cpu-w16`` and its regime variants) used it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, num_blocks, num_classes: int, width: int, mean, std,
                 final_bn_relu: bool = False):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        layers, in_planes = [], width
        for i, n in enumerate(num_blocks):
            planes = width * 2**i
            for j in range(n):
                layers.append(PreActBlock(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes) if final_bn_relu else None
        self.linear = nn.Linear(in_planes, num_classes)
        self.num_classes = num_classes

    def features(self, x: Tensor) -> Tensor:
        """Penultimate representation: pooled activations fed to the last linear layer."""
        out = self.layers(self.conv1(self.normalize(x)))
        if self.bn is not None:
            out = F.relu(self.bn(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.features(x))


def preactresnet18(num_classes: int, width: int, **kw) -> PreActResNet:
    return PreActResNet([2, 2, 2, 2], num_classes, width, **kw)


def preactresnet34(num_classes: int, width: int, **kw) -> PreActResNet:
    return PreActResNet([3, 4, 6, 3], num_classes, width, **kw)


def to_model_format(model: nn.Module, x: Tensor) -> Tensor:
    """Give a 4-D input the memory format of the model's first convolution (channels-last
    models run about 1.3-1.9x faster on this CPU at width >= 16, but far slower at width 4)."""
    if x.ndim == 4:
        for p in model.parameters():
            if p.ndim == 4:
                if p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous():
                    return x.contiguous(memory_format=torch.channels_last)
                break
    return x


MODELS = {"preactresnet18": preactresnet18, "preactresnet34": preactresnet34}


def create_model(arch: str, num_classes: int, width: int = 64, dataset: str = "cifar10",
                 final_bn_relu: bool = False) -> nn.Module:
    """A model of ``MODELS`` whose first layer normalizes with ``dataset``'s constants."""
    from .data import dataset_spec

    if arch not in MODELS:
        raise ValueError(f"unknown model {arch!r}; choose one of {sorted(MODELS)}")
    spec = dataset_spec(dataset)
    return MODELS[arch](num_classes=num_classes, width=width, mean=spec.mean, std=spec.std,
                        final_bn_relu=final_bn_relu)
