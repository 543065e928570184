"""Backdoor attacks. ``ATTACKS`` maps the CLI / config name to the attack class;
``make_attack(cfg)`` builds one from an :class:`~burn.config.AttackCfg`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import AttackCfg
from .badnets import BadNets
from .base import Attack, PoisonedDataset, to_uint8
from .blended import Blended
from .inputaware import InputAware
from .lc import LabelConsistent
from .lf import LowFrequency
from .ssba import SSBA
from .trojannn import TrojanNN


@dataclass(frozen=True)
class NoAttack(Attack):
    """A clean training run: nothing is poisoned (``rate`` is ignored). Its poisoned test set
    carries the trigger of the attack named ``trigger``, so the clean model's ASR is the
    baseline rate at which that trigger alone sends images to the target."""

    trigger: str = "badnets"
    trigger_params: dict = dataclasses.field(default_factory=dict)  # that attack's own fields
    trigger_attack: Attack | None = None  # set by fit: the attack whose trigger is applied

    name = "clean"
    label = "Clean"

    def fit(self, train, *, generator, model=None, **context) -> "NoAttack":
        fitted = self._trigger_attack().fit(train, generator=generator, model=model, **context)
        return dataclasses.replace(self, trigger_attack=fitted)

    def _trigger_attack(self) -> Attack:
        return ATTACKS[self.trigger](target=self.target, **self.trigger_params)

    def resources(self) -> dict:
        return self._trigger_attack().resources()

    def select_poison(self, labels, *, generator):
        return labels.new_zeros(0)

    def apply_trigger(self, images):
        if self.trigger_attack is None:
            raise RuntimeError("NoAttack.apply_trigger before fit()")
        return self.trigger_attack.apply_trigger(images)


# The one registry of attacks: the CLI, the configs and every figure's labels read it.
ATTACKS: dict[str, type[Attack]] = {"clean": NoAttack, "badnets": BadNets, "blended": Blended,
                                    "lf": LowFrequency, "trojannn": TrojanNN,
                                    "inputaware": InputAware, "lc": LabelConsistent, "ssba": SSBA}


def make_attack(cfg: AttackCfg) -> Attack:
    if cfg.name not in ATTACKS:
        raise ValueError(f"unknown attack {cfg.name!r}; choose one of {sorted(ATTACKS)}")
    return ATTACKS[cfg.name](target=cfg.target, rate=cfg.rate, pool=cfg.pool, **cfg.params)


__all__ = ["ATTACKS", "Attack", "BadNets", "Blended", "InputAware", "LabelConsistent", "LowFrequency", "NoAttack", "PoisonedDataset", "SSBA", "TrojanNN",
           "make_attack", "to_uint8"]
