"""The generic defense stage: the defender's clean subset, records, reuse, Burn's keys."""

import torch

from burn.config import load_preset
from burn.defense_stage import clean_subset, defense_key, defense_run, make_defense
from burn.defenses import DEFENSES
from burn.distances import distances_key
from burn.keys import burn_key
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


def test_burn_keeps_the_key_of_its_committed_records(tmp_path):
    run = _run(tmp_path)
    burn = make_defense(run.cfg, "burn")
    assert defense_key(run, burn) == burn_key(run.cfg.burn, run.key, distances_key(run))
    assert set(DEFENSES) == {"burn", "fp", "nad", "anp", "ibau", "ftsam", "sau"}
    assert all(DEFENSES[d].needs_clean_data for d in DEFENSES if d != "burn")
