"""L-infinity PGD and fast adversarial training, for Label-consistent's robust model.

Label-consistent (Turner et al., 2019) makes its poisoned target-class images hard to learn by
an untargeted PGD attack on their true label from an adversarially robust model.
BackdoorBench loads that model from a file (``resource/label-consistent/``, a ResNet-18 trained
elsewhere); here it is trained by fast adversarial training (Wong, Rice and Kolter, "Fast is
better than free", ICLR 2020: FGSM from a uniform random start, eps 8/255, step 10/255, a cyclic
learning rate peaking at 0.2 halfway, SGD momentum 0.9, weight decay 5e-4, batch 128, 15
epochs, random crop and flip), on the preset's PreAct-ResNet-18 as the ``robust_model``
resource (``burn.resources``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import ImageDataset
from .models import create_model, to_model_format
from .progress import tqdm
from .resources import Resource, register
from .train import augment_batch, iterate_batches


def pgd_linf(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, step: float, steps: int,
             start: Tensor | None = None) -> Tensor:
    """Untargeted L-infinity PGD on the cross-entropy of labels ``y``: ``steps`` sign steps of
    ``step``, projected on the ``eps`` ball around ``x`` and on [0, 1]. ``start``: the first
    iterate (default ``x`` itself, as BackdoorBench's crafting script, no random start).
    ``model`` in eval mode; its weights get no gradient."""
    x = to_model_format(model, x)
    adv = to_model_format(model, (x if start is None else start).clone())
    for _ in range(steps):
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
        with torch.no_grad():
            adv = (x + (adv + step * grad.sign() - x).clamp_(-eps, eps)).clamp_(0.0, 1.0)
    return adv.detach()


def cyclic_lr(step: int, total: int, peak: float) -> float:
    """Wong et al.'s triangular schedule: 0 to ``peak`` over the first half, back to 0."""
    half = total / 2
    return peak * (step / half if step <= half else max(0.0, (total - step) / half))


def fast_at_epoch(model: nn.Module, opt, images: Tensor, labels: Tensor, cfg: "RobustModel", *,
                  generator: torch.Generator, step0: int, total: int, flip: bool,
                  progress: bool) -> tuple[float, float]:
    """One epoch of FGSM training from a random start; returns (loss, accuracy on the
    adversarial batches)."""
    model.train()
    device = next(model.parameters()).device
    loss_sum = correct = count = 0
    batches = list(iterate_batches(len(labels), cfg.batch_size, generator))
    for i, idx in enumerate(tqdm(batches, desc="fast AT", leave=False, disable=not progress)):
        for group in opt.param_groups:
            group["lr"] = cyclic_lr(step0 + i + 1, total, cfg.lr_max)
        x = augment_batch(images[idx].float().div_(255.0), generator, flip=flip)
        x = to_model_format(model, x.to(device))
        y = labels[idx].to(device)
        delta = (torch.rand(x.shape, generator=generator) * 2 - 1).to(device) * cfg.eps
        delta = to_model_format(model, (x + delta).clamp(0.0, 1.0) - x).requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
        delta = (delta.detach() + cfg.alpha * grad.sign()).clamp_(-cfg.eps, cfg.eps)
        adv = (x + delta).clamp_(0.0, 1.0)
        out = model(adv)
        loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += float(loss.detach()) * len(y)
        correct += int((out.argmax(1) == y).sum())
        count += len(y)
    return loss_sum / count, correct / count


@register
@dataclass(frozen=True)
class RobustModel(Resource):
    """An adversarially robust classifier trained by fast adversarial training (module
    docstring: Wong et al.'s CIFAR-10 settings are the defaults). ``eval_*``: the PGD attack of
    the record's robust accuracy, on ``eval_images`` test images drawn under seed 0."""

    arch: str = "preactresnet18"
    width: int = 64
    epochs: int = 15
    batch_size: int = 128
    lr_max: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eps: float = 8 / 255
    alpha: float = 10 / 255
    eval_steps: int = 10
    eval_step: float = 2 / 255
    eval_images: int = 1000

    name = "robust_model"

    def network(self, num_classes: int, image_size: int, dataset: str) -> nn.Module:
        return create_model(self.arch, num_classes, self.width, dataset)

    def train(self, train: ImageDataset, *, dataset: str, seed: int, device: torch.device,
              progress: bool) -> nn.Module:
        from .data import dataset_spec

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.network(train.num_classes, train.images.shape[-1], dataset).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=self.momentum,
                              weight_decay=self.weight_decay)
        gen = torch.Generator().manual_seed(seed)
        per_epoch = math.ceil(len(train) / self.batch_size)
        bar = tqdm(range(self.epochs), desc="robust model (fast AT), epochs", disable=not progress)
        for epoch in bar:
            loss, acc = fast_at_epoch(model, opt, train.images, train.labels, self, generator=gen,
                                      step0=epoch * per_epoch, total=self.epochs * per_epoch,
                                      flip=dataset_spec(dataset).flip, progress=progress)
            if not math.isfinite(loss):
                raise FloatingPointError(f"fast adversarial training diverged at epoch {epoch + 1}")
            bar.set_postfix(loss=f"{loss:.3f}", fgsm_acc=f"{acc:.3f}")
        return model.eval()

    def measure(self, net: nn.Module, train: ImageDataset, test: ImageDataset, *,
                device: torch.device) -> dict:
        from .metrics import predict

        from .resources import eval_subset

        clean = float((predict(net, test.images).cpu() == test.labels).float().mean())
        idx = eval_subset(len(test), self.eval_images)
        n, correct = len(idx), 0
        for s in range(0, n, 250):
            x = test.images[idx[s:s + 250]].float().div(255.0).to(device)
            y = test.labels[idx[s:s + 250]].to(device)
            adv = pgd_linf(net, x, y, eps=self.eps, step=self.eval_step, steps=self.eval_steps)
            with torch.no_grad():
                correct += int((net(adv).argmax(1) == y).sum())
        return {"clean_acc": clean, "pgd_acc": correct / n,
                "pgd": f"PGD-{self.eval_steps}, eps {self.eps * 255:.0f}/255, step "
                       f"{self.eval_step * 255:.0f}/255, no random start, {n} test images drawn "
                       "under seed 0"}
