"""Paper vs ours: the verdicts, their statistics over seeds, and that every place that states
a verdict (the README, paper_vs_ours.md, the executed notebooks, the findings page) states the
one ``burn.verdicts`` computes from the committed results."""

import json
import re

import pandas as pd
import pytest

from burn.config import PROJECT_ROOT
from burn.overseeds import binomial_interval, over_seeds, within
from burn.verdicts import (FAILS, HOLDS, IN_PART, NOT_RUN, CLAIM_RULES, all_verdicts, claims,
                           verdict, verdict_of)

RES = PROJECT_ROOT / "results" / "cpu" / "cifar10"
MARKER = re.compile(r"<!-- verdict (\w+): ([a-z ]+) -->")


def test_the_exact_interval_stays_in_0_1_and_matches_clopper_pearson():
    assert binomial_interval(0, 3) == pytest.approx((0.0, 0.7076), abs=1e-4)
    assert binomial_interval(2, 3) == pytest.approx((0.0943, 0.9916), abs=1e-4)
    assert binomial_interval(5, 5) == pytest.approx((0.4782, 1.0), abs=1e-4)
    for n in range(1, 8):
        for k in range(n + 1):
            lo, hi = binomial_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
    with pytest.raises(ValueError, match="k of n"):
        binomial_interval(4, 3)


def test_no_interval_from_fewer_than_three_seeds():
    two = over_seeds([(0, 0.998), (1, 0.084)])
    assert two.k_of_n_text() == "1 of 2 seeds" and two.median_text() == "0.541 [0.084, 0.998]"
    three = over_seeds([(0, 0.051), (1, 0.216), (2, None), (3, 0.061)])
    assert three.n == 3 and three.seeds_text() == "0.051, 0.216, 0.061"
    assert three.k_of_n_text() == "2 of 3 seeds (rate 0.09-0.99, exact 95%)"
    assert over_seeds([(0, 0.4)]).median_text() == "0.400"


def test_an_asr_of_exactly_ten_percent_counts_as_removed_as_float32_stores_it():
    import torch

    stored = float((torch.arange(9000) < 900).float().mean())  # 900 of 9,000, as records hold it
    assert stored > 0.10 and within(stored)
    assert not within(901 / 9000)  # one image more is not removed
    assert over_seeds([(0, stored), (1, 0.2)]).count() == 1
    assert list(within(pd.Series([stored, 0.1002]))) == [True, False]


def test_verdict_words():
    assert [verdict_of(3, 3), verdict_of(1, 3), verdict_of(0, 3), verdict_of(0, 0)] == \
        [HOLDS, IN_PART, FAILS, NOT_RUN]


def test_every_claim_has_its_prose_and_its_rule():
    assert set(claims()) == set(CLAIM_RULES)
    for name, c in claims().items():
        assert (PROJECT_ROOT / "notebooks" / f"{c['notebook']}.ipynb").is_file(), name
        assert c["link"].startswith("docs/"), name


def test_a_claim_without_its_table_is_not_run(tmp_path):
    v = verdict("fig6", tmp_path)
    assert v.verdict == NOT_RUN and v.ours == "not run yet"


def _records(folder, acc, asr, runs=()):
    """An attacked model's none.json in ``folder`` and its runs' records, made on it."""
    folder.mkdir(parents=True)
    (folder / "none.json").write_text(json.dumps({"config_hash": str(folder), "acc": acc, "asr": asr}))
    for name, (a, r) in dict(runs).items():
        (folder / f"{name}.json").write_text(json.dumps({"attack_config_hash": str(folder), "acc": a, "asr": r}))


def test_fig4_counts_an_attack_removed_in_most_of_its_seeds_from_the_records(tmp_path):
    pd.DataFrame([("lf", "none", 0, 0.8, 0.95), ("lf", "burn", 0, 0.75, 0.05), ("badnets", "none", 0, 0.8, 0.9),
                  ("badnets", "burn", 0, 0.6, 0.5)], columns=["attack", "defense", "seed", "acc", "asr"]).to_csv(
        tmp_path / "fig4_defense_tradeoff.csv", index=False)
    _records(tmp_path / "lf", 0.8, 0.95, {"burn": (0.75, 0.05)})
    _records(tmp_path / "lf" / "seeds" / "1", 0.8, 0.95, {"burn": (0.7, 0.3)})
    _records(tmp_path / "lf" / "seeds" / "2", 0.8, 0.95, {"burn": (0.76, 0.01)})
    _records(tmp_path / "badnets", 0.8, 0.9, {"burn": (0.6, 0.5)})
    v = verdict("fig4", tmp_path)
    assert v.verdict == IN_PART and "on 1 of 2 attacks (LF)" in v.ours
    assert "removed in 2 of 3 seeds" in v.seeds and "ACC lost 5.0 [4.0, 10.0] points" in v.seeds
    # a run left from a model trained again since is not counted
    (tmp_path / "lf" / "seeds" / "2" / "none.json").write_text(json.dumps({"config_hash": "again", "acc": 0.8, "asr": 0.9}))
    assert "removed in 1 of 2 seeds" in verdict("fig4", tmp_path).seeds


def _stated(text: str) -> dict:
    return dict(MARKER.findall(text))


def _notebook_verdicts() -> dict:
    found = {}
    for nb in sorted((PROJECT_ROOT / "notebooks" / "executed" / "cpu").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            for out in cell.get("outputs", []):
                found |= _stated("".join(out.get("data", {}).get("text/markdown", "")))
    return found


def test_readme_paper_vs_ours_notebooks_and_findings_state_the_computed_verdicts():
    computed = {v.claim: v.verdict for v in all_verdicts(RES)}
    readme = _stated((PROJECT_ROOT / "README.md").read_text())
    pvo = _stated((RES.parent / "paper_vs_ours.md").read_text())
    assert readme == computed, "run `burn report --preset cpu`"
    assert pvo == computed, "run `burn report --preset cpu`"
    assert _notebook_verdicts() == computed, "run `burn reproduce --preset cpu`"
    findings = _stated((PROJECT_ROOT / "docs" / "findings.md").read_text())
    assert findings == computed, "run `burn report --preset cpu`"
