from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..data import ImageDataset
from .base import Attack, to_uint8
from .triggers import load_image


def most_connected_inputs(linear: nn.Linear, k: int) -> Tensor:
    """Indices of the ``k`` inputs of ``linear`` with the largest sum of |weight| over its
    outputs (TrojanNN's choice of the neurons the trigger drives)."""
    return linear.weight.detach().abs().sum(0).argsort(descending=True)[:k].sort().values


NEURON_CHOICES = ("clean_linear", "backdoorbench")


def untrained_linear_layer(in_features: int, out_features: int, seed: int) -> nn.Linear:
    """A freshly initialized ``nn.Linear`` (PyTorch's default init) under ``seed``: the layer
    BackdoorBench's TrojanNN picks its neurons from (it builds its trigger network with 1,000
    classes, so the clean model's conv and BN weights load and its linear layer does not)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(in_features, out_features)


def optimize_trigger(model: nn.Module, init: Tensor, neurons: Tensor, target: float, *,
                     iters: int, eps: float, step: float) -> Tensor:
    """Projected sign-gradient descent on the pixels of ``init`` (3, H, W) in [0, 1] that are
    non-zero, driving ``model.features`` at ``neurons`` towards ``target`` (squared error).
    Pixels stay within ``eps`` of ``init`` and in [0, 1]; zero pixels never change (their
    gradient is masked out). The model is used in eval mode and left unchanged."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ori = init[None].to(device)
    keep = (ori > 0).float()
    x = ori.clone()
    for _ in range(iters):
        x.requires_grad_(True)
        feats = model.features(x * keep)
        cost = (feats[:, neurons] - target).pow(2).sum()
        (grad,) = torch.autograd.grad(cost, x)
        with torch.no_grad():
            x = (ori + (x - step * grad.sign() - ori).clamp(-eps, eps)).clamp(0.0, 1.0)
    model.train(was_training)
    return x.detach()[0].cpu()


@dataclass(frozen=True)
class TrojanNN(Attack):
    """TrojanNN (Liu et al., NDSS 2018) as BackdoorBench runs it (``attack/trojannn.py``,
    ``config/attack/trojannn/preactresnet18.yaml``): the apple mask image, resized to the input
    size, is the starting trigger; its non-zero pixels are optimized on a clean model of the same
    architecture so that the ``num_neurons`` inputs of the last linear layer with the largest
    sum of |weight| reach ``neuron_target`` (``iters`` projected sign steps of ``step``, within
    ``eps`` of the start, in [0, 1]). The trigger is stored as 8-bit and added to the image,
    ``clip(x + t, 0, 255)``, on train and test; dirty-label.

    ``neuron_choice``: ``clean_linear`` ranks the inputs of the clean model's trained linear
    layer; ``backdoorbench`` ranks those of an untrained 1,000-output layer seeded by the run's
    seed, as BackdoorBench does (its trigger network has 1,000 classes: the clean model's conv
    and BN weights load, its linear layer does not), which makes the choice effectively random.
    Either way the trigger drives the clean model's features. The sum is clipped
    (BackdoorBench casts to uint8 before clipping, which wraps bright pixels around)."""

    mask_file: str = "trojannn_apple4.png"
    num_neurons: int = 2
    neuron_target: float = 100.0
    iters: int = 1000
    eps: float = 0.3
    step: float = 0.1
    neuron_choice: str = "clean_linear"
    # set by fit(): the 8-bit trigger, the neurons, and what the optimization reached
    trigger: Tensor | None = field(default=None, repr=False, compare=False)
    fitted: dict = field(default_factory=dict, compare=False)

    name = "trojannn"
    label = "TrojanNN"
    needs_clean_model = True

    def fit(self, train: ImageDataset, *, generator: torch.Generator, model=None,
            **context) -> "TrojanNN":
        """The attack with its trigger optimized on the clean ``model``: read back from the run
        cache (``trojannn/<key>``: the clean weights, these settings, the seed where the neurons
        depend on it, and the device) when it was optimized before, since every load of a
        TrojanNN model needs it and 1,000 steps take seconds."""
        if self.trigger is not None:
            return self
        if model is None:
            raise ValueError("TrojanNN optimizes its trigger on a clean model: pass model= "
                             "(the preset's clean model, burn attack --attack clean)")
        if self.neuron_choice not in NEURON_CHOICES:
            raise ValueError(f"attack.params.neuron_choice must be one of {list(NEURON_CHOICES)}, "
                             f"got {self.neuron_choice!r}")
        from ..cache import config_hash, run_dir, tensors_sha256
        from ..stages import TorchStore, cached

        size = tuple(train.images.shape[-2:])
        seed = generator.initial_seed() if self.neuron_choice == "backdoorbench" else None
        clean_sha = tensors_sha256(model.state_dict())
        settings = (self.mask_file, self.num_neurons, self.neuron_target, self.iters, self.eps,
                    self.step, self.neuron_choice)
        key = config_hash("trojannn-trigger", clean_sha, settings, size, seed,
                          next(model.parameters()).device.type)
        done = cached(TorchStore(run_dir("trojannn", key) / "trigger.pt"), key,
                      lambda: self._optimize(model, size, seed))
        trigger = done.pop("trigger")
        return dataclasses.replace(self, trigger=trigger, fitted={"clean_model_sha256": clean_sha, **done})

    def _optimize(self, model: nn.Module, size: tuple, seed: int | None) -> dict:
        """The 8-bit trigger and what the optimization reached (``fitted``'s fields)."""
        from ..cache import tensors_sha256

        init = load_image(self.mask_file, size)
        dev = next(model.parameters()).device
        ranked = (model.linear if seed is None else
                  untrained_linear_layer(model.linear.in_features, 1000, seed))
        neurons = most_connected_inputs(ranked, self.num_neurons).to(dev)
        trig_u8 = to_uint8(optimize_trigger(model, init, neurons, self.neuron_target,
                                            iters=self.iters, eps=self.eps, step=self.step))
        with torch.no_grad():
            model.eval()
            acts = [model.features((t * (t > 0)).to(dev)[None])[0, neurons].tolist()
                    for t in (init, trig_u8.float() / 255.0)]
        return {"trigger": trig_u8, "neurons": neurons.tolist(), "activation_start": acts[0],
                "activation_trigger": acts[1], "trigger_sha256": tensors_sha256({"trigger": trig_u8}),
                "trigger_pixels": int((trig_u8 > 0).any(0).sum())}

    def key_parts(self) -> tuple:
        """The trigger depends on the clean model's weights, so the attacked model's key does."""
        parts = (self.fitted.get("clean_model_sha256"),)
        # the committed models' keys predate the option: the default adds nothing
        return parts if self.neuron_choice == "clean_linear" else parts + (self.neuron_choice,)

    def apply_trigger(self, images: Tensor) -> Tensor:
        if self.trigger is None:
            raise RuntimeError("TrojanNN.apply_trigger before fit(): no trigger optimized")
        if self.trigger.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"the trigger is {tuple(self.trigger.shape[-2:])} px, the images "
                             f"{tuple(images.shape[-2:])}")
        return (images + self.trigger.float() / 255.0).clamp_(0.0, 1.0)

    def describe(self) -> dict:
        d = {"name": self.name, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                   if f.name not in ("trigger", "fitted")}}
        return d | self.fitted
