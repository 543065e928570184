from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from ..data import ImageDataset
from .base import Attack
from .triggers import trigger_path

# BackdoorBench's precomputed triggers (resource/lowFrequency/), by (classes, image size)
LF_TRIGGERS = {(10, 32): "lowFrequency_cifar10_preactresnet18_0_255.npy",
               (100, 32): "lowFrequency_cifar100_preactresnet18_0_255.npy",
               (200, 64): "lowFrequency_tiny_preactresnet18_0_255.npy"}


@lru_cache(maxsize=None)
def load_additive(name: str) -> Tensor:
    """A (H, W, 3) uint8 trigger file as a (3, H, W) float perturbation on the [0, 1] scale."""
    arr = np.load(trigger_path(name))
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"{name}: expected an (H, W, 3) array, got shape {arr.shape}")
    return torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class LowFrequency(Attack):
    """Low-frequency attack (Zeng et al., 2021), as BackdoorBench runs it: a universal
    perturbation made by low-pass-filtered DeepFool on a clean model, precomputed by
    BackdoorBench for each dataset; added to the image and clipped,
    ``clip(x + t, 0, 255)`` on train and test. ``trigger_file`` empty: BackdoorBench's file
    for the dataset (by number of classes and image size), chosen in ``fit``."""

    trigger_file: str = ""

    name = "lf"
    label = "LF"

    def fit(self, train: ImageDataset, *, generator: torch.Generator, model=None,
            **context) -> "LowFrequency":
        if self.trigger_file:
            return self
        key = (train.num_classes, train.images.shape[-1])
        if key not in LF_TRIGGERS:
            raise ValueError(f"no Low-frequency trigger for {train.num_classes} classes at "
                             f"{key[1]} px; pass attack.params.trigger_file=FILE")
        return dataclasses.replace(self, trigger_file=LF_TRIGGERS[key])

    def apply_trigger(self, images: Tensor) -> Tensor:
        if not self.trigger_file:
            raise RuntimeError("LowFrequency.apply_trigger before fit(): no trigger file chosen")
        trig = load_additive(self.trigger_file)
        if trig.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"{self.trigger_file} is {tuple(trig.shape[-2:])} px, the images "
                             f"{tuple(images.shape[-2:])}")
        return (images + trig).clamp_(0.0, 1.0)
