"""Every notebook runs with papermill on the smoke preset, so a notebook that breaks fails CI.
The notebooks share one results folder, so the smoke models are trained once."""

import json
from pathlib import Path

import pandas as pd
import pytest

papermill = pytest.importorskip("papermill")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SMALL = {
    "table1_boundary_distance": {"n_samples": 100},
    "fig1_feature_similarity": {"n_samples": 40},
    "fig2_adversarial_labels": {"n_samples": 100},
    "fig4_defense_tradeoff": {},
    "fig5_filtering": {},
    "fig6_unlearning_budget": {"budgets": [0, 10, 40], "n_clean": 100},
    "table2_ablation": {"alphas": [0.01, 0.05], "betas": [0.05, 0.1], "fixed_alpha": 0.05, "fixed_beta": 0.1},
}
CHECKS = {  # output CSV -> columns that must be present with values in [0, 1] (or > 0)
    "table1_boundary_distance": ("table1_boundary_distance.csv", ["ratio_mean"], ["mean_clean", "mean_poisoned"]),
    "fig1_feature_similarity": ("fig1_feature_similarity.csv", [], ["distance"]),
    "fig2_adversarial_labels": ("fig2_adversarial_labels.csv", ["share", "share_true_label", "share_target"], []),
    "fig4_defense_tradeoff": ("fig4_defense_tradeoff.csv", ["acc", "asr", "ra"], []),
    "fig5_filtering": ("fig5_filtering.csv", ["auroc", "top1pct_precision", "top0.5pct_recall"], []),
    "fig6_unlearning_budget": ("fig6_unlearning_budget.csv", ["acc", "asr", "ra"], []),
    "table2_ablation": ("table2_ablation.csv", ["acc", "asr", "ra"], []),
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("notebooks")
    return base / "results", base / "figures", base / "executed"


def test_every_notebook_is_covered():
    assert {p.stem for p in NOTEBOOKS.glob("*.ipynb")} == set(SMALL)


@pytest.mark.parametrize("name", list(SMALL))
def test_notebook_runs_on_smoke(name, roots):
    results, figures, executed = roots
    executed.mkdir(parents=True, exist_ok=True)
    params = {"preset": "smoke", "dataset": "synthetic", "results_root": str(results),
              "figures_root": str(figures), "progress": False, **SMALL[name]}
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(executed / f"{name}.ipynb"),
                               parameters=params, progress_bar=False, kernel_name="python3")
    csv, fractions, positive = CHECKS[name]
    df = pd.read_csv(results / "smoke" / "synthetic" / csv)
    assert len(df) > 0
    if name == "table1_boundary_distance":  # the clean model's row has no poisoned samples
        assert (df.loc[df.model == "clean model", "mean_clean"] > 0).all() and (df.model == "clean model").sum() == 1
        df = df[df.model == "attacked model"]
    if name == "fig5_filtering":  # the far tail measured again under the clean model
        tail = pd.read_csv(results / "smoke" / "synthetic" / "fig5_tail_clean_model_summary.csv")
        assert tail["tail_clean_median_percentile_clean_model"].between(0, 1).all()
        assert (figures / "smoke" / "fig5_tail_clean_model.png").stat().st_size > 10_000
    for col in fractions:
        assert df[col].between(0, 1).all() or (col == "ratio_mean" and (df[col] > 0).all()), col
    for col in positive:
        assert (df[col] > 0).all(), col
    sidecar = json.loads((results / "smoke" / "synthetic" / (csv + ".json")).read_text())
    assert sidecar["config"]["preset"] == "smoke" and "git" in sidecar
    assert (figures / "smoke" / f"{name}.png").stat().st_size > 10_000
    assert (figures / "smoke" / f"{name}.pdf").is_file()
    nb = json.loads((executed / f"{name}.ipynb").read_text())
    images = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{name}: the executed notebook shows no figure inline"


def test_paper_vs_ours_report_from_the_notebooks_tables(roots):
    from burn.cli import main

    results, _, _ = roots
    assert main(["report", "--preset", "smoke", "--dataset", "synthetic", "--results-root", str(results)]) == 0
    text = (results / "smoke" / "paper_vs_ours.md").read_text()
    # the measured numbers of the notebooks' tables are in it, as written there
    res = results / "smoke" / "synthetic"
    fig5 = pd.read_csv(res / "fig5_filtering.csv").set_index("attack")
    assert f"| BadNets | {fig5.loc['badnets', 'auroc']:.3f} | {fig5.loc['badnets', 'top0.5pct_precision']:.3f} |" in text
    fig4 = pd.read_csv(res / "fig4_defense_tradeoff.csv")
    burn = fig4[(fig4.attack == "badnets") & (fig4.defense == "burn")].iloc[0]
    assert f"| BadNets | burn | {burn.acc:.3f} | {burn.asr:.3f} | {burn.ra:.3f} |" in text
    # every artifact of the run above is reported (none says "Not run yet")
    assert "Not run yet" not in text
