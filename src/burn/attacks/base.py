"""The attack interface and the poisoned training set.

An attack is a frozen dataclass whose fields are its hyperparameters. The shared flow:

1. ``attack.fit(train, generator=..., model=None)`` returns the attack ready to use.
   Trigger-only attacks (BadNets, Blended) return themselves; attacks that choose or optimize
   a trigger or train a generator (LF, TrojanNN, SSBA, Input-aware) return a fitted copy
   holding it. With ``needs_clean_model`` the stage passes the preset's clean model.
2. ``attack.poison_train(train, generator=...)`` returns a :class:`PoisonedDataset`.
3. ``attack.poison_test(test)`` returns the non-target test images with the trigger.

``clean_label`` attacks (Label-consistent) poison target-class samples and keep their labels;
attacks that change training itself (Input-aware) set ``custom_training``: the trainer calls
their ``training_hook`` per batch, and their sets are poisoned after training with the trained
state, which ``attack_state()`` / ``with_state()`` store beside the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ..data import ImageDataset


@dataclass
class PoisonedDataset:
    """A training set that knows, per index, its poison status and both labels."""

    images: Tensor  # (N, C, H, W) uint8, poisoned where poison_mask
    labels: Tensor  # training labels (the target where poisoned, for all-to-one dirty-label)
    original_labels: Tensor  # the true labels
    poison_mask: Tensor  # (N,) bool
    classes: tuple[str, ...]
    name: str
    # samples changed but keeping their label (Input-aware's cross samples); None: none
    cross_mask: Tensor | None = None

    def __post_init__(self):
        n = len(self.images)
        assert self.labels.shape == self.original_labels.shape == self.poison_mask.shape == (n,)
        assert self.poison_mask.dtype == torch.bool

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def poison_idx(self) -> Tensor:
        return self.poison_mask.nonzero().squeeze(1)

    def as_dataset(self) -> ImageDataset:
        """The training set as the defender sees it: images with their training labels."""
        return ImageDataset(self.images, self.labels, self.classes, self.name)


def to_uint8(x: Tensor) -> Tensor:
    """[0, 1] floats to uint8 with rounding, as attacks that store images as 8-bit do."""
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


POOLS = ("all", "non_target")


@dataclass(frozen=True)
class Attack:
    """All-to-one backdoor attack. ``rate`` is the poisoned fraction of the whole training set.
    ``pool`` says which samples may carry the trigger: ``all`` (BackdoorBench's
    ``utils/backdoor_generate_poison_index.py``: about ``rate`` of the target class too, which
    keep their own label) or ``non_target``. Clean-label attacks always draw from the target."""

    target: int = 0
    rate: float = 0.1
    pool: str = "all"

    name = "attack"
    label = "Attack"  # as the paper's figures name it
    clean_label = False
    needs_clean_model = False  # fit() optimizes against the preset's clean model (TrojanNN)

    custom_training = False  # the classifier trains through training_hook (Input-aware)
    slow_poison = False  # the trigger is a network run over every image: poisoned sets are cached

    def fit(self, train: ImageDataset, *, generator: torch.Generator, model=None,
            **context) -> "Attack":
        """The attack ready to use. Attacks with a fixed trigger return themselves; attacks
        that choose or optimize a trigger return a fitted copy (``model``: a clean model of
        the same architecture, for attacks that optimize against one). ``context``:
        ``device``, ``amp_bf16``, ``progress``, for attacks that train a network here."""
        return self

    def training_hook(self, *, seed: int, device=None):
        """For ``custom_training`` attacks: the per-batch hook of ``burn.train.run_epoch``
        (``batch(x, y, generator) -> (x, y, extra_loss)``, ``after_step()``, ``state_dict()``,
        ``load_state_dict()``, ``fitted()`` -> the trained attack)."""
        raise NotImplementedError(f"{type(self).__name__} trains like any other attack")

    # The seed its resources are trained with (``resources``): ``None`` follows the victim's
    # training seed; LC and SSBA fix it (a field, 0), since the robust model and the encoder
    # are the attacker's tools, not the victim's randomness.
    resource_seed = None

    def resources(self) -> dict:
        """Networks the attack is built with (``burn.resources.Resource`` by name: LC's robust
        model, SSBA's encoder), trained once as committed stages and passed to ``fit`` as
        ``resources={name: StoredResource}``; empty for most attacks."""
        return {}

    def attack_state(self) -> dict:
        """Tensors a trained attack needs to make its triggers again, stored with the model."""
        return {}

    def with_state(self, state: dict) -> "Attack":
        """The attack rebuilt from ``attack_state()``."""
        return self

    def key_parts(self) -> tuple:
        """What a fitted attack depends on beyond its config (e.g. the clean model it was
        optimized on), added to the attacked model's key; empty for most attacks."""
        return ()

    def apply_trigger(self, images: Tensor) -> Tensor:
        """(N, C, H, W) float in [0, 1] -> same shape with the trigger, in [0, 1]."""
        raise NotImplementedError(f"{type(self).__name__} does not define apply_trigger")

    def select_poison(self, labels: Tensor, *, generator: torch.Generator) -> Tensor:
        """Indices to poison: ``round(rate * N)`` among the eligible samples."""
        if self.pool not in POOLS:
            raise ValueError(f"attack.pool must be one of {list(POOLS)}, got {self.pool!r}")
        if self.clean_label:
            eligible = labels == self.target
        elif self.pool == "all":
            eligible = torch.ones_like(labels, dtype=torch.bool)
        else:
            eligible = labels != self.target
        pool = eligible.nonzero().squeeze(1)
        n = round(self.rate * len(labels))
        if n > len(pool):
            raise ValueError(f"rate {self.rate} asks for {n} poisoned samples, only {len(pool)} eligible")
        return pool[torch.randperm(len(pool), generator=generator)[:n]].sort().values

    def triggered(self, images_u8: Tensor, batch_size: int = 2048) -> Tensor:
        """Apply the trigger to uint8 images, returning uint8 (chunked to bound memory)."""
        out = images_u8.clone()
        for s in range(0, len(out), batch_size):
            out[s:s + batch_size] = to_uint8(self.apply_trigger(images_u8[s:s + batch_size].float() / 255.0))
        return out

    def poison_source(self, train: ImageDataset, idx: Tensor) -> Tensor:
        """The uint8 images of ``train`` at ``idx`` that get the trigger: the training images
        themselves, except for attacks that first change them (Label-consistent's PGD)."""
        return train.images[idx]

    def poison_train(self, train: ImageDataset, *, generator: torch.Generator) -> PoisonedDataset:
        idx = self.select_poison(train.labels, generator=generator)
        images, labels = train.images.clone(), train.labels.clone()
        if len(idx):
            images[idx] = self.triggered(self.poison_source(train, idx))
            if not self.clean_label:
                labels[idx] = self.target
        mask = torch.zeros(len(train), dtype=torch.bool)
        mask[idx] = True
        return PoisonedDataset(images, labels, train.labels.clone(), mask, train.classes,
                               f"{train.name}, {self.name}")

    def poison_test(self, test: ImageDataset) -> ImageDataset:
        """Non-target test images with the trigger; labels stay the true labels."""
        keep = (test.labels != self.target).nonzero().squeeze(1)
        return ImageDataset(self.triggered(test.images[keep]), test.labels[keep], test.classes,
                            f"{test.name}, {self.name} trigger")

    def describe(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self)}
