"""The committed results are what their configs say, in the spirit of RobustBench's
``tests/test_clean_acc.py``: every record's checksum holds and its config hashes to its key
(fast), each preset names the models committed for it, and every committed ``model.pt``
reproduces the ACC / ASR / RA of its ``none.json`` (slow; where CIFAR-10 is present). Every key
is recomputed with the stages' own formulas (``burn.keys``)."""

import dataclasses
from pathlib import Path

import pytest

from burn import keys
from burn.attacks import ATTACKS
from burn.cache import load_npz, load_torch, read_json
from burn.config import PROJECT_ROOT, ExperimentCfg, artifact_cfg, from_dict, load_preset
from burn.defense_stage import make_defense
from burn.defenses import Burn
from burn.experiment import results_dir

RESULTS = PROJECT_ROOT / "results"
MODELS = sorted(p.parent for p in RESULTS.glob("*/*/**/none.json"))
BURNS = sorted(RESULTS.glob("*/*/**/burn*.json"))
BASELINES = sorted(p for d in ("fp", "nad", "anp", "ibau", "ftsam", "sau")
                   for p in RESULTS.glob(f"*/*/**/{d}*.json"))


def _id(p: Path) -> str:
    return str(p.relative_to(RESULTS))


def _model_folder(burn_record: Path) -> Path:
    """The attacked model's folder of a Burn record (Table 2's runs lie in ablation/<key>/)."""
    d = burn_record.parent
    return d.parent.parent if d.parent.name == "ablation" else d


def test_there_are_committed_results():
    assert len(MODELS) >= 9 and len(BURNS) >= 10


@pytest.mark.parametrize("folder", MODELS, ids=_id)
def test_model_record_hashes_to_its_key(folder):
    rec = read_json(folder / "none.json")  # verifies the checksum
    cfg = from_dict(ExperimentCfg, rec["config"])
    key = rec["config_hash"]
    assert keys.attack_key(cfg, rec["dataset"], tuple(rec.get("key_parts", ()))) == key
    saved = load_torch(folder / "model.pt")  # verifies the weights' checksum
    assert saved["config_hash"] == key and "sha256" in saved
    if (folder / "deepfool.npz").is_file():
        z = load_npz(folder / "deepfool.npz")
        assert str(z["key"]) == keys.distances_key(key, cfg.deepfool)
        assert len(z["norms"]) == rec["num_train"]
    for path in folder.glob("deepfool_*.npz"):
        z = load_npz(path)
        assert str(z["key"]) == keys.subset_distances_key(key, cfg.deepfool, z["index"].tolist()), path
    if (folder / "unlearning_budget.json").is_file():  # Fig. 6's sweep, seed 0
        dkey = keys.distances_key(key, cfg.deepfool)
        for k, row in read_json(folder / "unlearning_budget.json").items():
            assert k == keys.unlearning_budget_key(key, dkey, make_defense(cfg, "burn"),
                                                   row["n_poisoned"], row["n_clean"], row["labels"], 0)


@pytest.mark.parametrize("folder", MODELS, ids=_id)
def test_a_committed_model_holds_finite_tensors_only(folder):
    """Weights or an attack's state that overflowed their stored precision (Input-aware's
    generators once did in float16) would make other numbers than the record's."""
    import torch

    saved = load_torch(folder / "model.pt")
    for part in ("state_dict", "attack_state"):
        bad = [k for k, v in saved.get(part, {}).items()
               if v.is_floating_point() and not torch.isfinite(v).all()]
        assert not bad, (part, bad[:3])


@pytest.mark.parametrize("path", BURNS, ids=_id)
def test_burn_record_hashes_to_its_key(path):
    rec = read_json(path)
    model = read_json(_model_folder(path) / "none.json")
    cfg = from_dict(ExperimentCfg, rec["config"])
    assert rec["attack_config_hash"] == model["config_hash"]
    dkey = keys.distances_key(model["config_hash"], cfg.deepfool)
    assert rec["deepfool"]["key"] == dkey
    # Burn's fields: the record's defense_config, or (records written before Burn joined the
    # registry) the config's burn section, which from_dict reads as defenses.burn
    burn = from_dict(Burn, rec.get("defense_config", cfg.defenses["burn"]))
    assert burn.stage_key(model["config_hash"], dkey, "") == rec["config_hash"]
    if path.parent.parent.name == "ablation":  # Table 2's grid point: its folder is its key
        assert path.parent.name == keys.ablation_key(model["config_hash"], burn)


@pytest.mark.parametrize("path", BASELINES, ids=_id)
def test_baseline_record_hashes_to_its_key(path):
    """A baseline's record names its attacked model, its settings and the defender's clean
    subset (5% of the training set, by index; drawn with the run's seed)."""
    from burn.defense_stage import CLEAN_RATIO
    from burn.defenses import DEFENSES

    rec = read_json(path)
    model = read_json(path.parent / "none.json")
    defense = from_dict(DEFENSES[rec["defense"]], rec["defense_config"])
    seed = from_dict(ExperimentCfg, rec["config"]).seed
    assert rec["attack_config_hash"] == model["config_hash"]
    assert rec["clean_subset"]["seed"] == seed
    assert rec["config_hash"] == keys.defense_key(defense, model["config_hash"], "",
                                                  keys.clean_subset_key(CLEAN_RATIO, seed))
    sub = rec["clean_subset"]
    assert sub["n"] == len(sub["index"]) == round(CLEAN_RATIO * model["num_train"])


@pytest.mark.parametrize("path", [p for p in BURNS + BASELINES if "_" in p.stem], ids=_id)
def test_tagged_record_holds_its_presets_named_run(path):
    """A record ``<defense>_<tag>.json`` holds the settings its preset gives ``tag`` under
    ``defense_runs``, so a tag means one setting in the tables that read it."""
    from burn.config import available_presets, named_run

    rec = read_json(path)
    defense, tag = path.stem.split("_", 1)
    preset = path.relative_to(RESULTS).parts[0]
    named = named_run(preset, defense, tag) if preset in available_presets() else None
    if named is None:
        pytest.skip(f"preset {preset} names no run {tag} of {defense}")
    from burn.defenses import DEFENSES

    # records written before the registry hold Burn's fields in the config's burn section
    settings = rec.get("defense_config") or from_dict(ExperimentCfg, rec["config"]).defenses[defense]
    held = dataclasses.asdict(from_dict(DEFENSES[defense], settings))
    for key, value in named["defenses"][defense].items():
        assert held[key] == value, (key, held[key], value)


def _preset_configs():
    """(preset config, folder) for every attack committed under a preset's own folders and
    every regime variant of the regime study."""
    from burn.studies import load_regimes, regime_cfg

    out = []
    for preset in ("cpu", "cpu-w16"):
        for attack in ATTACKS:  # as the notebooks read it (a variant where the preset names one)
            cfg = artifact_cfg(preset, load_preset(preset).data.dataset, attack)
            if (results_dir(cfg) / "none.json").is_file():
                out.append(cfg)
    preset, attack, regimes = load_regimes(PROJECT_ROOT / "experiments" / "regime_badnets.yaml")
    out += [c for c in (regime_cfg(preset, attack, r) for r in regimes)
            if (results_dir(c) / "none.json").is_file()]
    return out


@pytest.mark.parametrize("cfg", _preset_configs(), ids=lambda c: f"{c.preset}/{c.attack.name}/{c.variant}")
def test_each_preset_names_its_committed_model(cfg):
    """A preset (or a regime) loads its committed model instead of training a new one."""
    rec = read_json(results_dir(cfg) / "none.json")
    assert keys.attack_key(cfg, rec["dataset"], tuple(rec.get("key_parts", ()))) == rec["config_hash"]


@pytest.mark.slow
@pytest.mark.parametrize("cfg", _preset_configs(), ids=lambda c: f"{c.preset}/{c.attack.name}/{c.variant}")
def test_committed_model_reproduces_its_record(cfg):
    """Up to ``STORED_TOLERANCE_IMAGES`` test images may differ: float32 rounding differs
    between CPUs and can flip a borderline prediction."""
    from burn.data import DatasetNotFoundError
    from burn.experiment import attacked_model, measure_stored
    from burn.runtime import Runtime

    try:
        run = attacked_model(cfg, Runtime(progress=False))
    except DatasetNotFoundError as e:
        pytest.skip(str(e))
    assert not run.trained_now
    m = measure_stored(run)
    assert m["agree"], (m["measured"], {k: run.record[k] for k in ("acc", "asr", "ra")})
