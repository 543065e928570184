"""The defense stage: any defense of ``burn.defenses.DEFENSES`` on one attacked model,
written to ``results/<preset>/<dataset>/<attack>/<defense>.json`` (``<defense>_<tag>.json``
for a run with non-default options) and reused while its key holds (``burn.stages``).

The record: the purified model's ACC / ASR / RA, the attacked model's (``before``), the
defense's fields, its report, the defender's clean subset (the exact indices), the DeepFool
summary for distance-based defenses, wall time, config and provenance.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from .analysis import separation_summary, target_coverage
from . import keys
from .config import (ConfigError, ExperimentCfg, _deep_merge, from_dict, load_preset,
                     named_run, named_run_source, to_dict)
from .data import dataset_spec
from .defenses import DEFENSES, Defense
from .defenses.base import DefenderData
from .distances import boundary_distances, distances_key
from .experiment import AttackRun
from .metrics import evaluate
from .provenance import provenance
from .stages import JsonStore, cached

# BackdoorBench's defender data: 5% of the training set, drawn from its clean samples, seed 0
CLEAN_RATIO = 0.05
CLEAN_SEED = 0


def make_defense(cfg: ExperimentCfg, name: str) -> Defense:
    """The defense ``name`` with the preset's settings (``defenses.<name>``) and the run's
    seed."""
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; choose one of {sorted(DEFENSES)}")
    settings = dict(cfg.defenses.get(name, {}))
    if cfg.seed and settings.get("seed", 0) not in (0, cfg.seed):
        raise ValueError(f"defenses.{name}.seed={settings['seed']} differs from the run's seed "
                         f"{cfg.seed}: set the seed once, with --seed N")
    if cfg.seed:
        settings["seed"] = cfg.seed
    return from_dict(DEFENSES[name], settings, where=f"defenses.{name}")


def tagged_cfg(preset: str, overrides: dict, name: str, tag: str) -> ExperimentCfg:
    """The config of defense ``name``'s run ``tag`` under ``overrides``: where the preset names
    that run (``defense_runs``, ``config.named_run``), its settings, which ``overrides`` may
    repeat but not change (one tag, one setting, so one record name never holds two configs);
    otherwise ``overrides`` as they are."""
    cfg = load_preset(preset, overrides)
    named = named_run(preset, name, tag)
    if named is None:
        return cfg
    rest = {k: v for k, v in overrides.items() if k != "defenses"}
    rest["defenses"] = {k: v for k, v in (overrides.get("defenses") or {}).items() if k != name}
    base, tagged = load_preset(preset, rest), load_preset(preset, _deep_merge(rest, named))
    given = make_defense(cfg, name)
    if given not in (make_defense(base, name), make_defense(tagged, name)):
        raise ConfigError(f"--tag {tag} is the name preset {preset!r} gives {name} with "
                          f"{named['defenses'][name]} ({named_run_source(preset, name, tag)}); "
                          f"drop the other defenses.{name}.* settings to run it, or name your "
                          "run another tag")
    return tagged


def clean_subset(run: AttackRun, ratio: float = CLEAN_RATIO, seed: int = CLEAN_SEED) -> torch.Tensor:
    """Sorted indices of the defender's clean extra data: ``round(ratio * N)`` training
    samples drawn (seeded) from those the attack left untouched (neither poisoned nor, for
    Input-aware, a cross sample)."""
    p = run.poisoned
    untouched = ~p.poison_mask if p.cross_mask is None else ~(p.poison_mask | p.cross_mask)
    pool = untouched.nonzero().squeeze(1)
    n = round(ratio * len(p))
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    return pool[perm[:n]].sort().values


def defender_data(run: AttackRun, defense: Defense) -> DefenderData:
    p = run.poisoned
    idx = clean_subset(run, seed=run.cfg.seed) if defense.needs_clean_data else torch.zeros(0, dtype=torch.long)
    return DefenderData(
        train=p.as_dataset(), clean=p.as_dataset().subset(idx), clean_index=idx,
        flip=dataset_spec(run.cfg.data.dataset).flip,
        distances=boundary_distances(run) if defense.needs_distances else None,
        truth={"poison_mask": p.poison_mask, "original_labels": p.original_labels})


def defense_key(run: AttackRun, defense: Defense) -> str:
    clean_key = keys.clean_subset_key(CLEAN_RATIO, run.cfg.seed)
    dkey = distances_key(run) if defense.needs_distances else ""
    return defense.stage_key(run.key, dkey, clean_key)


def defense_run(run: AttackRun, name: str, *, defense: Defense | None = None, tag: str = "",
                out_dir=None, rerun: bool = False) -> dict:
    """The record of defense ``name`` (the preset's settings, or ``defense``) on ``run``'s
    model: stored, or computed now and written, in ``out_dir`` (default: the model's folder).
    ``tag`` names a run with other settings, so the preset's default record stays. The
    returned record carries ``_computed_now`` (not stored): whether it was just measured."""
    defense = defense or make_defense(run.cfg, name)
    path = Path(out_dir or run.results_dir) / (f"{name}_{tag}.json" if tag else f"{name}.json")
    computed = []

    def compute() -> dict:
        computed.append(True)
        return _defend(run, defense, path)

    record = cached(JsonStore(path, redo="compute it again with --rerun"), defense_key(run, defense),
                    compute, rerun=rerun)
    return {**record, "_computed_now": True} if computed else record


def _defend(run: AttackRun, defense: Defense, path) -> dict:
    data = defender_data(run, defense)
    target = run.cfg.attack.target
    run.runtime.say(f"{defense.name}: purifying the {run.cfg.attack.name} model"
                    + (f" with {len(data.clean)} clean training images" if len(data.clean) else "")
                    + f" (no resume inside a run: an interrupted run starts again); writes {path}")

    def evaluate_fn(m):
        return evaluate(m, run.test, run.poisoned_test, target)

    t0 = time.perf_counter()
    purified, report = defense(run.model, data, evaluate=evaluate_fn, progress=run.runtime.progress)
    wall = time.perf_counter() - t0
    record = {**evaluate_fn(purified.eval()), "before": evaluate_fn(run.model),
              "dataset": run.record["dataset"], "attack": run.record["attack"],
              "defense": defense.name, "wall_s": round(wall, 1)}
    if defense.needs_distances:
        record["deepfool"] = distances_summary(run, data.distances)
    if defense.needs_clean_data:
        record["clean_subset"] = {"ratio": CLEAN_RATIO, "seed": run.cfg.seed,
                                  "n": len(data.clean_index), "index": data.clean_index.tolist()}
    return {**record, "defense_config": dataclasses.asdict(defense), "report": report,
            "attack_config_hash": run.key, "config": to_dict(run.cfg), **provenance(run.runtime)}


def distances_summary(run: AttackRun, bd: dict) -> dict:
    """What a record says of the distances ``bd`` of ``run`` (burn.json's ``deepfool``)."""
    mask = run.poisoned.poison_mask
    return {"key": bd["key"], "wall_s": round(bd["wall_s"], 1),
            "unconverged_clean": int((~bd["converged"].bool())[~mask].sum()),
            "unconverged_poisoned": int((~bd["converged"].bool())[mask].sum()),
            **separation_summary(bd["norms"], bd["adv_labels"], mask, run.poisoned.original_labels,
                                 run.cfg.attack.target, given_labels=run.poisoned.labels),
            "target_coverage": target_coverage(bd["adv_labels"], run.poisoned.labels,
                                               run.poisoned.original_labels, mask,
                                               run.cfg.attack.target)}


def matching_record(paths, attack_key: str, defense: Defense, run: AttackRun) -> dict | None:
    """The first record among ``paths`` of ``defense`` with exactly these settings on this
    attacked model (so Table 2's grid point equal to the defaults reuses ``burn.json``)."""
    from .cache import read_json

    key = defense_key(run, defense)
    for path in paths:
        if path.is_file():
            rec = read_json(path)
            if rec.get("attack_config_hash") == attack_key and rec.get("config_hash") == key:
                return rec
    return None
