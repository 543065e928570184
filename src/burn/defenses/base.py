"""The defense interface.

A defense is a frozen dataclass whose fields are its hyperparameters. Calling it,
``defense(model, data, evaluate=..., progress=...)``, returns ``(purified model, report)``:
the purified model is a new module (the caller's model is never modified) and the report a
JSON-able dict of what the defense did (its choices, losses, per-epoch numbers).

``data`` (:class:`DefenderData`) is what the defender holds: the training set as received
(poisoned, with its training labels), the clean extra data of the baselines (about 5% of the
training set, drawn from its clean samples), and, for defenses that ask for them
(``needs_distances``), the DeepFool distances of the attacked model. Ground truth
(``data.truth``: the poison mask and true labels) is for reports only; no algorithm reads it.

``evaluate(model) -> {"acc", "asr", "ra"}`` measures on the test sets. A defense may call it
for its report, and for a selection rule only where that rule is BackdoorBench's test-set
rule, offered as a named option (``selection="test_set"``), never as the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from ..data import ImageDataset

Evaluate = Callable[[nn.Module], dict]


@dataclass(frozen=True)
class DefenderData:
    train: ImageDataset  # the training set as received: poisoned images, training labels
    clean: ImageDataset  # the defender's clean extra data (empty for defenses without it)
    clean_index: Tensor  # indices of ``clean`` in the training set
    flip: bool = True  # the dataset's training augmentation flips (burn.data.DatasetSpec)
    distances: dict | None = None  # DeepFool of the attacked model on ``train``
    truth: dict = field(default_factory=dict)  # poison_mask, original_labels: reports only


@dataclass(frozen=True)
class Defense:
    """Base of every defense; subclasses add their hyperparameters as fields."""

    name = "defense"
    label = "Defense"  # as the paper's figures name it
    needs_clean_data = True  # the baselines get the 5% clean subset; Burn does not
    needs_distances = False  # Burn ranks by DeepFool distance

    def __call__(self, model: nn.Module, data: DefenderData, *, evaluate: Evaluate | None = None,
                 progress: bool = False) -> tuple[nn.Module, dict]:
        raise NotImplementedError(f"{type(self).__name__} does not define __call__")

    def stage_key(self, attack_key: str, distances_key: str, clean_key: str) -> str:
        """The key of this defense's run on one attacked model (``burn.defense_stage``): the
        model, the defense's fields and the data it holds."""
        from ..keys import defense_key

        return defense_key(self, attack_key, distances_key, clean_key)

    def summary_lines(self, report: dict) -> list[str]:
        """What ``burn defend`` shows of this defense's report: its scalar entries."""
        scalars = (f"{k} {v}" for k, v in report.items() if isinstance(v, (int, float, str)))
        return [", ".join(scalars)[:400]]


def split_clean(data: DefenderData, held_out: float, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """The defender's clean data split into (fitting part, held-out part of ``held_out``
    share), seeded: defenses that choose an amount (pruning ratio, threshold) measure their
    choice on the held-out part, never on the test sets."""
    n = len(data.clean)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = max(1, round(held_out * n))
    return data.clean.subset(perm[k:].sort().values), data.clean.subset(perm[:k].sort().values)


def eval_due(evaluate: Evaluate | None, every: int, step: int, last: int | None = None) -> bool:
    """Whether a defense's report measures the test sets after ``step`` (1-based): every
    ``every`` steps (0: never), and at ``last`` when given; never without ``evaluate``."""
    return evaluate is not None and every > 0 and (step % every == 0 or step == last)


SELECTIONS = ("held_out", "test_set")


def selection_split(data: DefenderData, selection: str, held_out: float, seed: int,
                    evaluate: Evaluate | None) -> tuple[ImageDataset, ImageDataset | None]:
    """(data to fit on, held-out clean data or None) for a defense that chooses an amount:
    ``held_out`` (the default) splits the defender's clean data; ``test_set``
    (BackdoorBench's rule) fits on all of it and measures with ``evaluate``."""
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; choose one of {SELECTIONS}")
    if selection == "test_set":
        if evaluate is None:
            raise ValueError("selection='test_set' needs evaluate")
        return data.clean, None
    return split_clean(data, held_out, seed=seed)


def accuracy_on(model: nn.Module, ds: ImageDataset) -> float:
    from ..metrics import accuracy, predict

    return accuracy(predict(model, ds.images), ds.labels)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with no gradients (the attacked model kept as a
    reference, e.g. SAU's shared adversarial examples, NAD's teacher start)."""
    import copy

    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def trainable_copy(model: nn.Module) -> nn.Module:
    import copy

    m = copy.deepcopy(model)
    for p in m.parameters():
        p.requires_grad_(True)
    return m
