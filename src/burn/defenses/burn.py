"""The Burn defense, as docs/method.md states the paper's method.

Phase 1: rank the training set by DeepFool boundary distance ``r`` of the frozen infected
model ``f0``; relabel the top ``alpha_0`` with their adversarial labels ``y_adv`` and fine-tune
a copy of ``f0`` on them (``f1``).
Phase 2, t = 1..T: score ``S_t = (1 - t/T) * BD + (t/T) * PD_t`` (BD = r / max r, PD_t = the
normalized divergence between ``f0`` and ``ft``); the top ``alpha_t`` by ``S_t`` are relabeled
with ``y_adv``, the bottom ``beta_t`` keep their labels; fine-tune ``ft`` on both.

The true poison mask is used only for the report, never by the algorithm.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import FRACTION, NONNEG, OMIT_AT_DEFAULT, POSITIVE, choices
from ..keys import burn_key
from ..metrics import predict_logits
from ..progress import tqdm
from ..train import run_epoch
from .base import DefenderData, Defense

DIVERGENCES = ("kl", "js", "l2")
SELECTIONS = ("global", "suspect_class", "random", "spread_class", "coverage_class")


def suspect_class(norms: Tensor, labels: Tensor) -> int:
    """The given label whose samples have the largest median boundary distance: under an
    all-to-one attack the poisoned samples all carry the target label and sit far from the
    boundary. Uses only what the defender holds (labels and distances)."""
    classes = labels.unique()
    medians = torch.stack([norms[labels == c].median() for c in classes])
    return int(classes[medians.argmax()])


def spread_class(adv_labels: Tensor, labels: Tensor) -> tuple[int, float]:
    """The given label whose samples' adversarial labels are most spread (Shannon entropy, in
    nats), and its lead over the next label. Under an all-to-one dirty-label attack the target
    label holds the poison, whose adversarial labels fall back to its true classes, any of the
    others; a clean class's fall to a few neighbours. Uses only labels and adversarial labels."""
    classes = labels.unique()
    k = int(max(adv_labels.max(), labels.max())) + 1
    ent = []
    for c in classes:
        p = torch.bincount(adv_labels[labels == c], minlength=k).double()
        p = p[p > 0] / p.sum()
        ent.append(float(-(p * p.log()).sum()))
    ent = torch.tensor(ent)
    top = ent.topk(min(2, len(ent))).values
    gap = float(top[0] - top[1]) if len(top) > 1 else float("inf")
    return int(classes[ent.argmax()]), gap


def coverage_class(adv_labels: Tensor, labels: Tensor) -> tuple[int, float, float]:
    """The given label whose samples' adversarial labels cover every other class best: for each
    label c, the smallest share that any other class takes among the adversarial labels of c's
    samples. A dirty-label all-to-one poison puts images of every other class under the target
    label and their adversarial labels fall back to those classes, so each keeps a share of
    about rate / (1/K + rate) there (0.053 at rate 0.1 and K = 10); a clean class's adversarial
    labels fall to its neighbours and leave some far class almost none. Returns (class, its
    smallest share, the next label's). Uses only labels and adversarial labels."""
    shares = class_coverage(adv_labels, labels)
    classes, cover = list(shares), torch.tensor(list(shares.values()))
    top = cover.topk(min(2, len(cover)))
    second = float(top.values[1]) if len(cover) > 1 else 0.0
    return classes[int(top.indices[0])], float(top.values[0]), second


def class_coverage(adv_labels: Tensor, labels: Tensor) -> dict[int, float]:
    """``{given label c: the smallest share of any other class among the adversarial labels of
    c's samples}`` (``coverage_class``)."""
    k = int(max(adv_labels.max(), labels.max())) + 1
    out = {}
    for c in labels.unique().tolist():
        p = torch.bincount(adv_labels[labels == c], minlength=k).double()
        p = p / p.sum()
        out[c] = float(torch.cat([p[:c], p[c + 1:]]).min())
    return out


@dataclass
class BurnIteration:
    """What happened at iteration ``t`` (t = 0 is phase 1); metrics are after its fine-tuning."""

    t: int
    lam: float
    alpha: float
    beta: float
    n_poison_set: int
    n_clean_set: int
    wall_s: float
    acc: float | None = None
    asr: float | None = None
    ra: float | None = None
    precision: float | None = None  # share of P_t that carries the trigger
    mislabeled_precision: float | None = None  # share of P_t whose given label is wrong
    recall: float | None = None  # share of the poisoned samples that are in P_t
    poisoned_in_clean_set: int | None = None  # truly poisoned samples in C_t
    revert_share: float | None = None  # share of P_t whose y_adv is the original label
    poison_set_label_counts: dict = field(default_factory=dict)  # y_adv histogram of P_t


@dataclass
class BurnReport:
    config: dict
    before: dict
    iterations: list[BurnIteration]
    wall_s: float
    deepfool: dict
    suspect_class: int | None = None  # the estimated target (the class selections only)
    spread_gap: float | None = None  # selection="spread_class": the suspect class's lead, nats
    # selection="coverage_class": the suspect class's and the next class's smallest share
    coverage: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        out = {"config": self.config, "before": self.before,
               "iterations": [asdict(it) for it in self.iterations],
               "wall_s": self.wall_s, "deepfool": self.deepfool,
               "suspect_class": self.suspect_class}
        if self.spread_gap is not None:
            out["spread_gap"] = self.spread_gap
        if self.coverage is not None:
            out["coverage"] = {"suspect": self.coverage[0], "next": self.coverage[1]}
        return out


def schedule(cfg: Burn, t: int) -> tuple[float, float, float]:
    """(lambda_t, alpha_t, beta_t): linear in t from t = 0 to t = T; lambda goes from 0 to
    ``cfg.lambda_end`` (1 in the paper: the last iteration ranks by divergence alone)."""
    frac = t / cfg.iterations if cfg.iterations > 0 else 1.0
    return (cfg.lambda_end * frac,
            cfg.alpha_start + (cfg.alpha_end - cfg.alpha_start) * frac,
            cfg.beta_start + (cfg.beta_end - cfg.beta_start) * frac)


def prediction_divergence(logits0: Tensor, logits_t: Tensor, kind: str = "kl") -> Tensor:
    """Per-sample divergence between the frozen model's and the current model's predictions:
    ``kl`` = KL(softmax(f0) || softmax(ft)), ``js`` = Jensen-Shannon, ``l2`` = ||f0 - ft||_2 of
    the logits."""
    if kind == "l2":
        return (logits0 - logits_t).norm(dim=1)
    logp0, logpt = F.log_softmax(logits0, 1), F.log_softmax(logits_t, 1)
    if kind == "kl":
        return (logp0.exp() * (logp0 - logpt)).sum(1).clamp_min(0)
    if kind == "js":
        logm = torch.logsumexp(torch.stack([logp0, logpt]), 0) - torch.log(torch.tensor(2.0))
        return 0.5 * ((logp0.exp() * (logp0 - logm)).sum(1) + (logpt.exp() * (logpt - logm)).sum(1)).clamp_min(0)
    raise ValueError(f"unknown divergence {kind!r}; choose one of {DIVERGENCES}")


def _normalize(v: Tensor) -> Tensor:
    m = v.max()
    return v / m if m > 0 else torch.zeros_like(v)


def _top(score: Tensor, n: int, largest: bool) -> Tensor:
    order = torch.argsort(score, descending=largest, stable=True)
    return order[:n]


def _top_within(score: Tensor, n: int, allowed: Tensor, largest: bool) -> Tensor:
    """The ``n`` samples of largest (or smallest) score among ``allowed``; fewer when
    ``allowed`` holds fewer."""
    outside = float("-inf") if largest else float("inf")
    return _top(score.masked_fill(~allowed, outside), min(n, int(allowed.sum())), largest)


def _selection_stats(p_idx, c_idx, y_adv, poison_mask, original_labels, labels) -> dict:
    """What P_t and C_t hold, against the ground truth (for the report only). ``precision``
    counts every sample with the trigger; ``mislabeled_precision`` only those whose given
    label is wrong (the dirty-label poison that relabeling can repair): with BackdoorBench's
    pool, target-class images carry the trigger under their own, correct label, and
    relabeling them to their adversarial label makes them wrong."""
    out = {"poison_set_label_counts": {int(k): int(v) for k, v in
                                       zip(*torch.unique(y_adv[p_idx], return_counts=True))}}
    if poison_mask is not None:
        tp = int(poison_mask[p_idx].sum())
        out["precision"] = tp / max(len(p_idx), 1)
        out["recall"] = tp / max(int(poison_mask.sum()), 1)
        out["poisoned_in_clean_set"] = int(poison_mask[c_idx].sum())
    if original_labels is not None:
        out["mislabeled_precision"] = float((labels[p_idx] != original_labels[p_idx]).float().mean()) \
            if len(p_idx) else 0.0
        out["revert_share"] = float((y_adv[p_idx] == original_labels[p_idx]).float().mean()) if len(p_idx) else 0.0
    return out


def finetune(model: nn.Module, images: Tensor, labels: Tensor, cfg: Burn,
             generator: torch.Generator, *, flip: bool = True) -> nn.Module:
    """One Burn fine-tuning step, in place: ``cfg.epochs`` epochs of Adam (``cfg.lr``) on
    (images, labels), augmented as in training (``flip``: the dataset's setting); returns
    the model in eval mode. ``labels``: (M,) class indices, or (M, C + 1) soft targets
    (``soft_target_loss``)."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = soft_target_loss if labels.dim() == 2 else None
    for _ in range(cfg.epochs):
        run_epoch(model, opt, images, labels, batch_size=cfg.batch_size, generator=generator,
                  augment=cfg.augment, flip=flip, loss_fn=loss_fn)
    return model.eval()


def soft_target_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Knowledge distillation's loss per row, averaged: ``target`` (B, C + 1) holds a
    distribution over the C classes and the temperature T it is matched at, and a row costs
    T^2 KL(target || softmax(logits / T)). A one-hot row at T = 1 costs its cross-entropy. A
    NaN entry leaves its class out of both distributions: the row is matched over the others."""
    dist, temp = target[:, :-1], target[:, -1:]
    ignored = dist.isnan()
    logp = F.log_softmax((logits / temp).masked_fill(ignored, float("-inf")), 1)
    kl = F.kl_div(logp.masked_fill(ignored, 0.0), dist.nan_to_num(0.0), reduction="none").sum(1)
    return (temp.squeeze(1) ** 2 * kl).mean()


def hard_targets(labels: Tensor, n_classes: int) -> Tensor:
    """Class indices as ``soft_target_loss`` rows: one-hot, at T = 1."""
    one_hot = F.one_hot(labels, n_classes).float()
    return torch.cat([one_hot, one_hot.new_ones(len(labels), 1)], 1)


def distill_keep_set(cfg: Burn, f0: nn.Module, images: Tensor, labels: Tensor,
                     suspect: int | None) -> tuple[Tensor, Tensor] | None:
    """Opt-in ``distill_keep``: K, that many samples whose given label is not the suspect
    class (so no dirty-label poison), drawn once, with the frozen model's predictions at
    ``distill_temperature`` as ``soft_target_loss`` targets; None when off. With
    ``distill_ignore_suspect`` the targets leave the suspect class out (NaN)."""
    if not cfg.distill_keep:
        return None
    if suspect is None:
        raise ValueError("defenses.burn.distill_keep needs a class selection (selection="
                         "suspect_class, spread_class or coverage_class): under the global or "
                         "random selection K would hold the target label's poison")
    pool = (labels != suspect).nonzero().squeeze(1)
    draw = torch.randperm(len(pool), generator=torch.Generator().manual_seed(cfg.seed + 2))
    idx = pool[draw[:cfg.distill_keep]]
    logits = predict_logits(f0, images[idx])
    if cfg.distill_ignore_suspect:
        logits[:, suspect] = float("-inf")
    soft = F.softmax(logits / cfg.distill_temperature, 1)
    if cfg.distill_ignore_suspect:
        soft[:, suspect] = float("nan")
    return idx, torch.cat([soft, soft.new_full((len(idx), 1), cfg.distill_temperature)], 1)


def defend(model: nn.Module, images: Tensor, labels: Tensor, cfg: Burn, *,
           norms: Tensor, adv_labels: Tensor,
           poison_mask: Tensor | None = None, original_labels: Tensor | None = None,
           evaluate: Callable[[nn.Module], dict] | None = None,
           flip: bool = True, progress: bool = False) -> tuple[nn.Module, BurnReport]:
    """Purify ``model`` with Burn. The caller's model is never modified.

    images: (N, C, H, W) uint8 or float in [0, 1], the training set as the defender holds it;
    labels: (N,) its (possibly poisoned) labels; norms / adv_labels: DeepFool distances and
    adversarial labels of the frozen ``model`` on ``images`` (``burn.deepfool``).
    poison_mask / original_labels: ground truth, for the report only.
    evaluate: optional ``model -> {"acc", "asr", "ra"}`` called after each iteration.
    flip: whether fine-tuning flips images (the dataset's training augmentation).
    """
    n = len(labels)
    _check_inputs(cfg, images, labels, norms, adv_labels)
    t_start = time.perf_counter()
    f0, ft = _frozen_and_student(model)
    labels, adv_labels, norms = labels.long(), adv_labels.long(), norms.float()
    bd = _normalize(norms)
    gen = torch.Generator().manual_seed(cfg.seed)
    # the random control's own stream, so its fine-tuning order matches the ranked runs'
    pick = torch.Generator().manual_seed(cfg.seed + 1) if cfg.selection == "random" else None
    before = evaluate(f0) if evaluate is not None else {}
    suspect, gap, coverage, declined = _suspect(cfg, norms, adv_labels, labels)
    if declined:  # no label stands out: nothing to unlearn, do no harm
        return ft.eval(), BurnReport(config=asdict(cfg), before=before, iterations=[],
                                     wall_s=time.perf_counter() - t_start, deepfool={},
                                     suspect_class=None, spread_gap=gap, coverage=coverage)
    pools = _candidates(cfg, labels, suspect)
    keep = distill_keep_set(cfg, f0, images, labels, suspect)
    logits0 = None
    iterations: list[BurnIteration] = []
    bar = tqdm(range(cfg.iterations + 1), desc="burn", disable=not progress)
    for t in bar:
        t0 = time.perf_counter()
        lam, alpha, beta = schedule(cfg, t)
        if t == 0:  # phase 1: distance alone; no clean set unless the opt-in asks for one
            score, n_c = bd, (round(beta * n) if cfg.phase1_clean_set else 0)
        else:
            logits0 = predict_logits(f0, images) if logits0 is None else logits0
            pd = _normalize(prediction_divergence(logits0, predict_logits(ft, images), cfg.divergence))
            score, n_c = (1 - lam) * bd + lam * pd, round(beta * n)
        p_idx, c_idx = _pick_sets(score, round(alpha * n), n_c, pools, pick)
        idx, y = _fit_set(p_idx, c_idx, adv_labels, labels, keep)
        finetune(ft, images[idx], y, cfg, gen, flip=flip)
        it = BurnIteration(t=t, lam=lam, alpha=alpha, beta=beta, n_poison_set=len(p_idx),
                           n_clean_set=len(c_idx), wall_s=0.0,
                           **_selection_stats(p_idx, c_idx, adv_labels, poison_mask, original_labels,
                                              labels))
        for k, v in (evaluate(ft) if evaluate is not None else {}).items():
            setattr(it, k, v)
        it.wall_s = time.perf_counter() - t0
        iterations.append(it)
        bar.set_postfix({k: f"{getattr(it, k):.3f}" for k in ("acc", "asr", "precision")
                         if getattr(it, k) is not None})
    report = BurnReport(config=asdict(cfg), before=before, iterations=iterations,
                        wall_s=time.perf_counter() - t_start, deepfool={}, suspect_class=suspect,
                        spread_gap=gap, coverage=coverage)
    return ft.eval(), report


def _check_inputs(cfg, images: Tensor, labels: Tensor, norms: Tensor, adv_labels: Tensor) -> None:
    n = len(labels)
    assert images.shape[0] == n and norms.shape == (n,) and adv_labels.shape == (n,), \
        (images.shape, labels.shape, norms.shape, adv_labels.shape)
    if cfg.divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {cfg.divergence!r}; choose one of {DIVERGENCES}")
    if cfg.selection not in SELECTIONS:
        raise ValueError(f"unknown selection {cfg.selection!r}; choose one of {SELECTIONS}")
    if cfg.distill_ignore_suspect and not cfg.distill_keep:
        raise ValueError("defenses.burn.distill_ignore_suspect acts on K: set distill_keep too")


def _frozen_and_student(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Two copies of ``model``: f_0, frozen in eval mode, and the one fine-tuned."""
    f0 = copy.deepcopy(model).eval()
    for p in f0.parameters():
        p.requires_grad_(False)
    ft = copy.deepcopy(model)
    for p in ft.parameters():
        p.requires_grad_(True)
    return f0, ft


def _candidates(cfg, labels: Tensor, suspect: int | None) -> tuple[Tensor, Tensor, bool]:
    """(candidates for P_t, candidates for C_t, whether C_t keeps suspect-class samples):
    P_t from everything, or under a class selection only the suspect class; C_t from
    everything, or (opt-in) only the other labels."""
    n = len(labels)
    eligible = torch.ones(n, dtype=torch.bool) if suspect is None else labels == suspect
    c_allowed = ~eligible if cfg.clean_set_outside_suspect and suspect is not None \
        else torch.ones(n, dtype=torch.bool)
    return eligible, c_allowed, cfg.keep_suspect_class and suspect is not None


def _pick_sets(score: Tensor, n_p: int, n_c: int, pools, pick) -> tuple[Tensor, Tensor]:
    """(P_t, C_t): the ``n_p`` highest scores among P_t's candidates (or, for the random
    control, a draw from ``pick``) and the ``n_c`` lowest among C_t's."""
    eligible, c_allowed, keep_suspect = pools
    if pick is not None:
        p_idx = torch.randperm(len(score), generator=pick)[:n_p]
    else:
        p_idx = _top_within(score, n_p, eligible, largest=True)
    c_idx = _top_within(score, n_c, c_allowed, largest=False) if n_c else p_idx.new_zeros(0)
    if keep_suspect:
        c_idx = torch.cat([c_idx, _keep_suspect(score, eligible, p_idx, c_idx)])
    return p_idx, c_idx


def _fit_set(p_idx: Tensor, c_idx: Tensor, adv_labels: Tensor, labels: Tensor, keep):
    """(indices, targets) of one fine-tuning step: P_t under its adversarial labels, C_t
    under its given ones, and K (when on) towards the frozen model's soft outputs."""
    idx = torch.cat([p_idx, c_idx])
    y = torch.cat([adv_labels[p_idx], labels[c_idx]])
    if keep is not None:
        k_idx, k_targets = keep
        idx = torch.cat([idx, k_idx])
        y = torch.cat([hard_targets(y, k_targets.shape[1] - 1), k_targets])
    return idx, y


def _suspect(cfg, norms: Tensor, adv_labels: Tensor, labels: Tensor):
    """(suspect class or None, spread gap, coverage, declined) of the class selections; the
    guarded ones decline when no label stands out."""
    if cfg.selection == "suspect_class":
        return suspect_class(norms, labels), None, None, False
    if cfg.selection == "spread_class":
        suspect, gap = spread_class(adv_labels, labels)
        return suspect, gap, None, gap < cfg.min_spread_gap
    if cfg.selection == "coverage_class":
        suspect, top, second = coverage_class(adv_labels, labels)
        return suspect, None, (top, second), top < cfg.min_coverage
    return None, None, None, False


def _keep_suspect(score: Tensor, eligible: Tensor, p_idx: Tensor, c_idx: Tensor) -> Tensor:
    """As many samples of the suspect class as ``P_t`` takes from it, those of lowest score
    outside ``P_t`` and ``C_t``, to fine-tune under their given label: without them the class
    has no positive example left and its accuracy collapses (BadNets, phase 1: 0.82 -> 0.00)."""
    taken = torch.zeros_like(eligible)
    taken[p_idx] = True
    taken[c_idx] = True
    return _top_within(score, len(p_idx), eligible & ~taken, largest=False)


@dataclass(frozen=True)
class Burn(Defense):
    """Burn as a defense of the registry; its fields are every number of Burn (docs/method.md),
    fractions of the whole training set ``D``. It holds no clean extra data; it ranks the
    training set by the attacked model's DeepFool distances."""

    iterations: int = field(default=5, metadata=NONNEG)  # T
    alpha_start: float = field(default=0.005, metadata=FRACTION)
    alpha_end: float = field(default=0.01, metadata=FRACTION)
    beta_start: float = field(default=0.025, metadata=FRACTION)
    beta_end: float = field(default=0.05, metadata=FRACTION)
    epochs: int = field(default=5, metadata=POSITIVE)
    lr: float = field(default=1e-4, metadata=POSITIVE)
    batch_size: int = field(default=128, metadata=POSITIVE)
    augment: bool = True
    divergence: str = field(default="kl", metadata=choices(*DIVERGENCES))
    # How P_t is drawn. "global" (the paper, the default): the top alpha_t of all of D by score.
    # "suspect_class" (opt-in repair, not the paper): estimate the target as the given label
    # whose samples have the largest median distance, and draw P_t from that class only.
    # "random" (the control, not a defense): P_t is a seeded uniform draw of the same size from
    # all of D, redrawn each iteration; everything else as "global". It measures what the
    # ranking adds over relabeling any alpha_t of D with their adversarial labels.
    # "spread_class" (opt-in repair, not the paper): the suspect class is the given label whose
    # samples' adversarial labels are most spread (entropy): a poisoned sample's adversarial
    # label falls back to its true class, any of the others. Burn acts only when that class
    # leads the next by ``min_spread_gap`` nats, and otherwise returns the model unchanged.
    # "coverage_class" (opt-in repair, not the paper): the suspect class is the given label
    # whose samples' adversarial labels leave no other class below the largest smallest share
    # (``coverage_class``); Burn acts only when that share reaches ``min_coverage`` and
    # otherwise returns the model unchanged. It sees dirty-label poison (other classes' images
    # under the target label) and, measured, LC's clean-label poison, whose untargeted PGD
    # perturbation spreads the target images' adversarial labels over every class.
    selection: str = field(default="global", metadata=choices(*SELECTIONS))
    min_spread_gap: float = field(default=0.07, metadata={**OMIT_AT_DEFAULT, **NONNEG})
    min_coverage: float = field(default=0.03, metadata={**OMIT_AT_DEFAULT, **FRACTION})
    # Opt-in with the class selections: C_t also holds as many samples of the suspect class as
    # P_t takes (its lowest scores, under their given label), so the class keeps positive
    # examples while its poison is relabeled.
    keep_suspect_class: bool = field(default=False, metadata=OMIT_AT_DEFAULT)
    # Opt-in with the class selections: C_t is drawn from the other labels only. Dirty-label
    # poison carries the suspect class's label, so none of it can enter C_t and be fine-tuned
    # under that label (measured on Input-aware: 14-102 poisoned samples entered C_t at
    # t = 1-4 and ASR climbed back from 0.021 to 0.534).
    clean_set_outside_suspect: bool = field(default=False, metadata=OMIT_AT_DEFAULT)
    # Opt-in (not the paper): phase 1 also fine-tunes on the bottom beta_0 of D by distance with
    # their given labels, as phase 2 does; the spec's phase 1 trains on P_0 alone. Measured with
    # the suspect-class selection it raises ACC after phase 1 (BadNets 0.702 -> 0.769) but not
    # the final ACC (0.742 against 0.739); see docs/findings/cpu-w16.md.
    phase1_clean_set: bool = field(default=False, metadata=OMIT_AT_DEFAULT)
    # lambda_t rises linearly from 0 to lambda_end at t = T. The paper's 1.0 makes the last
    # iteration rank by prediction divergence alone; 0.5 keeps half the distance term there.
    lambda_end: float = field(default=1.0, metadata={**OMIT_AT_DEFAULT, **FRACTION})
    # Opt-in with the class selections (not the paper): every fine-tuning step also trains on
    # K, ``distill_keep`` samples of the other labels drawn once, towards the frozen model's
    # predictions at ``distill_temperature`` (knowledge distillation): their soft outputs hold
    # what the model knows of the suspect class (a ship's small airplane probability), which
    # the class's own samples, relabeled or poisoned, cannot give back. Phase 1 alone with it:
    # docs/findings/clean-positives.md, "Nor by distillation".
    distill_keep: int = field(default=0, metadata={**OMIT_AT_DEFAULT, **NONNEG})
    distill_temperature: float = field(default=4.0, metadata={**OMIT_AT_DEFAULT, **POSITIVE})
    # Probe of the mechanism (not a proposed setting): K's targets and the model's outputs on K
    # both leave the suspect class out, so K teaches nothing about that class, for or against.
    # It tests whether the backdoor that returns under K is taught through the class's share of
    # the frozen model's soft outputs (docs/findings/clean-positives.md, "The whole schedule with distillation").
    distill_ignore_suspect: bool = field(default=False, metadata=OMIT_AT_DEFAULT)
    seed: int = 0

    name = "burn"
    label = "Burn"
    needs_clean_data = False
    needs_distances = True

    def __call__(self, model: nn.Module, data: DefenderData, *, evaluate=None,
                 progress: bool = False) -> tuple[nn.Module, dict]:
        d = data.distances
        purified, report = defend(model, data.train.images, data.train.labels, self,
                                  norms=d["norms"], adv_labels=d["adv_labels"].long(),
                                  poison_mask=data.truth.get("poison_mask"),
                                  original_labels=data.truth.get("original_labels"),
                                  evaluate=evaluate, flip=data.flip, progress=progress)
        return purified, report.to_dict()

    def stage_key(self, attack_key: str, distances_key: str, clean_key: str) -> str:
        """Burn's key, as its records were first written (without the clean subset it never
        uses; its fields hash as the former ``BurnCfg`` section did), so the committed
        ``burn*.json`` stay valid."""
        return burn_key(self, attack_key, distances_key)

    def summary_lines(self, report: dict) -> list[str]:
        """One line per iteration: the selection against the ground truth, then ACC/ASR/RA."""
        nan = float("nan")
        return [f"t={it['t']}: |P|={it['n_poison_set']} precision {it.get('precision', nan):.3f} "
                f"recall {it.get('recall', nan):.3f} poisoned-in-C {it.get('poisoned_in_clean_set')} "
                f"-> ACC {it['acc']:.4f} ASR {it['asr']:.4f} RA {it['ra']:.4f}"
                for it in report["iterations"]]
