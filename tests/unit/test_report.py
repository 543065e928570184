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
