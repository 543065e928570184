"""Artifact tables built from result files: what exists is shown, what is missing is named."""

from burn.artifacts import defense_tradeoff
from burn.cache import write_json


def test_defense_tradeoff_reads_results_and_names_missing(tmp_path):
    d = tmp_path / "smoke" / "synthetic" / "badnets"
    on = {"attack_config_hash": "m0"}  # made on the model stored beside it
    write_json(d / "none.json", {"acc": 0.82, "asr": 0.94, "ra": 0.05, "config_hash": "m0"})
    write_json(d / "burn.json", {"acc": 0.15, "asr": 0.99, "ra": 0.0, **on})
    write_json(d / "burn_suspect_class.json", {"acc": 0.74, "asr": 0.0002, "ra": 0.81, **on})
    write_json(d / "nad_test_set.json", {"acc": 0.7, "asr": 0.1, "ra": 0.6, **on})  # a named option
    # a record left from another model (one trained again since) is not this model's
    write_json(d / "burn_random.json", {"acc": 0.5, "asr": 0.5, "ra": 0.5, "attack_config_hash": "old"})
    write_json(d / "seeds" / "1" / "none.json", {"acc": 0.8, "asr": 0.9, "ra": 0.1, "config_hash": "m1"})
    write_json(d / "seeds" / "1" / "burn.json", {"acc": 0.2, "asr": 0.9, "ra": 0.0, "attack_config_hash": "m1"})
    df, missing = defense_tradeoff("smoke", "synthetic", ["badnets", "blended"], ["burn", "nad"],
                                   results_root=tmp_path)
    rows = {r.defense: r for r in df.itertuples() if r.seed == 0}
    assert list(rows) == ["none", "burn", "burn:suspect_class", "nad:test_set"]
    assert df[df.seed == 1][["defense", "acc"]].values.tolist() == [["none", 0.8], ["burn", 0.2]]
    assert rows["nad:test_set"].opt_in
    assert (rows["burn"].acc, rows["burn"].asr, rows["burn"].opt_in, rows["burn"].seed) == (0.15, 0.99, False, 0)
    assert (rows["burn:suspect_class"].asr, rows["burn:suspect_class"].opt_in) == (0.0002, True)
    assert missing == ["badnets/nad", "blended/none", "blended/burn", "blended/nad"]


def test_ablation_reuses_the_default_burn_run(tmp_path):
    """The grid point equal to the preset's Burn config is the committed burn.json, not a rerun."""
    from types import SimpleNamespace

    from burn.artifacts import ablation
    from burn.config import load_preset, to_dict
    from burn.defense_stage import make_defense

    cfg = load_preset("smoke")
    b = make_defense(cfg, "burn")
    assert (b.alpha_start, b.beta_start) == (b.alpha_end / 2, b.beta_end / 2)
    from burn.distances import distances_key
    from burn.keys import burn_key

    run = SimpleNamespace(cfg=cfg, key="k", results_dir=tmp_path)  # no model: any rerun would fail
    write_json(tmp_path / "burn.json", {"acc": 0.7, "asr": 0.02, "ra": 0.6, "attack_config_hash": "k",
                                        "config_hash": burn_key(b, "k", distances_key(run)),
                                        "config": to_dict(cfg), "report": {"iterations": [{"precision": 0.5}]}})
    df = ablation(run, alphas=(b.alpha_end,), betas=(b.beta_end,), fixed_alpha=b.alpha_end,
                  fixed_beta=b.beta_end)
    assert df[["varied", "acc", "asr", "precision_final"]].values.tolist() == [
        ["alpha", 0.7, 0.02, 0.5], ["beta", 0.7, 0.02, 0.5]]


def _tiny_run(tmp_path, model, name):
    """An attacked-model run of a linear classifier on 200 random 3x4x4 images (20 poisoned)."""
    from types import SimpleNamespace

    import torch

    from burn.attacks import PoisonedDataset
    from burn.config import load_preset
    from burn.runtime import Runtime

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (200, 3, 4, 4), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (200,), generator=g)
    mask = torch.zeros(200, dtype=torch.bool)
    mask[:20] = True
    poisoned = PoisonedDataset(images, labels, labels.clone(), mask, ("a", "b", "c"), "tiny")
    cfg = load_preset("smoke", {"attack": {"name": name}})
    return SimpleNamespace(cfg=cfg, key=f"tiny-{name}", model=model.eval(), poisoned=poisoned,
                           results_dir=tmp_path / name, runtime=Runtime(progress=False))


def test_tail_under_the_same_model_is_the_same_tail(tmp_path):
    """With the attacked model as its own "clean model", the tail's distances and labels are
    measured again identically, and they sit at the top of the reference distribution."""
    import torch

    from burn.artifacts import tail_under_clean_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3))
    run = _tiny_run(tmp_path, model, "badnets")
    rows, summary = tail_under_clean_model(run, run, fraction=0.1, n_reference=100)
    tail = rows[rows.group == "tail"]
    assert len(tail) == 20 and summary["n_tail"] == 20
    assert (tail.distance_clean_model - tail.distance_attacked).abs().max() < 1e-6
    assert (tail.adv_label_clean_model == tail.adv_label_attacked).all()
    assert summary["tail_clean_adv_is_target_attacked"] == summary["tail_clean_adv_is_target_clean_model"]
    # every tail sample is at least as far as every non-tail sample: above 90% of the reference
    # apart from the reference samples that are themselves in the tail
    in_tail = rows[rows.group == "reference"]["index"].isin(tail["index"]).mean()
    assert (tail.clean_model_percentile >= 1 - in_tail - 1e-9).all()
    # the subset distances are committed beside the clean model and reused
    assert (tmp_path / "badnets" / "deepfool_tail_badnets.npz").is_file()
    rows2, _ = tail_under_clean_model(run, run, fraction=0.1, n_reference=100)
    assert rows2.equals(rows)


def test_table1_clean_model_row(tmp_path):
    import torch

    from burn.artifacts import table1_boundary_distance

    torch.manual_seed(0)
    run = _tiny_run(tmp_path, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3)), "badnets")
    clean = _tiny_run(tmp_path, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3)), "clean")
    clean.poisoned.poison_mask[:] = False
    df = table1_boundary_distance({"badnets": run}, n=50, clean_run=clean)
    assert df["attack"].tolist() == ["clean", "badnets"]
    c, b = df.iloc[0], df.iloc[1]
    assert c.model == "clean model" and c.n_clean == 50 and c.n_poisoned == 0 and c.mean_clean > 0
    assert abs(b.ratio_mean_vs_clean_model - b.mean_poisoned / c.mean_clean) < 1e-12
    assert b.n_poisoned == 20 and b.ratio_mean > 0


def test_unlearning_budget_keeps_each_measured_budget(tmp_path):
    """Fig. 6's rows are stored as they are measured; a rerun (after a plot change) reuses
    them instead of fine-tuning again."""
    import torch

    from burn.artifacts import unlearning_budget
    from burn.data import ImageDataset

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3))
    run = _tiny_run(tmp_path, model, "badnets")
    g = torch.Generator().manual_seed(1)
    imgs = torch.randint(0, 256, (30, 3, 4, 4), generator=g, dtype=torch.uint8)
    run.test = ImageDataset(imgs, torch.randint(0, 3, (30,), generator=g), ("a", "b", "c"), "tiny test")
    run.poisoned_test = ImageDataset(imgs[:10], torch.ones(10, dtype=torch.long), ("a", "b", "c"), "tiny pt")
    df = unlearning_budget(run, budgets=(0, 5), n_clean=20)
    assert df["n_poisoned"].tolist() == [0, 5] and df[["acc", "asr", "ra"]].stack().between(0, 1).all()
    assert df["label_is_true"].isna().tolist() == [True, False]
    assert (tmp_path / "badnets" / "unlearning_budget.json").is_file()
    run.model = None  # any fine-tuning now would fail
    again = unlearning_budget(run, budgets=(0, 5), n_clean=20)
    assert again.equals(df)


def _attack_drawn_run(tmp_path):
    """A tiny run whose poison is drawn as the attacks draw it: ``randperm(N)`` under the
    training seed, the seed every analysis sample also defaults to."""
    import torch

    torch.manual_seed(0)
    run = _tiny_run(tmp_path, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3)), "badnets")
    mask = torch.zeros(200, dtype=torch.bool)
    mask[torch.randperm(200, generator=torch.Generator().manual_seed(run.cfg.train.seed))[:20]] = True
    run.poisoned.poison_mask[:] = mask
    return run, mask


def test_fig5_distance_sample_holds_both_groups_apart_from_the_poison_draw(tmp_path):
    from burn.artifacts import filtering

    run, mask = _attack_drawn_run(tmp_path)
    _, _, dist = filtering({"badnets": run}, dist_samples=20)
    counts = dist.groupby("group").size().to_dict()
    assert counts == {"clean": 20, "poisoned": 20}, counts  # one seeded draw of 20 was all poison
    assert (mask[dist["index"].tolist()].numpy() == (dist["group"] == "poisoned").to_numpy()).all()


def test_no_analysis_sample_replays_the_attacks_draw(tmp_path):
    """Every seeded sample of the training set (Table 1, Fig. 2, Fig. 5's tail reference) holds
    clean samples, not just the poison the attack drew with the same seed."""
    from burn.artifacts import _sample, tail_under_clean_model

    run, mask = _attack_drawn_run(tmp_path)
    ci, pi = _sample(mask, 20, 0)
    assert not mask[ci].any() and mask[pi].all() and len(ci) == len(pi) == 20
    rows, _ = tail_under_clean_model(run, run, fraction=0.05, n_reference=20)
    ref = rows[rows.group == "reference"]
    assert 0 < ref["poisoned"].sum() < 20  # about 10% of a uniform draw; 20 of 20 replays the draw


def test_fig5_figure_is_the_same_file_when_values_move_in_their_last_bits():
    """Recomputed on another CPU the distances differ in their last bits; the figure must not."""
    import io

    import numpy as np
    import pandas as pd

    from burn.plotting import fig5_figure

    rng = np.random.default_rng(0)
    d = np.concatenate([rng.lognormal(0.3, 0.5, 300), rng.lognormal(0.8, 0.3, 100)])
    dist = pd.DataFrame({"attack": "badnets", "distance": d, "group": ["clean"] * 300 + ["poisoned"] * 100})
    roc = pd.DataFrame({"attack": "badnets", "fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.8, 1.0]})
    summary = pd.DataFrame({"attack": ["badnets"], "auroc": [0.8]})

    def pdf(df):
        buf = io.BytesIO()
        fig5_figure(df, roc, summary, "tiny").savefig(buf, format="pdf", metadata={"CreationDate": None})
        return buf.getvalue()

    moved = dist.assign(distance=np.nextafter(d, np.inf))
    assert pdf(dist) == pdf(moved)


def _preset_with_variants(tmp_path, entry: str):
    from burn.config import PRESET_DIR

    text = (PRESET_DIR / "smoke.yaml").read_text() + f"\nartifact_variants:\n  lc: {entry}\n"
    path = tmp_path / "smokev.yaml"
    path.write_text(text)
    return str(path)


def test_artifacts_read_the_variant_the_preset_names(tmp_path):
    """An attack under ``artifact_variants`` is read from that variant's folder, with its own
    overrides; every other attack, and the preset's own config, are as without the entry."""
    from burn.config import artifact_cfg, load_preset, replace

    preset = _preset_with_variants(tmp_path, "{variant: fp32, train: {amp_bf16: false}}")
    lc = artifact_cfg(preset, "synthetic", "lc")
    assert (lc.variant, lc.train.amp_bf16, lc.attack.name) == ("fp32", False, "lc")
    same = {"preset": "smokev"}  # the preset's name is the file's; nothing else differs
    assert artifact_cfg(preset, "synthetic", "badnets") == replace(
        load_preset("smoke", {"attack": {"name": "badnets"}}), **same)
    assert load_preset(preset) == replace(load_preset("smoke"), **same)
    d = tmp_path / "smokev" / "synthetic" / "lc" / "variants" / "fp32"
    write_json(d / "none.json", {"acc": 0.76, "asr": 0.98, "ra": 0.01})
    df, missing = defense_tradeoff(preset, "synthetic", ["lc"], ["burn"], results_root=tmp_path)
    assert df[["defense", "acc"]].values.tolist() == [["none", 0.76]] and missing == ["lc/burn"]


def test_an_artifact_variant_without_a_name_is_refused(tmp_path):
    import pytest

    from burn.config import ConfigError, artifact_cfg

    preset = _preset_with_variants(tmp_path, "{train: {amp_bf16: false}}")
    with pytest.raises(ConfigError, match="names no variant"):
        artifact_cfg(preset, "synthetic", "lc")


def test_fig4_names_the_other_seeds_points_in_its_legend():
    """Seeds other than 0 are drawn as small points; the legend says what they are, and says
    nothing of seeds when there is only seed 0."""
    import pandas as pd

    from burn.plotting import fig4_figure

    df = pd.DataFrame({"attack": "badnets", "defense": ["none", "burn", "burn", "burn"],
                       "acc": [0.82, 0.7, 0.6, 0.65], "asr": [0.94, 0.1, 0.9, 0.3],
                       "seed": [0, 0, 1, 2], "opt_in": False})

    def legend(d):
        return [t.get_text() for t in fig4_figure(d, [], "tiny").axes[-1].get_legend().get_texts()]

    assert "other seeds (small)" in legend(df)
    assert "other seeds (small)" not in legend(df[df["seed"] == 0])
    # a dataset label with its own parentheses is not nested in the title's
    title = fig4_figure(df, [], "CIFAR-10 (JPEG copy)").axes[0].get_title()
    first, removed = title.split("\n")
    assert first.endswith("(CIFAR-10, JPEG copy)") and "((" not in title and "))" not in title
    assert removed == "Burn removed 1 of 3 seeds" and "median and range over seeds" in legend(df)
    assert "\n" not in fig4_figure(df[df["seed"] == 0], [], "tiny").axes[0].get_title()


def test_fig4_marks_keep_a_methods_colour_and_tell_every_run_apart():
    """Twenty runs in one legend: a method's tagged runs share its colour, no two runs share
    a (colour, marker), and the legend lists a method's runs together."""
    from burn.plotting import _fig4_marks

    names = ["none", "burn", "fp", "burn:random", "fp:test_set", "burn:suspect_class", "sau:e100"]
    marks = _fig4_marks(names)
    assert list(marks) == ["none", "burn", "burn:random", "burn:suspect_class", "fp", "fp:test_set",
                           "sau:e100"]
    assert len({(str(c), m) for c, m in marks.values()}) == len(names)
    assert marks["burn"][0] == marks["burn:random"][0] == marks["burn:suspect_class"][0]
    assert marks["burn"][1] == "o" and marks["fp"][0] != marks["burn"][0]


def test_an_executed_notebook_keeps_no_progress_bar_but_keeps_warnings():
    """A cached rerun of `burn reproduce` must leave the executed notebooks unchanged; a
    progress bar (timings, present only where a stage was computed) would not."""
    from burn.notebooks import normalize

    bar = {"output_type": "stream", "name": "stderr", "text": ["\r", "deepfool: 100%| 1/1 [00:07<00:00]"]}
    warning = {"output_type": "stream", "name": "stderr", "text": "UserWarning: few samples\n"}
    printed = {"output_type": "stream", "name": "stdout", "text": "\rmissing: []\n"}
    nb = {"metadata": {}, "cells": [{"cell_type": "code", "metadata": {}, "source": "",
                                     "outputs": [bar, warning, bar, printed]}]}
    assert normalize(nb)["cells"][0]["outputs"] == [warning, printed]


def test_a_changed_output_does_not_make_the_next_outputs_tree_dirty(tmp_path, monkeypatch):
    """`dirty` in a record's provenance is about the code and configs: a regeneration that
    rewrites one figure must not mark every later figure as made from uncommitted code."""
    import subprocess

    from burn import provenance

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    for f in ("src.py", "results/a.csv", "figures/b.png.json", "README.md"):
        (tmp_path / f).parent.mkdir(exist_ok=True)
        (tmp_path / f).write_text("0")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    monkeypatch.setattr(provenance, "PROJECT_ROOT", tmp_path)
    monkeypatch.delenv("BURN_GIT_COMMIT", raising=False)
    for f in ("results/a.csv", "figures/b.png.json", "README.md"):
        (tmp_path / f).write_text("1")
    assert provenance.git_commit()["dirty"] is False
    (tmp_path / "src.py").write_text("1")
    assert provenance.git_commit()["dirty"] is True
