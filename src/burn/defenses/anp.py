"""Adversarial Neuron Pruning (Wu and Wang, NeurIPS 2021) as BackdoorBench runs it on CIFAR-10
(``defense/anp.py``, ``utils/defense_utils/anp/anp_model/anp_batchnorm.py`` with
``config/defense/anp/cifar10.yaml``).

Every BatchNorm neuron ``k`` gets a mask ``m_k`` in [0, 1] (init 1) and, during the mask
optimization only, multiplicative noise on its affine parameters: the layer computes with
weight ``gamma_k * (m_k + d_k)`` and bias ``beta_k * (1 + e_k)``. Per batch the noise starts
uniform in [-eps, eps] and takes ``steps`` signed ascent steps of ``eps / steps`` on the
cross-entropy (the neurons whose perturbation hurts most); the masks then descend
``alpha * CE(masked) + (1 - alpha) * CE(masked + noise)``. Neurons whose mask ends at or below
a threshold are pruned (their BN weight set to zero) in a plain copy of the original model.

The masks and noise enter through ``torch.func.functional_call`` (the BN parameters are
substituted per call), so the model's class and modules are never changed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..data import ImageDataset
from ..models import to_model_format
from ..progress import tqdm
from ..train import augment_batch
from .base import (
    DefenderData,
    Defense,
    Evaluate,
    accuracy_on,
    eval_due,
    frozen_copy,
    selection_split,
    trainable_copy,
)
from .fp import within_tolerance


def bn_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """Every BatchNorm2d of the model, by name (in BackdoorBench's PreAct-ResNet-18: bn1 and
    bn2 of each block)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.affine for _, m in layers), "ANP needs affine BatchNorm layers"
    return layers


def masked_forward(model: nn.Module, layers, masks: list[Tensor], x: Tensor,
                   noise: tuple[list[Tensor], list[Tensor]] | None = None) -> Tensor:
    """``model(x)`` with each BN layer's weight multiplied by ``mask`` (+ weight noise) and,
    with ``noise``, its bias by ``1 + bias noise``; as BackdoorBench's NoisyBatchNorm2d."""
    params = {}
    for i, (name, m) in enumerate(layers):
        if noise is None:
            params[f"{name}.weight"] = m.weight * masks[i]
        else:
            params[f"{name}.weight"] = m.weight * (masks[i] + noise[0][i])
            params[f"{name}.bias"] = m.bias * (1.0 + noise[1][i])
    return functional_call(model, params, (x,))


def adversarial_noise(model: nn.Module, layers, masks: list[Tensor], x: Tensor, y: Tensor, *,
                      eps: float, steps: int, generator: torch.Generator,
                      amp_bf16: bool = False) -> tuple[list[Tensor], list[Tensor]]:
    """Weight and bias noise per BN layer: uniform in [-eps, eps], then ``steps`` steps of
    ``eps / steps`` along the sign of the cross-entropy gradient (BackdoorBench: SGD with lr
    eps/steps on the sign of the gradient of -CE, not projected afterwards, so the noise
    ends in [-2 eps, 2 eps] for one step)."""
    dev = x.device
    noise = tuple([((torch.rand(m.num_features, generator=generator) * 2 - 1) * eps).to(dev)
                   for _, m in layers] for _ in range(2))
    fixed = [mk.detach() for mk in masks]
    for _ in range(steps):
        flat = [t.requires_grad_(True) for t in noise[0] + noise[1]]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp_bf16):
            loss = F.cross_entropy(masked_forward(model, layers, fixed, x, noise).float(), y)
        grads = torch.autograd.grad(loss, flat)
        with torch.no_grad():
            stepped = [t + (eps / steps) * g.sign() for t, g in zip(flat, grads)]
        noise = (stepped[:len(layers)], stepped[len(layers):])
    return tuple([t.detach() for t in part] for part in noise)


def optimize_masks(model: nn.Module, ds: ImageDataset, cfg: ANP, generator: torch.Generator, *,
                   flip: bool, evaluate: Evaluate | None = None,
                   progress: bool = False) -> tuple[list[Tensor], list[dict]]:
    """ANP's mask optimization: ``cfg.iterations`` batches drawn with replacement from ``ds``
    (random crop + flip), the BN layers in training mode as in BackdoorBench (batch
    statistics; the running statistics of the working copy are discarded). Returns the
    masks (CPU, one per BN layer) and a row per ``cfg.log_every`` iterations."""
    work = frozen_copy(model).train()
    layers = bn_layers(work)
    dev = next(work.parameters()).device
    masks = [torch.ones(m.num_features, device=dev, requires_grad=True) for _, m in layers]
    opt = torch.optim.SGD(masks, lr=cfg.mask_lr, momentum=cfg.mask_momentum)
    rows, tot_loss, tot_correct, seen, t0 = [], 0.0, 0, 0, time.perf_counter()
    for it in tqdm(range(cfg.iterations), desc="anp masks", disable=not progress):
        idx = torch.randint(len(ds), (cfg.batch_size,), generator=generator)
        x = augment_batch(ds.float(idx), generator, flip=flip)
        x, y = to_model_format(work, x.to(dev)), ds.labels[idx].to(dev)
        noise = adversarial_noise(work, layers, masks, x, y, eps=cfg.eps, steps=cfg.steps,
                                  generator=generator, amp_bf16=cfg.amp_bf16) \
            if cfg.eps > 0 else None
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.amp_bf16):
            logits = masked_forward(work, layers, masks, x).float()
            loss_rob = F.cross_entropy(masked_forward(work, layers, masks, x, noise).float(), y) \
                if noise is not None else torch.zeros((), device=dev)
        loss = cfg.alpha * F.cross_entropy(logits, y) + (1 - cfg.alpha) * loss_rob
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for mk in masks:
                mk.clamp_(0.0, 1.0)
        tot_loss += float(loss.detach()) * len(y)
        tot_correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        if (it + 1) % cfg.log_every == 0 or it + 1 == cfg.iterations:
            row = {"iteration": it + 1, "loss": tot_loss / seen, "train_acc": tot_correct / seen,
                   "wall_s": time.perf_counter() - t0}
            if eval_due(evaluate, cfg.eval_every, it + 1, cfg.iterations):
                row.update(evaluate(apply_masks(model, [mk.detach() for mk in masks])))
            rows.append(row)
            tot_loss, tot_correct, seen, t0 = 0.0, 0, 0, time.perf_counter()
    return [mk.detach().cpu() for mk in masks], rows


def apply_masks(model: nn.Module, masks: list[Tensor]) -> nn.Module:
    """A copy of ``model`` (eval mode) with each BN weight multiplied by its (soft) mask: the
    masked model of the optimization with the original running statistics (reports only)."""
    m = frozen_copy(model)
    for (_, bn), mk in zip(bn_layers(m), masks):
        bn.weight.mul_(mk.to(bn.weight.device))
    return m


def stored(mask: Tensor) -> Tensor:
    """``mask`` rounded to 4 decimals (float64), as BackdoorBench writes it to its mask file
    and reads it back before comparing with the thresholds."""
    return torch.round(mask.double() * 1e4) / 1e4


def prune_by_threshold(model: nn.Module, masks: list[Tensor],
                       threshold: float | None) -> tuple[nn.Module, int]:
    """A trainable copy of ``model`` (eval mode) with the BN weight of every neuron whose mask,
    rounded to 4 decimals as BackdoorBench's mask file stores it, is <= ``threshold`` set to
    zero (the bias stays, as in BackdoorBench). ``None`` prunes nothing. Returns the copy
    and the number of pruned neurons."""
    m = trainable_copy(model).eval()
    n = 0
    if threshold is None:
        return m, 0
    with torch.no_grad():
        for (_, bn), mk in zip(bn_layers(m), masks):
            hit = (stored(mk) <= threshold).to(bn.weight.device)
            bn.weight[hit] = 0.0
            n += int(hit.sum())
    return m, n


def thresholds(pruning_max: float, pruning_step: float) -> list[float]:
    """0, step, 2 step, ... up to ``pruning_max`` (BackdoorBench:
    ``np.arange(0, max + step, step)``)."""
    k = int(pruning_max / pruning_step + 1e-9)
    return [round(i * pruning_step, 10) for i in range(k + 1)]


@dataclass(frozen=True)
class ANP(Defense):
    """ANP with BackdoorBench's CIFAR-10 settings (``config/defense/anp/cifar10.yaml``),
    ``pruning_by: threshold`` (pruning by number is not implemented).

    Selection of the threshold among ``thresholds(pruning_max, pruning_step)``:
    - ``"test_set"``: BackdoorBench's rule: the lowest test ASR (strictly below the unpruned
      model's, first such threshold on ties) among thresholds whose test ACC is within
      ``acc_ratio`` (relative) of the unpruned model's; none qualifying leaves it unpruned.
    - ``"held_out"`` (default): without poisoned data the defender cannot measure ASR. ANP's
      premise is that the backdoor neurons are the ones with the smallest masks, so this rule
      prunes as far as clean accuracy allows: scanning the thresholds upward, the last one
      before the first whose held-out ACC leaves the same ``acc_ratio`` tolerance (the
      accuracy constraint of BackdoorBench's rule, and Fine-Pruning's stopping rule). The
      masks are then fitted on the rest of ``data.clean`` only.

    Deliberate deviations from BackdoorBench's ``defense/anp.py``:
    - ``iterations`` is exact (BackdoorBench rounds up to a multiple of ``print_every``; 2,000
      is one).
    - Every BatchNorm2d of the model is masked (with ``final_bn_relu`` models that includes
      the final BN; BackdoorBench's PreAct-ResNet has none).
    - ``amp_bf16`` autocasts the optimization's forwards (BackdoorBench runs them in fp32).
    """

    name = "anp"
    label = "ANP"

    iterations: int = 2000  # nb_iter
    batch_size: int = 256  # batch_size
    eps: float = 0.4  # anp_eps
    steps: int = 1  # anp_steps
    alpha: float = 0.2  # anp_alpha: weight of the clean (noise-free) loss
    mask_lr: float = 0.01  # lr (the mask optimizer's)
    mask_momentum: float = 0.9  # SGD momentum of the mask optimizer (defense/anp.py)
    pruning_max: float = 0.90  # pruning_max
    pruning_step: float = 0.05  # pruning_step
    acc_ratio: float = 0.1  # acc_ratio
    selection: str = "held_out"  # "held_out" | "test_set" (BackdoorBench's rule)
    held_out: float = 0.2  # share of data.clean held out for the threshold choice
    log_every: int = 500  # print_every: a report row per this many iterations
    eval_every: int = 0  # evaluate the masked model every n iterations (report only)
    amp_bf16: bool = False
    seed: int = 0

    def __call__(self, model: nn.Module, data: DefenderData, *, evaluate: Evaluate | None = None,
                 progress: bool = False) -> tuple[nn.Module, dict]:
        fit, held = selection_split(data, self.selection, self.held_out, self.seed, evaluate)
        t_start = time.perf_counter()
        gen = torch.Generator().manual_seed(self.seed)
        masks, log = optimize_masks(model, fit, self, gen, flip=data.flip, evaluate=evaluate,
                                    progress=progress)
        mask_s = time.perf_counter() - t_start
        t0 = time.perf_counter()
        threshold, curve = self._choose(model, masks, held, evaluate)
        purified, n_pruned = prune_by_threshold(model, masks, threshold)
        layers = [n for n, _ in bn_layers(model)]
        report = {"config": asdict(self), "log": log, "threshold": threshold,
                  "n_pruned": n_pruned, "n_neurons": sum(len(mk) for mk in masks),
                  "curve": curve,
                  "mask_values": {n: stored(mk).tolist() for n, mk in zip(layers, masks)},
                  "pruned_per_layer": {n: int((stored(mk) <= threshold).sum())
                                       if threshold is not None else 0
                                       for n, mk in zip(layers, masks)},
                  "n_fit": len(fit), "n_held_out": len(held) if held is not None else 0,
                  "wall_s": {"masks": mask_s, "prune": time.perf_counter() - t0,
                             "total": time.perf_counter() - t_start}}
        return purified.eval(), report

    def _choose(self, model: nn.Module, masks: list[Tensor], held: ImageDataset | None,
                evaluate: Evaluate | None) -> tuple[float | None, list[dict]]:
        """The pruning threshold (``None``: prune nothing) and the per-threshold curve."""
        def measure(t: float | None) -> dict:
            m, n = prune_by_threshold(model, masks, t)
            res = {"acc": accuracy_on(m, held)} if held is not None else dict(evaluate(m))
            return {"threshold": t, "n_pruned": n, **res}

        ref = measure(None)
        curve, chosen = [ref], None
        best_asr = ref.get("asr")
        for t in thresholds(self.pruning_max, self.pruning_step):
            row = measure(t)
            curve.append(row)
            ok = within_tolerance(row["acc"], ref["acc"], self.acc_ratio)
            if held is not None:  # held-out rule: stop at the first threshold that fails
                if not ok:
                    break
                chosen = t
            elif ok and row["asr"] < best_asr:  # BackdoorBench's test-set rule
                chosen, best_asr = t, row["asr"]
        return chosen, curve
