from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import Attack
from .triggers import load_image


@dataclass(frozen=True)
class Blended(Attack):
    """Blended attack (Chen et al., 2017): ``(1 - alpha) * x + alpha * t`` with BackdoorBench's
    Hello-Kitty image ``t`` resized (bilinear) to the input size; alpha 0.2 for train and test."""

    alpha: float = 0.2
    trigger_file: str = "blended_hello_kitty.jpeg"

    name = "blended"
    label = "Blended"

    def apply_trigger(self, images: Tensor) -> Tensor:
        trig = load_image(self.trigger_file, tuple(images.shape[-2:]))
        return (1 - self.alpha) * images + self.alpha * trig
