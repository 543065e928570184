"""I-BAU: adversarial unlearning of backdoors via implicit hypergradient (Zeng et al., ICLR
2022), as BackdoorBench runs it (``defense/i-bau.py``, ``config/defense/i-bau/cifar10.yaml``).

The defense alternates, for ``rounds`` rounds, between two steps on the defender's clean data:

1. Find a universal perturbation ``delta`` (one image's shape) that changes the model's
   predictions: one pass of SGD (lr 10) over the clean batches on
   ``-CE(f(x + delta), f(x).argmax()) + 0.001 * ||delta||^2``, from ``delta = 0``.
2. Unlearn it: for every clean batch, one Adam step on the model's parameters ``theta`` with the
   implicit hypergradient of the bilevel problem
   ``min_theta L_out(delta*(theta), theta)`` with ``delta*(theta)`` the fixed point of
   ``Phi(delta, theta) = delta - 0.1 * d/d delta L_in(delta, theta)``. ``L_out`` is the
   cross-entropy of the batch with ``delta`` added to 1% of its images; ``L_in`` is the
   negative cross-entropy of the first stored batch under ``delta`` plus ``0.001 ||delta||^2``.
   The hypergradient is
   ``dL_out/dtheta + (dPhi/dtheta)^T v``, ``v = sum_{k<K} (dPhi/ddelta^T)^k dL_out/ddelta``,
   with ``v`` from K fixed-point iterations of vector-Jacobian products.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import to_model_format
from ..progress import tqdm
from ..train import augment_batch, iterate_batches
from .base import DefenderData, Defense, Evaluate, eval_due, trainable_copy

# BackdoorBench stops the fixed-point iteration early when the iterate moves less than this
FIXED_POINT_TOL = 1e-10


def clean_batches(images: Tensor, labels: Tensor, batch_size: int, generator: torch.Generator, *,
                  augment: bool, flip: bool, device: torch.device):
    """One shuffled pass over ``images`` (uint8, on any device) as float batches in [0, 1] on
    ``device``, randomly cropped and flipped with ``augment`` (BackdoorBench's training
    transform)."""
    for idx in iterate_batches(len(labels), batch_size, generator):
        x = images[idx.to(images.device)].float().div_(255.0)
        if augment:
            x = augment_batch(x, generator, 4, flip)
        yield x.to(device), labels[idx.to(labels.device)].to(device)


def input_scale(model: nn.Module, device: torch.device) -> Tensor:
    """The per-channel std of the model's normalization layer (ones without one): BackdoorBench
    adds ``delta`` to normalized images, so ``delta * std`` is its size in pixel units."""
    norm = getattr(model, "normalize", None)
    std = getattr(norm, "std", None)
    return (std.detach().to(device) if std is not None else torch.ones(1, 1, 1, 1, device=device))


@dataclass(frozen=True)
class IBAU(Defense):
    """I-BAU with BackdoorBench's CIFAR-10 settings.

    The model stays in eval mode throughout, as in BackdoorBench (BatchNorm uses and keeps the
    attacked model's running statistics; its affine parameters are trained). ``delta`` lives in
    normalized-input units, as in BackdoorBench, and is added as ``delta * std`` to the [0, 1]
    images; nothing is clamped to [0, 1] and ``delta`` has no norm bound (BackdoorBench's L2-ball
    projection is commented out). The unlearning batches are drawn (shuffled, augmented) once
    before the first round and reused in every round; the perturbation pass draws fresh ones
    each round, as BackdoorBench's list and loader do.

    Deviations: the 1% of images that get ``delta`` in ``L_out`` are drawn from ``seed``'s
    generator (BackdoorBench: Python's ``random``); ``amp_bf16`` autocasts all forward passes
    (BackdoorBench's I-BAU ignores its ``amp`` flag); BackdoorBench builds a cosine scheduler
    but never steps it, so the learning rate is constant here too.
    """

    name = "ibau"
    label = "I-BAU"

    rounds: int = 5  # cifar10.yaml n_rounds
    fixed_point_steps: int = 5  # cifar10.yaml K
    batch_size: int = 256  # cifar10.yaml batch_size
    lr: float = 1e-4  # cifar10.yaml lr; Adam (client_optimizer adam, amsgrad as BackdoorBench builds it)
    betas: tuple = (0.9, 0.999)  # cifar10.yaml adam_betas
    weight_decay: float = 0.0  # cifar10.yaml wd
    delta_lr: float = 10.0  # i-bau.py: SGD(params=[batch_pert], lr=10)
    delta_reg: float = 0.001  # i-bau.py: 0.001 * ||delta||^2 in both perturbation losses
    inner_lr: float = 0.1  # i-bau.py: GradientDescent(loss_inner, 0.1), the fixed-point map's step
    patch_share: float = 0.01  # i-bau.py loss_outer: portion = 0.01 of each batch gets delta
    augment: bool = True  # i-bau.py: the clean loader uses get_transform(train=True)
    seed: int = 0
    amp_bf16: bool = False
    eval_every: int = 0  # call evaluate every this many rounds (0: never), for the report only

    def __call__(self, model: nn.Module, data: DefenderData, *, evaluate: Evaluate | None = None,
                 progress: bool = False) -> tuple[nn.Module, dict]:
        t_start = time.perf_counter()
        net = trainable_copy(model).eval()
        device = next(net.parameters()).device
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.lr, betas=tuple(self.betas),
                               weight_decay=self.weight_decay, amsgrad=True)
        gen = torch.Generator().manual_seed(self.seed)
        images, labels = data.clean.images.to(device), data.clean.labels.to(device)
        scale = input_scale(net, device)
        stored = list(clean_batches(images, labels, self.batch_size, gen, augment=self.augment,
                                    flip=data.flip, device=device))
        rounds = []
        for r in tqdm(range(self.rounds), desc="i-bau", disable=not progress):
            t0 = time.perf_counter()
            delta, delta_row = self._perturbation(net, images, labels, scale, gen, data.flip, device)
            t1 = time.perf_counter()
            outer_losses = []
            for b in range(len(stored)):
                opt.zero_grad(set_to_none=True)
                outer_losses.append(self._unlearn_step(net, params, delta, stored[0], stored[b],
                                                       scale, gen))
                opt.step()
            row = {"round": r + 1, **delta_row, "outer_loss": sum(outer_losses) / len(outer_losses),
                   "perturb_s": t1 - t0, "unlearn_s": time.perf_counter() - t1}
            if eval_due(evaluate, self.eval_every, r + 1):
                row.update(evaluate(net))
                net.eval()
            rounds.append(row)
        report = {"defense": self.name, "config": asdict(self), "delta_shape": list(images.shape[1:]),
                  "rounds": rounds, "wall_s": time.perf_counter() - t_start}
        return net.eval(), report

    def _forward(self, net: nn.Module, x: Tensor) -> Tensor:
        device = x.device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp_bf16):
            out = net(to_model_format(net, x))
        return out.float() if out.dtype == torch.bfloat16 else out

    def _perturbation(self, net, images, labels, scale, gen, flip, device) -> tuple[Tensor, dict]:
        """Step 1: one SGD pass over fresh clean batches on ``-CE(f(x + delta), f(x).argmax())
        + reg ||delta||^2``. Returns ``delta`` (C, H, W, normalized units, detached) and its
        statistics: norms in normalized and pixel units, the mean loss, and the share of images
        whose prediction ``delta`` changed (measured at each batch before its step)."""
        delta = torch.zeros(1, *images.shape[1:], device=device, requires_grad=True)
        opt = torch.optim.SGD([delta], lr=self.delta_lr)
        losses, fooled, seen = [], 0, 0
        for x, _ in clean_batches(images, labels, self.batch_size, gen, augment=self.augment,
                                  flip=flip, device=device):
            with torch.no_grad():
                pred = self._forward(net, x).argmax(1)
            logits = self._forward(net, x + delta * scale)
            loss = -F.cross_entropy(logits, pred) + self.delta_reg * delta.pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            fooled += int((logits.detach().argmax(1) != pred).sum())
            seen += len(pred)
        d = delta.detach()[0]
        pixels = d * scale[0]
        stats = {"delta_l2": float(d.norm()), "delta_linf": float(d.abs().max()),
                 "delta_l2_pixels": float(pixels.norm()), "delta_linf_pixels": float(pixels.abs().max()),
                 "delta_loss": sum(losses) / max(len(losses), 1),
                 "delta_fooled_share": fooled / max(seen, 1)}
        return d, stats

    def _unlearn_step(self, net, params, delta, inner_batch, outer_batch, scale, gen) -> float:
        """Step 2 for one batch: set each parameter's ``.grad`` to the implicit hypergradient
        (see the module docstring); returns ``L_out``."""
        delta = delta.detach().requires_grad_(True)
        xb, yb = outer_batch
        k = int(len(yb) * self.patch_share)
        rows = torch.randperm(len(yb), generator=gen)[:k].to(xb.device)
        mask = torch.zeros(len(yb), 1, 1, 1, device=xb.device)
        mask[rows] = 1.0
        outer = F.cross_entropy(self._forward(net, xb + mask * delta * scale), yb)
        g_delta, *g_theta = torch.autograd.grad(outer, [delta, *params], allow_unused=True)
        g_delta = torch.zeros_like(delta) if g_delta is None else g_delta
        # the fixed-point map Phi(delta, theta) = delta - inner_lr * dL_in/ddelta, kept
        # differentiable in both arguments
        x0, y0 = inner_batch
        inner = (-F.cross_entropy(self._forward(net, x0 + delta * scale), y0)
                 + self.delta_reg * delta.pow(2).sum())
        (g_inner,) = torch.autograd.grad(inner, delta, create_graph=True)
        mapped = delta - self.inner_lr * g_inner
        # v_k = J^T v_{k-1} + dL_out/ddelta from v_0 = 0, J = dPhi/ddelta: the first iterate is
        # dL_out/ddelta itself, so its vector-Jacobian product with 0 is skipped
        v = g_delta if self.fixed_point_steps > 0 else torch.zeros_like(delta)
        moved = float(v.norm())
        for _ in range(self.fixed_point_steps - 1):
            if moved < FIXED_POINT_TOL:
                break
            (jv,) = torch.autograd.grad(mapped, delta, grad_outputs=v, retain_graph=True)
            v_next = jv + g_delta
            moved = float((v_next - v).norm())
            v = v_next
        g_map = torch.autograd.grad(mapped, params, grad_outputs=v, allow_unused=True)
        for p, g0, g1 in zip(params, g_theta, g_map):
            total = sum(g for g in (g0, g1) if g is not None)
            p.grad = total.detach() if isinstance(total, Tensor) else torch.zeros_like(p)
        return float(outer.detach())
