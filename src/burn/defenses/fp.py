"""Fine-Pruning (Liu, Dolan-Gavitt and Garg, RAID 2018) as BackdoorBench runs it on CIFAR-10
(``defense/fp.py`` with ``config/defense/fp/cifar10.yaml``).

1. Rank the inputs of the final linear layer (the pooled layer4 channels, ``model.features``)
   by their mean activation on the clean data, lowest first.
2. Mask a growing prefix of that ranking, ``ceil(prune_step * channels)`` more channels per
   step, while the clean accuracy stays within ``acc_ratio`` (relative) of the unpruned
   model's; keep the last mask that passed.
3. Fine-tune the whole masked model on the clean data (SGD + cosine, augmented), the pruned
   columns of ``linear.weight`` held at zero.

The mask is folded into the weights (zero columns), so the result is a plain model of the
same class.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ..data import ImageDataset
from ..models import to_model_format
from ..progress import tqdm
from ..train import augment_batch, run_epoch
from .base import (
    DefenderData,
    Defense,
    Evaluate,
    eval_due,
    frozen_copy,
    selection_split,
    trainable_copy,
)


def within_tolerance(acc: float, acc0: float, ratio: float) -> bool:
    """BackdoorBench's acceptance test: ``|acc - acc0| / acc0 < ratio``."""
    return abs(acc - acc0) / max(acc0, 1e-12) < ratio


def prune_step_size(n_channels: int, step_ratio: float) -> int:
    """Channels added per step: ``ceil(n_channels * step_ratio)`` (6 of 512 at 1%)."""
    return max(1, math.ceil(n_channels * step_ratio))


def prune_counts(n_channels: int, step_ratio: float) -> list[int]:
    """The numbers of pruned channels tried, in order: 0, s, 2s, ... below ``n_channels``
    (``s = prune_step_size``), as BackdoorBench's loop."""
    return list(range(0, n_channels, prune_step_size(n_channels, step_ratio)))


@torch.no_grad()
def mean_activation(model: nn.Module, images: Tensor, *, generator: torch.Generator | None = None,
                    flip: bool = True, batch_size: int = 256) -> Tensor:
    """Mean of ``model.features`` (the linear layer's input) over ``images`` (uint8), the
    model in eval mode. With a ``generator`` each image is randomly cropped and flipped
    first, as BackdoorBench's ranking pass reads the clean data through its training
    transform."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = None
    for s in range(0, len(images), batch_size):
        x = images[s:s + batch_size].float().div_(255.0)
        if generator is not None:
            x = augment_batch(x, generator, flip=flip)
        f = model.features(to_model_format(model, x.to(device))).float().sum(0).cpu()
        total = f if total is None else total + f
    model.train(was_training)
    return total / len(images)


@torch.no_grad()
def _features(model: nn.Module, images: Tensor, batch_size: int = 500) -> Tensor:
    model.eval()
    device = next(model.parameters()).device
    out = [model.features(to_model_format(model, images[s:s + batch_size].float().div(255.0)
                                          .to(device))).float().cpu()
           for s in range(0, len(images), batch_size)]
    return torch.cat(out)


def pruned_copy(model: nn.Module, channels: Tensor) -> nn.Module:
    """A copy of ``model`` (eval mode) with the ``channels`` columns of ``linear.weight`` zero."""
    m = frozen_copy(model)
    m.linear.weight[:, channels] = 0.0
    return m


def finetune_masked(model: nn.Module, keep: Tensor, ds: ImageDataset, *, epochs: int,
                    batch_size: int, lr: float, momentum: float, weight_decay: float,
                    generator: torch.Generator, flip: bool, amp_bf16: bool,
                    evaluate: Evaluate | None = None, eval_every: int = 0,
                    progress: bool = False) -> list[dict]:
    """Fine-tune all of ``model`` in place on ``ds`` with SGD + cosine annealing (T_max =
    ``epochs``), random crop + flip. ``keep`` (bool, one per linear input) is the mask: the
    other columns of ``linear.weight`` are zeroed and their gradient masked, so SGD's
    momentum and weight decay keep them exactly zero. Returns the per-epoch rows."""
    w = model.linear.weight
    col = keep.to(w.device, w.dtype)[None, :]
    with torch.no_grad():
        w.mul_(col)
    handle = w.register_hook(lambda g: g * col)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    rows = []
    try:
        for epoch in tqdm(range(epochs), desc="fp finetune", disable=not progress):
            t0 = time.perf_counter()
            loss = run_epoch(model, opt, ds.images, ds.labels, batch_size=batch_size,
                             generator=generator, augment=True, flip=flip, amp_bf16=amp_bf16)
            row = {"epoch": epoch + 1, "loss": loss, "lr": opt.param_groups[0]["lr"]}
            sched.step()
            row["epoch_s"] = time.perf_counter() - t0
            if eval_due(evaluate, eval_every, epoch + 1, epochs):
                row.update(evaluate(model.eval()))
            rows.append(row)
    finally:
        handle.remove()
    return rows


@dataclass(frozen=True)
class FinePruning(Defense):
    """Fine-Pruning with BackdoorBench's CIFAR-10 settings (``config/defense/fp/cifar10.yaml``).

    ``selection="held_out"`` (default): the ranking uses the fitting part of ``data.clean``
    and the accuracy test its held-out part (``held_out`` share); fine-tuning then uses all of
    ``data.clean``. ``selection="test_set"``: BackdoorBench's rule, ranking on all of
    ``data.clean`` and measuring ACC with ``evaluate`` (the clean test set). As in
    BackdoorBench, the ranking pass reads the images through the training augmentation
    (random crop + flip), the model in eval mode.

    Deliberate deviations from BackdoorBench's ``defense/fp.py``:
    - At step ``k`` it prunes ``seq_sort[0:k-1]``, one channel fewer than the count it logs;
      here step ``k`` prunes exactly ``k`` channels.
    - Its ``last_net`` aliases the model being pruned, so the model it fine-tunes carries the
      mask of the first step that FAILED the accuracy test (``k_fail - 1`` channels); here the
      last mask that passed is kept, as its comments and the paper intend.
    - Cosine T_max is ``epochs`` (BackdoorBench: 100 whatever the epochs); equal at 100.
    - ``amp_bf16`` is bf16 autocast of the fine-tuning forward (BackdoorBench: fp16 AMP).
    """

    name = "fp"
    label = "FP"

    prune_step: float = 0.01  # once_prune_ratio: share of the channels added per step
    acc_ratio: float = 0.1  # acc_ratio: tolerated relative clean-ACC change
    epochs: int = 100  # epochs (fine-tuning)
    batch_size: int = 256  # batch_size
    lr: float = 0.01  # lr
    momentum: float = 0.9  # sgd_momentum
    weight_decay: float = 5e-4  # wd
    selection: str = "held_out"  # "held_out" | "test_set" (BackdoorBench's rule)
    held_out: float = 0.2  # share of data.clean held out for the accuracy test
    eval_every: int = 0  # evaluate on the test sets every n fine-tuning epochs (report only)
    amp_bf16: bool = False
    seed: int = 0

    def __call__(self, model: nn.Module, data: DefenderData, *, evaluate: Evaluate | None = None,
                 progress: bool = False) -> tuple[nn.Module, dict]:
        fit, held = selection_split(data, self.selection, self.held_out, self.seed, evaluate)
        t_start = time.perf_counter()
        gen = torch.Generator().manual_seed(self.seed)
        base = frozen_copy(model)
        t0 = time.perf_counter()
        activation = mean_activation(base, fit.images, generator=gen, flip=data.flip,
                                     batch_size=self.batch_size)
        order = torch.argsort(activation, stable=True)
        rank_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        n_pruned, curve = self._choose(base, order, held, evaluate)
        prune_s = time.perf_counter() - t0
        keep = torch.ones(len(order), dtype=torch.bool)
        keep[order[:n_pruned]] = False
        purified = trainable_copy(model)
        t0 = time.perf_counter()
        epochs = finetune_masked(purified, keep, data.clean, epochs=self.epochs,
                                 batch_size=self.batch_size, lr=self.lr, momentum=self.momentum,
                                 weight_decay=self.weight_decay, generator=gen, flip=data.flip,
                                 amp_bf16=self.amp_bf16, evaluate=evaluate,
                                 eval_every=self.eval_every, progress=progress)
        finetune_s = time.perf_counter() - t0
        report = {"config": asdict(self), "n_channels": len(order),
                  "step": prune_step_size(len(order), self.prune_step),
                  "activation": activation.tolist(), "order": order.tolist(),
                  "prune_curve": curve, "n_pruned": n_pruned,
                  "pruned_channels": sorted(order[:n_pruned].tolist()),
                  "n_fit": len(fit), "n_held_out": len(held) if held is not None else 0,
                  "epochs": epochs,
                  "wall_s": {"rank": rank_s, "prune": prune_s, "finetune": finetune_s,
                             "total": time.perf_counter() - t_start}}
        return purified.eval(), report

    def _choose(self, base: nn.Module, order: Tensor, held: ImageDataset | None,
                evaluate: Evaluate | None) -> tuple[int, list[dict]]:
        """The number of lowest-ranked channels to prune: the last count of
        ``prune_counts`` before the first whose clean ACC leaves the tolerance. ACC is
        measured on ``held`` (from its features, which pruning the linear input does not
        change) or, with ``selection="test_set"``, by ``evaluate`` on the test sets."""
        if held is not None:
            feats, labels = _features(base, held.images), held.labels
            w = base.linear.weight.detach().float().cpu()
            b = base.linear.bias.detach().float().cpu()

        def measure(k: int) -> dict:
            if held is None:
                return dict(evaluate(pruned_copy(base, order[:k])))
            wk = w.clone()
            wk[:, order[:k]] = 0.0
            return {"acc": float(((feats @ wk.T + b).argmax(1) == labels).float().mean())}

        chosen, curve, acc0 = 0, [], None
        for k in prune_counts(len(order), self.prune_step):
            row = {"n_pruned": k, **measure(k)}
            curve.append(row)
            if acc0 is None:
                acc0 = row["acc"]
            if not within_tolerance(row["acc"], acc0, self.acc_ratio):
                break
            chosen = k
        return chosen, curve
