"""Artifact tables built from result files: what exists is shown, what is missing is named."""

from burn.artifacts import defense_tradeoff
from burn.cache import write_json


def test_defense_tradeoff_reads_results_and_names_missing(tmp_path):
    d = tmp_path / "smoke" / "synthetic" / "badnets"
    write_json(d / "none.json", {"acc": 0.82, "asr": 0.94, "ra": 0.05})
    write_json(d / "burn.json", {"acc": 0.15, "asr": 0.99, "ra": 0.0})
    write_json(d / "burn_suspect_class.json", {"acc": 0.74, "asr": 0.0002, "ra": 0.81})
    df, missing = defense_tradeoff("smoke", "synthetic", ["badnets", "blended"], ["burn", "nad"],
                                   results_root=tmp_path)
    rows = {r.defense: r for r in df.itertuples()}
    assert list(rows) == ["none", "burn", "burn:suspect_class"]
    assert (rows["burn"].acc, rows["burn"].asr, rows["burn"].opt_in) == (0.15, 0.99, False)
    assert (rows["burn:suspect_class"].asr, rows["burn:suspect_class"].opt_in) == (0.0002, True)
    assert missing == ["badnets/nad", "blended/none", "blended/burn", "blended/nad"]


def test_ablation_reuses_the_default_burn_run(tmp_path):
    """The grid point equal to the preset's Burn config is the committed burn.json, not a rerun."""
    from types import SimpleNamespace

    from burn.artifacts import ablation
    from burn.config import load_preset, to_dict

    cfg = load_preset("smoke")
    b = cfg.burn
    assert (b.alpha_start, b.beta_start) == (b.alpha_end / 2, b.beta_end / 2)
    write_json(tmp_path / "burn.json", {"acc": 0.7, "asr": 0.02, "ra": 0.6, "attack_config_hash": "k",
                                        "config": to_dict(cfg), "report": {"iterations": [{"precision": 0.5}]}})
    run = SimpleNamespace(cfg=cfg, key="k", results_dir=tmp_path)  # no model: any rerun would fail
    df = ablation(run, alphas=(b.alpha_end,), betas=(b.beta_end,), fixed_alpha=b.alpha_end,
                  fixed_beta=b.beta_end, progress=False)
    assert df[["varied", "acc", "asr", "precision_final"]].values.tolist() == [
        ["alpha", 0.7, 0.02, 0.5], ["beta", 0.7, 0.02, 0.5]]
