"""SSBA, the invisible backdoor with sample-specific triggers (Li et al., ICCV 2021).

A StegaStamp encoder (``burn.stegastamp``), trained to hide random bit strings in images so
that its decoder reads them back, writes ONE fixed secret into every poisoned image; what it
changes in each image depends on the image, so every poisoned sample carries its own, nearly
invisible trigger. Dirty-label, all-to-one, rate 0.1 as BackdoorBench's
``config/attack/ssba/default.yaml``.

BackdoorBench reads its SSBA poisoned sets from ``.npy`` files made offline by
``resource/ssba/train.py`` and ``embed_fingerprints.py``; here the encoder is the
``stegastamp`` resource (``burn.resources``), trained in the repository on the training images
and stored under its key, and the trigger is computed from it. Differences, on purpose: the
secret is drawn from ``secret_seed`` (BackdoorBench: a BCH-coded text string, ``--secret``);
poisoned images are rounded to uint8 (BackdoorBench saves them as PNG, which rounds likewise).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..data import ImageDataset
from ..stegastamp import StegaStampCfg
from .base import Attack

TRIGGER_BATCH = 256  # images per encoder pass in apply_trigger (speed only)
# what ``describe`` copies from the encoder's record
RECORD_METRICS = ("bit_accuracy", "measured_images", "psnr_mean", "psnr_min", "linf_mean",
                  "linf_max", "train_steps", "l2_on_step")


@dataclass(frozen=True)
class SSBA(Attack):
    """SSBA (module docstring). The StegaStamp fields are BackdoorBench's
    ``resource/ssba/train.py`` defaults (``burn.stegastamp``); ``epochs`` is sized per preset.
    ``secret_seed``: the seed of the one secret (``secret_length`` bits) in every poisoned
    image."""

    # the encoder's hyperparameters: StegaStampCfg's fields of the same names, and its defaults
    secret_length: int = StegaStampCfg.secret_length
    epochs: int = StegaStampCfg.epochs
    batch_size: int = StegaStampCfg.batch_size
    lr: float = StegaStampCfg.lr
    l2_weight: float = StegaStampCfg.l2_weight
    l2_await: int = StegaStampCfg.l2_await
    l2_ramp: int = StegaStampCfg.l2_ramp
    init: str = StegaStampCfg.init
    secret_seed: int = 0
    # the seed of the network it is built with, whatever the victim's training seed
    resource_seed: int = 0
    # An encoder whose decoder reads fewer bits was never asked to keep the image (the L2 loss
    # switches on at 0.9, BackdoorBench's threshold): fit refuses it.
    min_bit_accuracy: float = 0.9
    # set by fit(): the stored encoder (eval mode) and its key and record's metrics
    encoder: nn.Module | None = field(default=None, repr=False, compare=False)
    fitted: dict = field(default_factory=dict, compare=False)

    name = "ssba"
    label = "SSBA"
    slow_poison = True

    def resources(self) -> dict:
        shared = {f.name for f in dataclasses.fields(StegaStampCfg)} & \
            {f.name for f in dataclasses.fields(self)}
        return {"stegastamp": StegaStampCfg(**{k: getattr(self, k) for k in shared})}

    def fit(self, train: ImageDataset, *, generator: torch.Generator, model=None,
            resources: dict | None = None, **context) -> "SSBA":
        if self.encoder is not None:
            return self
        stored = (resources or {}).get("stegastamp")
        if stored is None:
            raise ValueError("SSBA hides its secret with a trained StegaStamp encoder: fit it "
                             "through burn.experiment (burn attack --attack ssba), which trains "
                             "or loads it, or pass resources={'stegastamp': StoredResource}")
        bits = stored.record.get("bit_accuracy")
        if bits is not None and bits < self.min_bit_accuracy:
            raise ValueError(
                f"the StegaStamp encoder {stored.key} did not learn to hide its secret: its "
                f"decoder reads {bits:.3f} of the bits on test images (needs {self.min_bit_accuracy}; "
                "0.5 is chance), so its images are no SSBA trigger. Train it longer, e.g. "
                "--set attack.params.epochs=N (another key), and see docs/backdoorbench.md")
        fitted = {"stegastamp_key": stored.key,
                  **{f"stegastamp_{k}": stored.record[k] for k in RECORD_METRICS
                     if k in stored.record}}
        encoder = stored.net.encoder.eval().requires_grad_(False)
        return dataclasses.replace(self, encoder=encoder, fitted=fitted)

    def key_parts(self) -> tuple:
        """The poisoned images depend on the encoder's weights: its key is in the model's."""
        return (self.fitted.get("stegastamp_key"),)

    def secret(self) -> Tensor:
        """(secret_length,) float bits, the same for every image."""
        g = torch.Generator().manual_seed(self.secret_seed)
        return torch.randint(0, 2, (self.secret_length,), generator=g).float()

    @torch.no_grad()
    def apply_trigger(self, images: Tensor) -> Tensor:
        if self.encoder is None:
            raise RuntimeError("SSBA.apply_trigger before fit(): no StegaStamp encoder")
        if self.encoder.secret_dense.in_features != self.secret_length:
            raise ValueError(f"the encoder takes {self.encoder.secret_dense.in_features} bits, "
                             f"the attack's secret has {self.secret_length}")
        self.encoder.eval()
        dev = next(self.encoder.parameters()).device
        secret = self.secret().to(dev)
        out = torch.empty_like(images, dtype=torch.float32)
        for s in range(0, len(images), TRIGGER_BATCH):
            x = images[s:s + TRIGGER_BATCH].to(dev, torch.float32)
            enc = self.encoder(x, secret.expand(len(x), -1))
            out[s:s + TRIGGER_BATCH] = enc.clamp_(0.0, 1.0).to(out.device)
        return out

    def describe(self) -> dict:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in ("encoder", "fitted")}
        return {"name": self.name, **fields} | self.fitted
