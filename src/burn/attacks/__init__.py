"""Backdoor attacks. ``ATTACKS`` maps the CLI / config name to the attack class;
``make_attack(cfg)`` builds one from an :class:`~burn.config.AttackCfg`."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import AttackCfg
from .badnets import BadNets
from .base import Attack, PoisonedDataset, to_uint8
from .blended import Blended


@dataclass(frozen=True)
class NoAttack(Attack):
    """A clean training run: nothing is poisoned (``rate`` is ignored). Its poisoned test set
    carries the trigger of the attack named ``trigger``, so the clean model's ASR is the
    baseline rate at which that trigger alone sends images to the target."""

    trigger: str = "badnets"

    name = "clean"

    def select_poison(self, labels, *, generator):
        return labels.new_zeros(0)

    def apply_trigger(self, images):
        return ATTACKS[self.trigger](target=self.target).apply_trigger(images)


ATTACKS: dict[str, type[Attack]] = {"clean": NoAttack, "badnets": BadNets, "blended": Blended}


def make_attack(cfg: AttackCfg) -> Attack:
    if cfg.name not in ATTACKS:
        raise ValueError(f"unknown attack {cfg.name!r}; choose one of {sorted(ATTACKS)}")
    return ATTACKS[cfg.name](target=cfg.target, rate=cfg.rate, pool=cfg.pool, **cfg.params)


__all__ = ["ATTACKS", "Attack", "BadNets", "Blended", "NoAttack", "PoisonedDataset",
           "make_attack", "to_uint8"]
