"""The published numbers' data file and the README's generated results tables."""

import pytest

from burn import published
from burn.report import README, fill_blocks, readme_blocks


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


def test_a_missing_block_is_an_error_not_a_skip():
    with pytest.raises(ValueError, match="report:claims"):
        fill_blocks("no markers here", {"claims": "| x |"})
    out = fill_blocks("a\n<!-- report:claims -->\nold\n<!-- /report:claims -->\nb", {"claims": "new"})
    assert out == "a\n<!-- report:claims -->\nnew\n<!-- /report:claims -->\nb"


def test_seed_intervals_from_records_under_seeds(tmp_path):
    from burn.cache import write_json
    from burn.report import _burn_over_seeds, seed_groups, seed_intervals, seed_table

    run = tmp_path / "lf"
    for seed, (acc, asr) in {0: (0.77, 0.05), 1: (0.75, 0.20), 2: (0.79, 0.02)}.items():
        d = run if seed == 0 else run / "seeds" / str(seed)
        write_json(d / "none.json", {"acc": 0.82, "asr": 0.96})
        write_json(d / "burn.json", {"acc": acc, "asr": asr,
                                     "deepfool": {"auroc": 0.8, "top0.5pct_precision": 0.7}})
    write_json(tmp_path / "badnets" / "none.json", {"acc": 0.8, "asr": 0.9})  # one seed: no group
    assert list(seed_groups(tmp_path)) == ["preset"]
    df = seed_intervals(seed_table(seed_groups(tmp_path)["preset"]))
    asr = df[(df.attack == "lf") & (df.measure == "Burn, paper's ranking: ASR")].iloc[0]
    assert asr.n == 3 and asr.seeds == "0 1 2" and asr.removed == "2 of 3"
    assert asr["mean"] == pytest.approx(0.09)
    # t(0.975, 2) = 4.303; sd of (0.05, 0.20, 0.02) = 0.0964
    assert asr.ci95_half == pytest.approx(4.303 * 0.09644 / 3 ** 0.5, rel=1e-3)
    top = df[(df.attack == "lf") & (df.measure == "top-0.5% precision")].iloc[0]
    assert top.n == 3 and top["mean"] == pytest.approx(0.7)  # a field name with a dot
    # the README's claims row
    assert _burn_over_seeds(run) == "0.090 ± 0.240 (2 of 3)"
    assert _burn_over_seeds(tmp_path / "badnets") == "1 seed"


def test_every_burn_run_of_the_readme_is_a_run_the_preset_names():
    from burn.config import named_run
    from burn.report import BURN_RUNS, README_PRESET

    assert all(named_run(README_PRESET, "burn", tag) for tag in BURN_RUNS if tag)
