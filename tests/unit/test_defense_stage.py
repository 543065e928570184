"""The generic defense stage: the defender's clean subset, records, reuse, Burn's keys."""

import pytest
import torch

from burn.config import load_preset
from burn.defense_stage import clean_subset, defense_key, defense_run, make_defense
from burn.defenses import DEFENSES
from burn.experiment import attacked_model
from burn.runtime import Runtime


def _run(tmp_path, attack="badnets", **overrides):
    cfg = load_preset("smoke", {"attack": {"name": attack}, **overrides})
    return attacked_model(cfg, Runtime(results_root=tmp_path, progress=False))


def test_clean_subset_is_five_percent_of_untouched_samples(tmp_path):
    run = _run(tmp_path, "inputaware")
    idx = clean_subset(run)
    p = run.poisoned
    assert len(idx) == round(0.05 * len(p)) and torch.equal(idx, idx.sort().values)
    assert not p.poison_mask[idx].any() and not p.cross_mask[idx].any()
    assert torch.equal(idx, clean_subset(run))  # seeded


def test_a_baseline_writes_its_record_and_reuses_it(tmp_path):
    run = _run(tmp_path, defenses={"nad": {"teacher_epochs": 1, "epochs": 1}})
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    rec = defense_run(run, "nad")
    assert rec.pop("_computed_now") and (run.results_dir / "nad.json").is_file()
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    assert rec["defense"] == "nad" and rec["defense_config"]["epochs"] == 1
    assert rec["clean_subset"]["index"] == clean_subset(run).tolist()
    assert rec["before"]["asr"] == run.record["asr"] and {"acc", "asr", "ra"} <= set(rec)
    assert rec["config_hash"] == defense_key(run, make_defense(run.cfg, "nad"))
    assert defense_run(run, "nad") == rec  # stored: nothing recomputed


# Burn's keys as the former ``BurnCfg`` section gave them: config_hash("burn", "attack-key",
# "deepfool-key", BurnCfg(**settings)), computed with that class before Burn's settings became
# its fields: the default and the committed opt-ins (lambda_end 0.5, the suspect-class
# selection), the random control and a seed other than 0.
FORMER_BURN_KEYS = [({}, "706b10f994ce"), ({"lambda_end": 0.5}, "1c62d2a2f4be"),
                    ({"selection": "suspect_class"}, "3c7483400946"),
                    ({"selection": "random"}, "f1b6f382215a"), ({"seed": 1}, "4988874ee96a")]


@pytest.mark.parametrize("settings, key", FORMER_BURN_KEYS)
def test_burn_keeps_the_key_of_its_committed_records(settings, key):
    cfg = load_preset("cpu", {"defenses": {"burn": settings}})
    burn = make_defense(cfg, "burn")
    assert burn == DEFENSES["burn"](**settings)  # the cpu preset sets Burn's defaults
    assert burn.stage_key("attack-key", "deepfool-key", "clean-key") == key
    # the former spelling of the section (records written before, --set burn.KEY=VALUE)
    assert make_defense(load_preset("cpu", {"burn": settings}), "burn") == burn


def test_burn_is_the_registrys_one_distance_defense():
    assert set(DEFENSES) == {"burn", "fp", "nad", "anp", "ibau", "ftsam", "sau"}
    assert [d for d in DEFENSES if DEFENSES[d].needs_distances] == ["burn"]
    assert [d for d in DEFENSES if not DEFENSES[d].needs_clean_data] == ["burn"]
