"""Backdoor defenses, one file each (``base.py``: the interface). ``DEFENSES`` maps the CLI /
config name to the defense class; ``burn`` is the paper's, the others its baselines."""

from ..config import register_defenses
from .anp import ANP
from .base import DefenderData, Defense
from .burn import Burn, BurnIteration, BurnReport, defend
from .fp import FinePruning
from .ftsam import FTSAM
from .ibau import IBAU
from .nad import NAD
from .sau import SAU

# The one registry of defenses: the CLI, the defense stage and every figure's labels read it.
# config reads it by name (``register_defenses``) to check a preset's ``defenses`` section.
DEFENSES: dict[str, type[Defense]] = register_defenses({"burn": Burn, "fp": FinePruning, "nad": NAD,
                                                        "anp": ANP, "ibau": IBAU, "ftsam": FTSAM,
                                                        "sau": SAU})

__all__ = ["DEFENSES", "ANP", "FTSAM", "IBAU", "NAD", "SAU", "Burn", "FinePruning", "BurnIteration", "BurnReport", "DefenderData", "Defense", "defend"]
