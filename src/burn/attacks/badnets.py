from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import Attack
from .triggers import load_image


@dataclass(frozen=True)
class BadNets(Attack):
    """BadNets patch trigger (Gu et al., 2017) with BackdoorBench's trigger image: a 3x3 white
    square in the bottom-right corner of a black 32x32 image; its non-zero pixels are both the
    mask and the patch values (resized with nearest-neighbour for other input sizes)."""

    trigger_file: str = "badnet_trigger_image.png"

    name = "badnets"
    label = "BadNets"

    def apply_trigger(self, images: Tensor) -> Tensor:
        trig = load_image(self.trigger_file, tuple(images.shape[-2:]), nearest=True)
        mask = (trig > 0).any(0, keepdim=True).expand_as(trig)
        return images.where(~mask, trig)
