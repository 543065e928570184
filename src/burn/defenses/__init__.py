"""Backdoor defenses. ``burn`` is the paper's; baselines join ``DEFENSES`` as they are built."""

from .burn import BurnIteration, BurnReport, defend

DEFENSES = {"burn": defend}

__all__ = ["DEFENSES", "BurnIteration", "BurnReport", "defend"]
