"""Every stage's key formula, in one place: the stages call these, and so do the tests that
re-check the committed results and the migrations that re-key them.

A key is ``config_hash`` of everything a stage's result depends on (``burn.stages``). The
committed results carry these keys, so changing a formula here invalidates them: bump the
stage's version instead, and write a migration where results must be kept. Runtime settings
(device, threads, batch sizes) never enter a key, except the scratch key of DeepFool's run
cache outside the repository (``deepfool_parts_key``).

The formulas take plain values (configs as dataclasses or as the dicts stored in records), so a
migration can compute the key of a config in an older schema.
"""

from __future__ import annotations

import dataclasses

from .cache import config_hash
from .deepfool import DEEPFOOL_VERSION

ATTACK_STAGE_VERSION = 1


def attack_key_of(data_name: str, data, model, train, attack, parts: tuple = ()) -> str:
    """The attacked model's key from its config's sections (dataclasses or stored dicts)."""
    return config_hash("attack", ATTACK_STAGE_VERSION, data_name, data, model, train,
                       without_default_params(attack), *parts)


def without_default_params(attack) -> dict:
    """The attack section (``AttackCfg`` or its stored dict) with the ``params`` that equal
    their attack's defaults left out: naming a default builds the same attack, so it is the
    same model (e.g. a variant that states TrojanNN's ``neuron_choice`` the preset overrides)."""
    from .attacks import ATTACKS
    from .cache import to_jsonable

    section = dict(to_jsonable(attack, for_key=True))
    cls = ATTACKS.get(section.get("name"))
    if cls is None or not section.get("params"):
        return section
    defaults = {f.name: f.default for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING}
    section["params"] = {k: v for k, v in section["params"].items()
                         if k not in defaults or to_jsonable(defaults[k], for_key=True) != v}
    return section


def attack_key(cfg, data_name: str, parts: tuple = ()) -> str:
    """The attacked model's key (``model.pt``, ``none.json``); ``data_name``: the dataset and
    attack as the record names them (``none.json``'s ``dataset``); ``parts``: the fitted
    attack's ``key_parts()`` (``none.json``'s ``key_parts``), for attacks that depend on more
    than their config."""
    return attack_key_of(data_name, cfg.data, cfg.model, cfg.train, cfg.attack, tuple(parts))


def distances_key(attack_key: str, deepfool) -> str:
    """DeepFool distances over the whole training set (``deepfool.npz``)."""
    return config_hash("deepfool", DEEPFOOL_VERSION, attack_key, deepfool)


def subset_distances_key(attack_key: str, deepfool, index: list[int]) -> str:
    """DeepFool distances over the training samples ``index`` (``deepfool_<name>.npz``)."""
    return config_hash("deepfool-subset", DEEPFOOL_VERSION, attack_key, deepfool, list(index))


def deepfool_parts_key(distances_key: str, batch_size: int) -> str:
    """The run-cache folder of a distances computation in progress (its parts, outside the
    repository). The batch size enters it because it fixes the parts' bounds; it enters no
    committed key."""
    return config_hash("deepfool-parts", distances_key, batch_size)


def clean_subset_key(ratio: float, seed: int) -> str:
    """The defender's clean subset (``defense_stage.clean_subset``)."""
    return config_hash("clean-subset", ratio, seed)


def defense_key(defense, attack_key: str, distances_key: str, clean_key: str) -> str:
    """A baseline's record (``<defense>.json``): the model, the defense's fields and the data it
    holds (``Defense.stage_key``)."""
    return config_hash("defense", defense.name, attack_key, defense,
                       distances_key if defense.needs_distances else None,
                       clean_key if defense.needs_clean_data else None)


def burn_key(burn_cfg, attack_key: str, distances_key: str) -> str:
    """Burn's record (``burn.json``), as its records were first written (without the clean
    subset it never uses)."""
    return config_hash("burn", attack_key, distances_key, burn_cfg)


def ablation_key(attack_key: str, burn_cfg) -> str:
    """The folder of one Table 2 grid point (``ablation/<key>/burn.json``)."""
    return config_hash(attack_key, burn_cfg)


def unlearning_budget_key(attack_key: str, distances_key: str, burn_cfg, n_poisoned: int,
                          n_clean: int, labels: str, seed: int) -> str:
    """One row of Fig. 6's sweep (``unlearning_budget.json``)."""
    return config_hash("unlearning-budget", attack_key, distances_key, burn_cfg, n_poisoned,
                       n_clean, labels, seed)


def similarity_key(attack_key: str, deepfool, index: list[int]) -> str:
    """Fig. 1's feature similarities of the samples ``index``."""
    return config_hash("fig1-similarity", attack_key, deepfool, list(index))
