"""The published numbers' data file and the README's generated results tables."""

import pytest

from burn import published
from burn.report import README, SEEDS_PAGE, fill_blocks, readme_blocks, seeds_page_blocks


def test_every_published_number_names_its_source():
    entries = published.load()
    assert {"paper_table1", "paper_fig1", "backdoorbench_defenses"} <= set(entries)
    for name, entry in entries.items():
        assert entry["source"].strip(), name
    t1 = published.values("paper_table1")
    assert set(t1) == {"cifar10", "cifar100", "tiny"}
    for dataset, row in t1.items():
        assert set(row) == {"clean", "badnets", "blended", "inputaware", "lc", "lf", "ssba", "trojannn"}, dataset
        assert all(isinstance(v, float) and 0 < v < 10 for v in row.values()), dataset
    for attack, rows in published.values("backdoorbench_defenses").items():
        assert all(len(v) == 2 and all(0 <= x <= 100 for x in v) for v in rows.values()), attack


def test_the_readme_tables_are_the_reports_and_the_readme_is_short():
    """The README's results tables equal what `burn report` writes from the committed CSVs."""
    text = README.read_text()
    assert fill_blocks(text, readme_blocks()) == text, "run `burn report --preset cpu`"
    assert len(text.encode()) < 10_000
    seeds = SEEDS_PAGE.read_text()
    assert fill_blocks(seeds, seeds_page_blocks()) == seeds, "run `burn report --preset cpu`"


def test_the_trace_table_reads_each_seeds_phase_1_and_clean_sets(tmp_path):
    from burn.cache import write_json
    from burn.report import burn_trace_table

    res = tmp_path / "mine" / "cifar10"
    its = [{"t": 0, "n_poison_set": 250, "n_clean_set": 0, "acc": 0.3, "asr": 0.8,
            "poison_set_label_counts": {"0": 83, "1": 167}},
           *({"t": t, "n_poison_set": 300, "n_clean_set": 2500, "acc": 0.5, "asr": 0.9,
              "poisoned_in_clean_set": c} for t, c in ((1, 54), (2, 2383)))]
    for d in (res / "badnets", res / "badnets" / "seeds" / "1"):
        write_json(d / "none.json", {"acc": 0.82, "asr": 0.94})
    write_json(res / "badnets" / "burn.json", {
        "acc": 0.137, "asr": 0.992, "before": {"acc": 0.82, "asr": 0.94},
        "config": {"attack": {"target": 0}}, "deepfool": {"auroc": 0.745, "top0.5pct_precision": 0.048},
        "report": {"iterations": its}})
    rows = burn_trace_table(res, ["badnets"]).splitlines()
    assert len(rows) == 3  # seed 1 has no Burn run yet: no row
    assert rows[2] == ("| BadNets | 0 | 0.820 / 0.940 | 0.745 | 0.048; - | 83 of 250 | 0.300 / 0.800 "
                       "| 54, 2,383 of 2,500 | 0.137 / 0.992 |")


def test_the_guard_table_says_where_each_run_lies_from_the_bar(tmp_path):
    from burn.cache import write_json
    from burn.report import guard_table

    res = tmp_path / "mine" / "cifar10"

    def run(d, suspect, top, nxt, acc, asr, tags=("coverage_class_outside", "coverage_class_distill")):
        write_json(d / "none.json", {"acc": 0.8, "asr": 0.9})
        for tag in tags:
            write_json(d / f"burn_{tag}.json", {
                "acc": acc, "asr": asr, "config": {"attack": {"target": 0}},
                "defense_config": {"min_coverage": 0.03},
                "report": {"suspect_class": suspect, "coverage": {"suspect": top, "next": nxt}}})

    run(res / "lc", 0, 0.035, 0.005, 0.689, 0.0)
    run(res / "lc" / "seeds" / "1", None, 0.016, 0.0046, 0.760, 0.990, tags=("coverage_class_outside",))
    run(res / "clean", None, 0.019, 0.019, 0.836, 0.016)
    lines = guard_table(res, ["lc"]).splitlines()
    assert lines[2] == ("| LC | 0 | 0.035 (bar 0.03) | 0.005 | 7.0x | class 0 (the target) "
                        "| 0.689 / 0.000 | 0.689 / 0.000 |")
    assert lines[3] == ("| LC | 1 | 0.016 (bar 0.03) | 0.005 | 3.5x | declines | 0.760 / 0.990 "
                        "| not run |")
    assert lines[4].startswith("| clean model | 0 | 0.019 (bar 0.03) | 0.019 | 1.0x | declines |")
    assert lines[-1] == ("Suspect class's coverage: backdoored models 0.016 (LC 1) to 0.035 (LC 0), "
                         "2 runs; clean models 0.019 (clean 0) to 0.019 (clean 0), 1 run.")


def test_tables_made_from_a_model_no_longer_stored_are_named_stale(tmp_path):
    from burn.cache import write_json
    from burn.report import _stale_lines, stale_tables

    res = tmp_path / "mine" / "cifar10"
    write_json(res / "table1_boundary_distance.csv.json",
               {"config": {"attack_config_hashes": {"badnets": "aaa", "inputaware": "old", "lc": "ccc"}}})
    write_json(res / "badnets" / "none.json", {"config_hash": "aaa"})
    write_json(res / "lc" / "none.json", {"config_hash": "new"})
    assert stale_tables(res) == {"inputaware": ("old", None, ["table1_boundary_distance"]),
                                 "lc": ("ccc", "new", ["table1_boundary_distance"])}
    assert _stale_lines(res)[0].startswith("- **Dynamic: stale.** `table1_boundary_distance` were "
                                           "made from its model `old`, which is no longer the "
                                           "stored one (none is stored)")


def test_the_seeds_block_reads_the_records_of_each_seeds_stored_model(tmp_path):
    from burn.cache import write_json
    from burn.report import seed_records

    res = tmp_path / "mine" / "cifar10"
    write_json(res / "lf" / "none.json", {"acc": 0.82, "asr": 0.96, "config_hash": "m0"})
    write_json(res / "lf" / "burn.json", {"acc": 0.77, "asr": 0.05, "attack_config_hash": "m0"})
    write_json(res / "lf" / "seeds" / "4" / "none.json", {"acc": 0.81, "asr": 0.95, "config_hash": "m4"})
    write_json(res / "lf" / "seeds" / "4" / "burn.json", {"acc": 0.5, "asr": 0.9, "attack_config_hash": "old"})
    write_json(res / "ia" / "burn.json", {"acc": 0.6, "asr": 0.4, "attack_config_hash": "x"})  # no model
    df = seed_records(res, ["lf", "ia"])
    assert df.values.tolist() == [["lf", "none", 0, 0.82, 0.96], ["lf", "burn", 0, 0.77, 0.05],
                                  ["lf", "none", 4, 0.81, 0.95]]


def test_a_missing_block_is_an_error_not_a_skip():
    with pytest.raises(ValueError, match="report:claims"):
        fill_blocks("no markers here", {"claims": "| x |"})
    out = fill_blocks("a\n<!-- report:claims -->\nold\n<!-- /report:claims -->\nb", {"claims": "new"})
    assert out == "a\n<!-- report:claims -->\nnew\n<!-- /report:claims -->\nb"


def test_seed_summaries_from_records_under_seeds(tmp_path):
    from burn.cache import write_json
    from burn.report import fig5_seed0, seed_groups, seed_summaries, seed_table

    run = tmp_path / "lf"
    for seed, (acc, asr) in {0: (0.77, 0.05), 1: (0.75, 0.20), 2: (0.79, 0.02)}.items():
        d = run if seed == 0 else run / "seeds" / str(seed)
        write_json(d / "none.json", {"acc": 0.82, "asr": 0.96})
        write_json(d / "burn.json", {"acc": acc, "asr": asr,
                                     "deepfool": {"auroc": 0.8, "top0.5pct_precision": 0.7,
                                                  "mean_ratio": 1.9}})
    write_json(tmp_path / "badnets" / "none.json", {"acc": 0.8, "asr": 0.9})  # one seed: no group
    assert list(seed_groups(tmp_path)) == ["preset"]
    df = seed_summaries(seed_table(seed_groups(tmp_path)["preset"]))
    asr = df[(df.attack == "lf") & (df.measure == "Burn, paper's ranking: ASR")].iloc[0]
    assert asr.n == 3 and asr.seeds == "0 1 2" and asr["values"] == "0.050, 0.200, 0.020"
    assert asr.median_range == "0.050 [0.020, 0.200]"
    assert asr.removed == "2 of 3 seeds (rate 0.09-0.99, exact 95%)"
    top = df[(df.attack == "lf") & (df.measure == "top-0.5% precision")].iloc[0]
    assert top.n == 3 and top.median_range == "0.700 [0.700, 0.700]"  # a field name with a dot
    assert top.removed == ""
    ratio = df[(df.attack == "lf") & df.measure.str.startswith("Table 1")].iloc[0]
    assert ratio.n == 3 and ratio.median_range == "1.900 [1.900, 1.900]"
    mis = df[(df.attack == "lf") & (df.measure == "top-0.5% mislabeled precision")]
    assert mis.empty  # no record has it
    (tmp_path / "fig5_filtering.csv").write_text("attack,top0.5pct_mislabeled_precision\nlf,0.4\n")
    seed0 = fig5_seed0(tmp_path)
    assert seed0 == {("lf", "top-0.5% mislabeled precision"): 0.4}
    write_json(run / "seeds" / "1" / "burn.json", {"acc": 0.75, "asr": 0.20,
                                                    "deepfool": {"top0.5pct_mislabeled_precision": 0.1}})
    df = seed_summaries(seed_table(seed_groups(tmp_path)["preset"], seed0))
    mis = df[(df.attack == "lf") & (df.measure == "top-0.5% mislabeled precision")].iloc[0]
    assert mis.seeds == "0 1" and mis["values"] == "0.400, 0.100"  # seed 0 only: seed 2 stays unknown


def test_the_seeds_table_counts_each_run_and_the_held_out_seeds_apart():
    import pandas as pd

    from burn.report import _seeds_cell

    df = pd.DataFrame({"attack": "lf", "defense": ["none"] * 5 + ["burn"] * 5, "seed": [0, 1, 2, 3, 4] * 2,
                       "acc": 0.8, "asr": [0.9] * 5 + [0.05, 0.2, 0.02, 0.5, 0.01]})
    assert _seeds_cell(df, "lf", "burn") == ("**3 of 5** (0.15-0.95): 0.050, 0.200, 0.020, 0.500, 0.010; "
                                             "median 0.050 [0.010, 0.500]")
    assert _seeds_cell(df, "lf", "burn", (3, 4)) == "**1 of 2**: 0.500, 0.010; median 0.255 [0.010, 0.500]"
    assert _seeds_cell(df, "lf", "burn", (3, 4), values=False) == "**1 of 2**"
    assert _seeds_cell(df, "lf", "burn", values=False) == "**3 of 5** (0.15-0.95)"
    assert _seeds_cell(df, "lf", "burn:other") == "not run"
    same = df.assign(asr=[0.9] * 5 + [0.0] * 5)
    assert _seeds_cell(same, "lf", "burn") == "**5 of 5** (0.48-1.00): 0.000 on every seed"


def test_every_burn_run_of_the_readme_is_a_run_the_preset_names():
    from burn.config import named_run
    from burn.report import BURN_RUNS, README_PRESET

    assert all(named_run(README_PRESET, "burn", tag) for tag in BURN_RUNS if tag)


def test_the_readings_are_tested_on_the_runs_named_before_they_existed(tmp_path, monkeypatch):
    import burn.report as report
    from burn.cache import write_json

    monkeypatch.setattr(report, "READING_TEST_RUNS", {"lc": (3, 4), "clean": (3,)})

    def write(attack, seed, p0_target, asr, cov, nxt):
        d = tmp_path / attack / "seeds" / str(seed)
        write_json(d / "none.json", {"acc": 0.8, "asr": 0.9, "config_hash": "m"})
        cfg = {"attack": {"target": 0}}
        if attack != "clean":
            write_json(d / "burn.json", {"acc": 0.7, "asr": asr, "attack_config_hash": "m", "config": cfg,
                                         "report": {"iterations": [{"poison_set_label_counts": {"0": p0_target}}]}})
        write_json(d / "burn_coverage_class_outside.json", {
            "acc": 0.7, "asr": 0.0, "attack_config_hash": "m", "config": cfg,
            "defense_config": {"min_coverage": 0.03}, "report": {"coverage": {"suspect": cov, "next": nxt}}})

    for seed in (0, 3):  # seed 0 is not a test run: left out
        write("lc", seed, 80, 0.001, 0.016, 0.004)  # reading says keeps, the run loses it; lead 4x acts
    write("clean", 0, 0, 0, 0.02, 0.02)
    write("clean", 3, 0, 0, 0.012, 0.003)  # a clean model the lead rule would act on: wrong
    out = report.readings_table(tmp_path)
    assert "| LC | 3 | 80: keeps | loses (0.001) | 0.016, 4.0x: acts | as it should |" in out
    assert "| LC | 4 | not run yet |" in out and "| LC | 0 |" not in out
    assert "| clean model | 3 | - | - | 0.012, 4.0x: acts | wrong |" in out
    assert out.endswith("`P_0` reading right on 0 of 1 runs it calls; the lead rule right on 1 of 2.")
