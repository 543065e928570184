"""Trigger files from BackdoorBench's resource/ folder (see ../shared/triggers/README.md)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..config import PROJECT_ROOT


def triggers_dir() -> Path:
    if os.environ.get("BURN_TRIGGERS"):
        return Path(os.environ["BURN_TRIGGERS"])
    return PROJECT_ROOT.parent / "shared" / "triggers"


def trigger_path(name: str) -> Path:
    path = triggers_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"trigger file {name!r} not found at {path}. It is BackdoorBench's resource file "
            "(SCLBD/BackdoorBench, folder resource/); put it in that folder or point "
            "BURN_TRIGGERS at the folder that holds it."
        )
    return path


@lru_cache(maxsize=None)
def load_image(name: str, size: tuple[int, int] | None = None, nearest: bool = False) -> Tensor:
    """An RGB trigger image as (3, H, W) float in [0, 1], resized to ``size`` = (H, W)."""
    from PIL import Image

    img = Image.open(trigger_path(name)).convert("RGB")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.NEAREST if nearest else Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
