"""FT-SAM, fine-tuning with sharpness-aware minimization (Zhu et al., ICCV 2023), as
BackdoorBench runs it.

The attacked model is fine-tuned on the defender's clean data with adaptive SAM: each step
first climbs to the worst nearby weights ``w + e(w)`` (a step of size ``rho`` along the
gradient, scaled per parameter by ``w^2``), then descends with the gradient taken there.
Backdoor neurons have large norms; the perturbation, proportional to the weights, is largest
on them, and minimizing the loss under it moves them away from the backdoor.

BackdoorBench sources: ``defense/ft-sam.py`` (``dsam._train_sam``, ``dsam.mitigation``),
``utils/defense_utils/sam/`` (``sam.py``: ``SAM``; ``util.py``: ``smooth_crossentropy``,
``disable_running_stats``; ``scheduler.py``: ``ProportionScheduler``),
``config/defense/ft-sam/cifar10.yaml`` and ``utils/aggregate_block/train_settings_generate.py``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import to_model_format
from ..progress import tqdm
from ..train import augment_batch, iterate_batches
from .base import DefenderData, Defense, Evaluate, eval_due, trainable_copy


def smooth_cross_entropy(logits: Tensor, labels: Tensor, smoothing: float) -> Tensor:
    """Mean KL divergence from the smoothed label distribution (``1 - smoothing`` on the
    label, ``smoothing / (K - 1)`` on each other class) to the softmax of ``logits``. This is
    BackdoorBench's ``smooth_crossentropy``: unlike PyTorch's ``label_smoothing``, the label
    keeps exactly ``1 - smoothing`` and the loss includes the target's (constant) entropy."""
    k = logits.shape[1]
    target = torch.full_like(logits, smoothing / (k - 1))
    target.scatter_(1, labels[:, None], 1.0 - smoothing)
    logp = F.log_softmax(logits, dim=1)
    return (torch.xlogy(target, target) - target * logp).sum(1).mean()


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module):
    """BatchNorm layers keep normalizing with batch statistics but do not update their
    running statistics (momentum 0) inside the block: SAM's second pass at the perturbed
    weights must not leave a trace in them."""
    saved = [(m, m.momentum) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m, _ in saved:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in saved:
            m.momentum = momentum


def _loss_and_grad(model, x, y, smoothing, amp_bf16) -> tuple[Tensor, Tensor]:
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp_bf16):
        logits = model(x).float()
    loss = smooth_cross_entropy(logits, y, smoothing)
    loss.backward()
    return logits.detach(), loss.detach()


@torch.no_grad()
def sam_perturbation(params: list[Tensor], rho: float, adaptive: bool = True,
                     eps: float = 1e-12) -> list[Tensor]:
    """SAM's ascent ``e`` for each parameter (all with gradients): ``rho * T^2 g / ||T g||``,
    ``T = |w|`` for adaptive SAM and 1 otherwise, the norm taken over all parameters
    together; so ``||e / T|| = rho``."""
    scaled = [p.grad * p.abs() if adaptive else p.grad for p in params]
    scale = rho / (torch.linalg.vector_norm(torch.stack([s.norm() for s in scaled])) + eps)
    return [p.grad * scale * (p * p if adaptive else 1.0) for p in params]


def sam_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, *,
             rho: float, adaptive: bool = True, smoothing: float = 0.1, eps: float = 1e-12,
             amp_bf16: bool = False) -> tuple[Tensor, Tensor]:
    """One (adaptive) SAM update of ``model``; returns the logits and loss at ``w``.

    1. gradient ``g`` at ``w``;
    2. ascend to ``w + e``, ``e = rho * T^2 g / ||T g||`` with ``T = |w|`` for adaptive SAM
       (``T = 1`` otherwise), the norm over all parameters together;
    3. gradient at ``w + e`` (BatchNorm running statistics untouched);
    4. restore ``w`` and let ``optimizer`` (SGD with momentum and weight decay) step with
       that gradient.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    logits, loss = _loss_and_grad(model, x, y, smoothing, amp_bf16)
    with torch.no_grad():
        live = [p for p in params if p.grad is not None]
        originals = [p.detach().clone() for p in live]
        for p, e in zip(live, sam_perturbation(live, rho, adaptive, eps)):
            p.add_(e)
    with frozen_bn_stats(model):
        _loss_and_grad(model, x, y, smoothing, amp_bf16)
    with torch.no_grad():
        for p, w in zip(live, originals):
            p.copy_(w)  # exact restore, rather than subtracting e again
    optimizer.step()
    return logits, loss


@dataclass(frozen=True)
class FTSAM(Defense):
    """FT-SAM with BackdoorBench's CIFAR-10 settings.

    ``epochs`` epochs over the clean data (batch ``batch_size``, random crop + flip per
    ``data.flip``), each batch one adaptive-SAM step (``sam_step``) with ``rho`` on
    BackdoorBench's label-smoothed loss, SGD (``lr``, ``momentum``, ``weight_decay``).
    The learning rate follows ``CosineAnnealingLR(T_max=t_max_steps)`` stepped after every
    *batch*, as ``_train_sam`` does: with 2,500 images (10 batches an epoch) the rate falls
    from ``lr`` to 0 in 10 epochs and rises back in the next 10, five cycles over 100 epochs.
    ``rho`` is constant (BackdoorBench's ``ProportionScheduler`` with rho_max = rho_min).
    The last model is returned; nothing is chosen, so there is no test-set selection rule.

    Deviations from BackdoorBench, on purpose:
    - its gradient decomposition (GSAM, ``alpha``) is left out: with the configured
      ``alpha: 0.0`` it changes nothing;
    - the weights are restored by copying them back rather than by subtracting ``e``, which
      is exact in floating point;
    - ``amp_bf16`` autocasts both passes (BackdoorBench's SAM loop runs in float32).
    """

    name = "ftsam"
    label = "FT-SAM"

    epochs: int = 100  # cifar10.yaml epochs
    lr: float = 0.01  # cifar10.yaml lr
    momentum: float = 0.9  # cifar10.yaml sgd_momentum
    weight_decay: float = 5e-4  # cifar10.yaml wd
    t_max_steps: int = 100  # train_settings_generate.py T_max=100; ft-sam.py steps it per batch
    batch_size: int = 256  # cifar10.yaml batch_size
    rho: float = 2.0  # cifar10.yaml rho_max = rho_min = 2.0
    adaptive: bool = True  # ft-sam.py --adaptive is store_false: adaptive unless disabled
    label_smoothing: float = 0.1  # cifar10.yaml label_smoothing
    perturb_eps: float = 1e-12  # sam.py SAM(perturb_eps=1e-12)
    augment: bool = True  # get_transform(train=True): RandomCrop(32, padding=4) + flip
    amp_bf16: bool = False
    eval_every: int = 0  # evaluate (test sets, report only) every this many epochs; 0: never
    seed: int = 0

    def __call__(self, model: nn.Module, data: DefenderData, *, evaluate: Evaluate | None = None,
                 progress: bool = False) -> tuple[nn.Module, dict]:
        t_start = time.perf_counter()
        gen = torch.Generator().manual_seed(self.seed)
        report: dict = {"config": asdict(self)}
        if self.eval_every and evaluate is not None:
            report["before"] = evaluate(model)
        net = trainable_copy(model)
        opt = torch.optim.SGD(net.parameters(), lr=self.lr, momentum=self.momentum,
                              weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.t_max_steps)
        rows = []
        for epoch in tqdm(range(1, self.epochs + 1), desc="ft-sam", disable=not progress):
            t0 = time.perf_counter()
            row = {"epoch": epoch, **self._epoch(net, opt, sched, data, gen),
                   "lr_end": opt.param_groups[0]["lr"], "epoch_s": time.perf_counter() - t0}
            if eval_due(evaluate, self.eval_every, epoch, self.epochs):
                row.update(evaluate(net))
            rows.append(row)
        report["epochs"] = rows
        report["wall_s"] = time.perf_counter() - t_start
        return net.eval(), report

    def _epoch(self, net, opt, sched, data: DefenderData, gen) -> dict:
        """One epoch of SAM steps, the scheduler stepped after each; returns the mean loss
        and the training accuracy at the unperturbed weights."""
        net.train()
        device = next(net.parameters()).device
        images, labels = data.clean.images, data.clean.labels
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        count = 0
        for idx in iterate_batches(len(labels), self.batch_size, gen):
            idx = idx.to(images.device)
            x = images[idx]
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
            if self.augment:
                x = augment_batch(x, gen, 4, data.flip)
            x = to_model_format(net, x.to(device, non_blocking=True))
            y = labels[idx.to(labels.device)].to(device, non_blocking=True)
            logits, loss = sam_step(net, opt, x, y, rho=self.rho, adaptive=self.adaptive,
                                    smoothing=self.label_smoothing, eps=self.perturb_eps,
                                    amp_bf16=self.amp_bf16)
            sched.step()
            loss_sum += loss.double() * len(idx)
            correct += (logits.argmax(1) == y).sum()
            count += len(idx)
        return {"loss": float(loss_sum) / max(count, 1), "train_acc": int(correct) / max(count, 1)}
