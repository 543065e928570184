"""Input-aware dynamic backdoor (Nguyen & Tran, NeurIPS 2020), the paper's "Dynamic", as
BackdoorBench runs it (``attack/inputaware.py``, ``config/attack/inputaware/default.yaml``).

Two encoder-decoders see the image: a mask net M (1 channel) and a pattern net G (3 channels),
each ending in ``tanh / 2 + 0.5``. A triggered image is ``x + (G(x) - x) * m(x)`` with the
thresholded mask ``m = tanh(20 M(x) - 10) / 2 + 0.5``, so each image gets its own trigger.

1. ``fit`` trains M alone on clean data (``mask_epochs``; Adam, a norm term that keeps the mask
   density under ``mask_density`` and a diversity term that gives different images different
   masks).
2. The classifier and G train together (``custom_training``): per batch, ``rate`` of the
   samples get their own pattern and the target label, as many "cross" samples get another
   image's pattern and keep their label, and a diversity term keeps patterns image-specific.
3. The training and test sets are then materialized once with the final G and M (as stored,
   in ``GENERATOR_DTYPE``), so DeepFool and every defense see fixed images.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cache import epoch_checkpoint, load_torch, restore_checkpoint, save_torch
from ..data import ImageDataset
from ..progress import tqdm
from .base import Attack, PoisonedDataset, to_uint8

EPS = 1e-7


def _conv(cin: int, cout: int, relu: bool = True) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout, momentum=0.05)] + \
        ([nn.ReLU(inplace=True)] if relu else [])


class Generator(nn.Sequential):
    """BackdoorBench's ``InputAwareGenerator`` for 3-channel 32x32 images: three down steps
    (two 3x3 conv-BN-ReLU, 2x2 max-pool) from ``width`` channels, a middle conv, three up
    steps (bilinear x2, two convs), the last conv without ReLU; output in (0, 1)."""

    def __init__(self, out_channels: int = 3, width: int = 32, steps: int = 3):
        layers, cin, cout = [], 3, width
        for s in range(steps):
            layers += _conv(cin, cout) + _conv(cout, cout) + [nn.MaxPool2d(2)]
            cin, cout = cout, (cout * 2 if s < steps - 1 else cout)
        layers += _conv(cout, cout)
        cur = cout
        for s in range(steps):
            nxt = out_channels if s == steps - 1 else cur // 2
            layers += [nn.Upsample(scale_factor=2, mode="bilinear")] + _conv(cur, cur) + \
                _conv(cur, nxt, relu=s < steps - 1)
            cur = nxt
        super().__init__(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(super().forward(x)) / (2 + EPS) + 0.5


def threshold(m: Tensor) -> Tensor:
    return torch.tanh(m * 20 - 10) / (2 + EPS) + 0.5


def diversity(x1: Tensor, x2: Tensor, p1: Tensor, p2: Tensor) -> Tensor:
    """Mean ratio of image distance to pattern (or mask) distance, both RMS per sample. The
    square roots are taken of at least 1e-12: at 0 their gradient is infinite (NaN in the
    backward pass), which identical patterns (saturated in bf16) would reach."""
    dx = (x1 - x2).pow(2).mean((1, 2, 3)).clamp_min(1e-12).sqrt()
    dp = (p1 - p2).pow(2).mean((1, 2, 3)).clamp_min(1e-12).sqrt()
    return (dx / (dp + EPS)).mean()


def blend(x: Tensor, pattern: Tensor, mask: Tensor) -> Tensor:
    return x + (pattern - x) * mask


# The precision the generators are stored in. Not float16: after training, G's BatchNorm
# running variances reach 1e5, beyond float16's 65,504; stored as inf they turn those channels
# constant and G makes another trigger than the one the model learned
# (docs/findings/seeds.md, "Input-aware's stored generator").
GENERATOR_DTYPE = torch.float32


class Normalized(nn.Module):
    """A generator that sees the image normalized with per-channel constants (BackdoorBench
    feeds its generators the normalized image), returning its (0, 1) output."""

    def __init__(self, net: nn.Module, mean: Tensor, std: Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean.view(1, -1, 1, 1).clone())
        self.register_buffer("std", std.view(1, -1, 1, 1).clone())

    def norm(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.norm(x))


def _resume_mask(checkpoint: Path | None, parts: dict, g: torch.Generator, epochs: int) -> int:
    """Load a mask-net checkpoint into ``parts`` (net, opt, sched) and ``g``; returns the
    epochs it holds (0 without one). A checkpoint of another ``mask_epochs`` (another
    learning-rate schedule) is not resumed from."""
    if checkpoint is None or not Path(checkpoint).is_file():
        return 0
    state = load_torch(checkpoint, hint="delete it to fit the mask net from the start")
    return restore_checkpoint(state, parts, g) if state.get("of") == epochs else 0


def _seeded(make, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


@dataclass(frozen=True)
class InputAware(Attack):
    """Input-aware dynamic backdoor; module docstring for the algorithm. Defaults are
    BackdoorBench's CIFAR-10 ones; ``mask_epochs`` (25 there) is sized per preset. The cross
    share equals the poisoned share (BackdoorBench's cross ratio 1)."""

    mask_epochs: int = 25
    mask_density: float = 0.032
    lambda_norm: float = 100.0
    lambda_div: float = 1.0
    lr_mask: float = 0.01
    lr_pattern: float = 0.01
    width: int = 32  # channels of the generators' first layer
    # set by fit() / training: the mask net M and the pattern net G
    mask_net: nn.Module | None = field(default=None, repr=False, compare=False)
    pattern_net: nn.Module | None = field(default=None, repr=False, compare=False)

    name = "inputaware"
    label = "Dynamic"  # the paper's name for it
    custom_training = True
    slow_poison = True

    # ----------------------------------------------------------------- stage 1: the mask net
    def fit(self, train: ImageDataset, *, generator: torch.Generator, model=None, device=None,
            amp_bf16: bool = False, progress: bool = False, checkpoint: Path | None = None,
            **context) -> "InputAware":
        """Train the mask net M. With ``checkpoint`` (a file in the run cache), its state is
        saved after every epoch and an interrupted fit resumes from the last finished epoch,
        with the same result as an uninterrupted one (BackdoorBench's 25 epochs take about
        2.5 h on one CPU thread)."""
        if self.mask_net is not None:
            return self
        device = torch.device(device or "cpu")
        seed = generator.initial_seed() + 1  # never draws from ``generator``: poisoning stays put
        x = train.images[: min(len(train), 10000)].float() / 255.0
        mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
        net = _seeded(lambda: Normalized(Generator(1, self.width), mean, std), seed).to(device)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), self.lr_mask, betas=(0.5, 0.9))
        # BackdoorBench: milestones 10 and 20 of 25 epochs; scaled to mask_epochs
        miles = [round(self.mask_epochs * f) for f in (0.4, 0.8)]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, miles, 0.1)
        parts = {"model": net, "optimizer": opt, "scheduler": sched}
        start = _resume_mask(checkpoint, parts, g, self.mask_epochs)
        for epoch in tqdm(range(start, self.mask_epochs), desc="input-aware mask net",
                          initial=start, total=self.mask_epochs, disable=not progress):
            self._mask_epoch(net, opt, train.images, g, device, amp_bf16)
            sched.step()
            if checkpoint is not None:
                save_torch(epoch_checkpoint(parts, g, epoch + 1, of=self.mask_epochs), checkpoint)
        opt.zero_grad(set_to_none=True)
        return dataclasses.replace(self, mask_net=net.eval().requires_grad_(False))

    def _mask_epoch(self, net, opt, images, g, device, amp_bf16, batch_size: int = 128):
        from ..train import augment_batch

        net.train()
        n = len(images)
        p1, p2 = torch.randperm(n, generator=g), torch.randperm(n, generator=g)
        for s in range(0, n, batch_size):
            x1, x2 = (augment_batch(images[p[s:s + batch_size]].float() / 255.0, g).to(device)
                      for p in (p1, p2))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp_bf16):
                m1, m2 = threshold(net(x1)).float(), threshold(net(x2)).float()
            norm = F.relu(m1 - self.mask_density).mean()
            div = diversity(net.norm(x1), net.norm(x2), m1, m2)
            loss = self.lambda_norm * norm + self.lambda_div * div
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    # ------------------------------------------------ stage 2: the classifier trains with G
    def training_hook(self, *, seed: int, device=None) -> "InputAwareTraining":
        if self.mask_net is None:
            raise RuntimeError("InputAware.training_hook before fit(): no mask net")
        return InputAwareTraining(self, seed=seed, device=torch.device(device or "cpu"))

    # ------------------------------------------------------ stage 3: materialized images
    def apply_trigger(self, images: Tensor) -> Tensor:
        if self.pattern_net is None or self.mask_net is None:
            raise RuntimeError("InputAware.apply_trigger before training: no pattern net "
                               "(its triggers exist only after burn attack --attack inputaware)")
        return self._blend(images, images)

    @torch.no_grad()
    def _blend(self, images: Tensor, sources: Tensor) -> Tensor:
        """``images`` with the pattern and mask that G and M make from ``sources``."""
        dev = next(self.pattern_net.parameters()).device
        src = sources.to(dev)
        out = blend(images.to(dev), self.pattern_net(src), threshold(self.mask_net(src)))
        return out.clamp_(0.0, 1.0).cpu()

    def poison_train(self, train: ImageDataset, *, generator: torch.Generator) -> PoisonedDataset:
        """The poisoned samples (own trigger, target label) plus as many cross samples
        (another image's trigger, own label), drawn from the rest; ``cross_mask`` marks them."""
        out = super().poison_train(train, generator=generator)
        rest = (~out.poison_mask).nonzero().squeeze(1)
        cross = rest[torch.randperm(len(rest), generator=generator)[:len(out.poison_idx)]].sort().values
        shift = torch.randint(1, len(train), (len(cross),), generator=generator)
        sources = (cross + shift) % len(train)
        for s in range(0, len(cross), 1024):
            c, src = cross[s:s + 1024], sources[s:s + 1024]
            out.images[c] = to_uint8(self._blend(train.images[c].float() / 255.0,
                                                 train.images[src].float() / 255.0))
        out.cross_mask = torch.zeros(len(train), dtype=torch.bool)
        out.cross_mask[cross] = True
        return out

    # ------------------------------------------------------------------- stored state
    def attack_state(self) -> dict:
        """The generators' weights, in ``GENERATOR_DTYPE``, to store beside the model."""
        return {f"{n}.{k}": (v.to(GENERATOR_DTYPE) if v.is_floating_point() else v).cpu()
                for n, net in (("mask", self.mask_net), ("pattern", self.pattern_net))
                if net is not None for k, v in net.state_dict().items()}

    def with_state(self, state: dict) -> "InputAware":
        """The attack with generators loaded from ``attack_state()`` (as float32); a state from
        before training holds the mask net alone."""
        nets = {"mask": None, "pattern": None}
        for name, ch in (("mask", 1), ("pattern", 3)):
            part = {k[len(name) + 1:]: v.float() if v.is_floating_point() else v
                    for k, v in state.items() if k.startswith(name + ".")}
            if not part:
                continue
            net = Normalized(Generator(ch, self.width), part["mean"].flatten(), part["std"].flatten())
            net.load_state_dict(part)
            nets[name] = net.eval().requires_grad_(False)
        return dataclasses.replace(self, mask_net=nets["mask"], pattern_net=nets["pattern"])

    def key_parts(self) -> tuple:
        """The poisoned images are made by the stored generators: their precision is in the
        attacked model's key (models stored with float16 generators are another key)."""
        return (f"generators {str(GENERATOR_DTYPE).removeprefix('torch.')}",)

    def describe(self) -> dict:
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                      if f.name not in ("mask_net", "pattern_net")}}


class InputAwareTraining:
    """The per-batch hook of stage 2 (``burn.train.run_epoch``): rewrites a training batch
    and returns the extra loss; steps G's optimizer after the classifier's."""

    def __init__(self, attack: InputAware, *, seed: int, device: torch.device):
        self.attack = attack
        mask = attack.mask_net.to(device)
        self.mask = mask
        self.pattern = _seeded(lambda: Normalized(Generator(3, attack.width), mask.mean.flatten(),
                                                  mask.std.flatten()), seed + 2).to(device)
        self.opt = torch.optim.Adam(self.pattern.parameters(), attack.lr_pattern, betas=(0.5, 0.9))

    def batch(self, x: Tensor, y: Tensor, generator: torch.Generator):
        """(images, labels, extra loss) for one augmented batch ``x`` in [0, 1]."""
        a, n = self.attack, len(x)
        nb = int(a.rate * n)  # BackdoorBench: int(pratio * batch size), as many cross samples
        if nb == 0 or 2 * nb > n:
            return x, y, None
        self.pattern.train()
        self.opt.zero_grad(set_to_none=True)
        # the pattern source of cross sample nb + i: another image of the batch, neither the
        # cross image itself nor poisoned image i it is compared with (shift != 0, n - nb)
        shift = torch.randint(1, n - nb, (1,), generator=generator).item()
        src = (torch.arange(nb, 2 * nb) + shift) % n
        src = src.to(x.device)
        with torch.no_grad():
            m1, m2 = threshold(self.mask(x[:nb])), threshold(self.mask(x[src]))
        p1, p2 = self.pattern(x[:nb]), self.pattern(x[src])
        xb = torch.cat([blend(x[:nb], p1, m1), blend(x[nb:2 * nb], p2, m2), x[2 * nb:]])
        yb = torch.cat([torch.full_like(y[:nb], a.target), y[nb:]])
        n1 = self.pattern.norm
        div = diversity(n1(x[:nb]), n1(x[src]), n1(p1.float()), n1(p2.float()))
        return xb, yb, a.lambda_div * div

    def after_step(self) -> None:
        self.opt.step()

    def state_dict(self) -> dict:
        return {"pattern": self.pattern.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.pattern.load_state_dict(state["pattern"])
        self.opt.load_state_dict(state["opt"])

    def fitted(self) -> InputAware:
        """The attack with the trained G and M as stored (``attack_state``)."""
        a = dataclasses.replace(self.attack, pattern_net=self.pattern)
        return a.with_state(a.attack_state())
