"""SAU: shared adversarial unlearning (Wei et al., NeurIPS 2023), as BackdoorBench runs it
(``defense/sau.py``, ``config/defense/sau/cifar10.yaml``).

For every batch of the defender's clean data, in each of ``epochs`` passes:

1. Shared PGD: find per-image perturbations (L-inf ball of radius 0.2 in pixel units, started
   at the ball's corner +0.2, signed steps of 0.2, at most 5 steps) that fool both the model
   being purified ``f`` and the frozen attacked model ``f0`` *with the same label*. The attack
   minimizes ``beta_1 * L_adv + beta_2 * L_share``: ``L_adv`` is minus the cross-entropy (on the
   true labels) of the images that do not yet fool a model, averaged over both models;
   ``L_share`` is the Jensen-Shannon divergence between ``f``'s and ``f0``'s predictions on the
   images that are not yet a shared adversarial example. It stops early once every image is one.
2. Unlearning: one Adam step on ``lmd_1 * CE(f(x), y) + lmd_2 * CE(f(x + delta), y)
   + lmd_3 * L_sar``, where ``L_sar`` pushes ``f``'s probability of ``f0``'s adversarial label
   down on the images whose perturbation fools ``f0`` (its label on ``x + delta`` differs from
   both ``y`` and its label on ``x``): ``-log(1 - p)``, with clamps, summed and divided by the
   batch size.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import to_model_format
from ..progress import tqdm
from ..train import iterate_batches
from .base import DefenderData, Defense, Evaluate, eval_due, frozen_copy, trainable_copy

NORM_TYPES = ("L_inf", "L2", "L1", "Reg")
PGD_INITS = ("zero", "random", "max", "min")


def project(delta: Tensor, norm_type: str, bound: float) -> Tensor:
    """BackdoorBench's projection of per-image perturbations: L-inf clamps, L2 and L1 scale an
    image's perturbation down to the bound when it exceeds it, ``Reg`` leaves it alone."""
    if norm_type == "L_inf":
        return delta.clamp(-bound, bound)
    if norm_type in ("L2", "L1"):
        flat = delta.flatten(1)
        norm = flat.norm(dim=1) if norm_type == "L2" else flat.abs().sum(1)
        factor = torch.where(norm > bound, bound / norm.clamp_min(1e-12), torch.ones_like(norm))
        return delta * factor.view(-1, *([1] * (delta.ndim - 1)))
    if norm_type == "Reg":
        return delta
    raise ValueError(f"unknown norm_type {norm_type!r}; choose one of {NORM_TYPES}")


def js_divergence(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """Per-sample Jensen-Shannon divergence of two predictions, with probabilities clamped at
    1e-8 as in BackdoorBench."""
    p = F.softmax(logits_a, 1).clamp(min=1e-8)
    q = F.softmax(logits_b, 1).clamp(min=1e-8)
    log_m = (0.5 * (p + q)).log()
    return (0.5 * (p * (p.log() - log_m) + q * (q.log() - log_m))).sum(1)


def shared_label_loss(per_logits: Tensor, ref_label: Tensor, selected: Tensor, batch: int) -> Tensor:
    """L_sar: on the ``selected`` images, ``-log(1 - p)`` of the purified model's probability
    ``p`` of the reference model's adversarial label, written twice (through the other classes'
    mass, clamped at 0.999, and through ``1 - p``, clamped at ``p >= 0.001``) and averaged, as
    BackdoorBench writes it for numerical stability; summed and divided by the batch size."""
    if not bool(selected.any()):
        return per_logits.new_zeros(())
    prob = F.softmax(per_logits, 1)
    one_hot = F.one_hot(ref_label, prob.shape[1]).to(prob.dtype)
    pos = (prob * one_hot).sum(1)[selected]
    neg = (prob * (1 - one_hot)).sum(1)[selected]
    loss = -(1e-6 + neg.clamp(max=0.999)).log().sum() - (1 + 1e-6 - pos.clamp(min=0.001)).log().sum()
    return loss / 2 / batch


@dataclass(frozen=True)
class SAU(Defense):
    """SAU with BackdoorBench's CIFAR-10 settings.

    Both models run in eval mode (BackdoorBench's default ``train_mode=False``: BatchNorm keeps
    the attacked model's running statistics; its affine parameters are trained). The clean data
    is not augmented (BackdoorBench's SAU loader uses the test transform) and is reshuffled every
    pass. Perturbations live in pixel units and are not clamped to [0, 1] (BackdoorBench leaves
    that clamp commented out).

    Deviations: the clean predictions inside PGD are computed once per batch rather than at
    every step (the models do not change during the attack, so the values are the same); the
    attack takes gradients with respect to the perturbation only (BackdoorBench's backward also
    fills parameter gradients, which its optimizer then zeroes); ``pgd_init="random"`` draws from
    ``seed``'s generator; ``amp_bf16`` autocasts all forward passes (BackdoorBench's SAU ignores
    its ``amp`` flag); BackdoorBench builds a cosine scheduler but never steps it, so the
    learning rate is constant here too.
    """

    name = "sau"
    label = "SAU"

    epochs: int = 100  # cifar10.yaml n_rounds (passes over the clean data)
    batch_size: int = 256  # cifar10.yaml batch_size
    lr: float = 1e-4  # cifar10.yaml lr; Adam (client_optimizer adam, amsgrad as BackdoorBench builds it)
    betas: tuple = (0.9, 0.999)  # cifar10.yaml adam_betas
    weight_decay: float = 0.0  # cifar10.yaml wd
    norm_type: str = "L_inf"  # cifar10.yaml norm_type
    norm_bound: float = 0.2  # cifar10.yaml trigger_norm (pixel units)
    pgd_step: float = 0.2  # cifar10.yaml adv_lr
    pgd_steps: int = 5  # cifar10.yaml adv_steps
    pgd_init: str = "max"  # cifar10.yaml pgd_init: every pixel starts at +norm_bound
    beta_adv: float = 0.01  # cifar10.yaml beta_1, weight of L_adv in the attack
    beta_share: float = 1.0  # cifar10.yaml beta_2, weight of L_share in the attack
    lmd_clean: float = 1.0  # cifar10.yaml lmd_1, clean cross-entropy
    lmd_at: float = 0.0  # cifar10.yaml lmd_2, adversarial training cross-entropy (off)
    lmd_shared: float = 1.0  # cifar10.yaml lmd_3, L_sar
    outer_steps: int = 1  # cifar10.yaml outer_steps, unlearning steps per attacked batch
    train_mode: bool = False  # sau.py --train_mode: BatchNorm in train mode for the unlearning forward
    seed: int = 0
    amp_bf16: bool = False
    eval_every: int = 0  # call evaluate every this many epochs (0: never), for the report only

    def __call__(self, model: nn.Module, data: DefenderData, *, evaluate: Evaluate | None = None,
                 progress: bool = False) -> tuple[nn.Module, dict]:
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"unknown norm_type {self.norm_type!r}; choose one of {NORM_TYPES}")
        if self.pgd_init not in PGD_INITS:
            raise ValueError(f"unknown pgd_init {self.pgd_init!r}; choose one of {PGD_INITS}")
        t_start = time.perf_counter()
        net, ref = trainable_copy(model).eval(), frozen_copy(model)
        device = next(net.parameters()).device
        opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=self.lr,
                               betas=tuple(self.betas), weight_decay=self.weight_decay, amsgrad=True)
        gen = torch.Generator().manual_seed(self.seed)
        images, labels = data.clean.images.to(device), data.clean.labels.to(device)
        epochs = []
        for e in tqdm(range(self.epochs), desc="sau", disable=not progress):
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            pgd_s = 0.0
            for idx in iterate_batches(len(labels), self.batch_size, gen):
                idx = idx.to(device)
                x, y = images[idx].float().div_(255.0), labels[idx]
                t1 = time.perf_counter()
                delta, pgd_row = self._shared_pgd(net, ref, x, y, gen)
                pgd_s += time.perf_counter() - t1
                for _ in range(self.outer_steps):
                    row = self._unlearn_step(net, ref, opt, x, y, delta)
                for k, v in {**pgd_row, **row}.items():
                    sums[k] = sums.get(k, 0.0) + v * len(y)
            epoch_s = time.perf_counter() - t0
            row = {"epoch": e + 1, **{k: v / len(labels) for k, v in sums.items()},
                   "pgd_s": pgd_s, "unlearn_s": epoch_s - pgd_s, "epoch_s": epoch_s}
            if eval_due(evaluate, self.eval_every, e + 1):
                row.update(evaluate(net))
                net.eval()
            epochs.append(row)
        report = {"defense": self.name, "config": asdict(self), "epochs": epochs,
                  "wall_s": time.perf_counter() - t_start}
        return net.eval(), report

    def _forward(self, net: nn.Module, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp_bf16):
            out = net(to_model_format(net, x))
        return out.float() if out.dtype == torch.bfloat16 else out

    def _init_delta(self, x: Tensor, gen: torch.Generator) -> Tensor:
        if self.pgd_init == "zero":
            delta = torch.zeros_like(x)
        elif self.pgd_init == "random":  # BackdoorBench: rand_like, uniform in [0, 1), then projected
            delta = torch.rand(x.shape, generator=gen).to(x.device)
        else:
            delta = torch.full_like(x, self.norm_bound if self.pgd_init == "max" else -self.norm_bound)
        return project(delta, self.norm_type, self.norm_bound)

    def _shared_pgd(self, net, ref, x: Tensor, y: Tensor, gen) -> tuple[Tensor, dict]:
        """Step 1 (module docstring). Returns the perturbation (detached) and the attack's
        statistics at its last step: the share of images that fool ``f``, ``f0``, both, and
        both with the same label (``pgd_*``), and the steps taken."""
        with torch.no_grad():
            pred, pred_ref = self._forward(net, x).argmax(1), self._forward(ref, x).argmax(1)
        delta = self._init_delta(x, gen)
        stats, steps = {}, 0
        for _ in range(self.pgd_steps):
            delta.requires_grad_(True)
            logits, logits_ref = self._forward(net, x + delta), self._forward(ref, x + delta)
            adv, adv_ref = logits.argmax(1), logits_ref.argmax(1)
            fooled, fooled_ref = adv != pred, adv_ref != pred_ref
            shared = fooled & fooled_ref & (adv == adv_ref)
            ce = F.cross_entropy(logits, y, reduction="none")
            ce_ref = F.cross_entropy(logits_ref, y, reduction="none")
            loss_adv = -(ce[~fooled].sum() + ce_ref[~fooled_ref].sum()) / 2 / len(y)
            loss_share = js_divergence(logits, logits_ref)[~shared].sum() / len(y)
            loss = self.beta_adv * loss_adv + self.beta_share * loss_share
            (grad,) = torch.autograd.grad(loss, delta)
            delta = project(delta.detach() - self.pgd_step * grad.sign(), self.norm_type, self.norm_bound)
            steps += 1
            stats = {"pgd_fooled": fooled, "pgd_fooled_ref": fooled_ref,
                     "pgd_common": fooled & fooled_ref, "pgd_shared": shared}
            if bool(shared.all()):
                break
        row = {k: float(v.float().mean()) for k, v in stats.items()}
        row["pgd_steps"] = float(steps)
        return delta.detach(), row

    def _unlearn_step(self, net, ref, opt, x: Tensor, y: Tensor, delta: Tensor) -> dict:
        """Step 2 (module docstring): one optimizer step; returns its losses and the shares of
        perturbed images that fool ``f`` (label != y), ``f0`` (label != y and != its clean
        label), both, and both with the same label, measured before the step."""
        x_adv = x + delta
        if self.train_mode:
            net.train()
        logits, per_logits = self._forward(net, torch.cat([x, x_adv])).split(len(y))
        net.eval()
        with torch.no_grad():
            pred_ref = self._forward(ref, x).argmax(1)
            adv_ref = self._forward(ref, x_adv).argmax(1)
        adv = per_logits.detach().argmax(1)
        fooled = adv != y
        fooled_ref = (adv_ref != y) & (adv_ref != pred_ref)
        common = fooled & fooled_ref
        loss_cl = F.cross_entropy(logits, y)
        loss_at = F.cross_entropy(per_logits, y)
        loss_sar = shared_label_loss(per_logits, adv_ref, fooled_ref, len(y))
        loss = self.lmd_clean * loss_cl + self.lmd_at * loss_at + self.lmd_shared * loss_sar
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach()), "loss_clean": float(loss_cl.detach()),
                "loss_at": float(loss_at.detach()), "loss_sar": float(loss_sar.detach()),
                "fooled": float(fooled.float().mean()), "fooled_ref": float(fooled_ref.float().mean()),
                "common": float(common.float().mean()),
                "shared": float((common & (adv == adv_ref)).float().mean())}
