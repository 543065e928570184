import pytest
import torch

from burn.analysis import auroc, roc_curve, separation_summary, top_fraction_stats


def test_auroc_against_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 5, (60,), generator=g).float()  # many ties
    pos = torch.rand(60, generator=g) < 0.3
    p, n = s[pos], s[~pos]
    expected = ((p[:, None] > n[None]).float() + 0.5 * (p[:, None] == n[None]).float()).mean()
    assert auroc(s, pos) == pytest.approx(float(expected), rel=1e-6)
    assert auroc(torch.tensor([3.0, 2, 1, 0]), torch.tensor([1, 1, 0, 0]).bool()) == 1.0
    assert auroc(torch.tensor([0.0, 1, 2, 3]), torch.tensor([1, 1, 0, 0]).bool()) == 0.0


def test_top_fraction_and_roc():
    s = torch.arange(100.0)
    pos = s >= 95
    st = top_fraction_stats(s, pos, 0.1)
    assert st["n"] == 10 and st["precision"] == 0.5 and st["recall"] == 1.0
    fpr, tpr = roc_curve(s, pos, points=11)
    assert fpr[0] == 0 and tpr[-1] == 1 and fpr[-1] == 1 and (tpr.diff() >= 0).all()


def test_separation_summary_mechanism_fields():
    norms = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1])
    mask = torch.tensor([0, 1, 1, 0, 0, 0, 0, 0, 0, 0]).bool()
    original = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 1])
    adv = torch.tensor([0, 2, 5, 0, 0, 0, 1, 1, 1, 1])
    s = separation_summary(norms, adv, mask, original, target=0, fractions=(0.1, 0.3))
    assert s["top10pct_precision"] == 0.0 and s["top10pct_clean_adv_is_target"] == 1.0
    assert s["top10pct_clean_classes"] == {1: 1}
    assert s["top30pct_precision"] == pytest.approx(2 / 3) and s["top30pct_recall"] == 1.0
    assert s["revert_share_poisoned"] == 0.5
    assert s["mean_ratio"] == pytest.approx(3.5 / (sum([5, 2, 1, .5, .4, .3, .2, .1]) / 8))
    assert 0.5 < s["auroc"] < 1


def test_suspect_class_precision_uses_only_given_labels():
    norms = torch.tensor([9.0, 8.0, 3.0, 2.5, 2.0, 0.5, 0.4, 0.3, 0.2, 0.1])
    mask = torch.tensor([0, 0, 1, 1, 0, 0, 0, 0, 0, 0]).bool()
    given = torch.tensor([1, 2, 0, 0, 0, 1, 2, 1, 2, 1])  # poisoned carry label 0
    s = separation_summary(norms, torch.zeros(10, dtype=torch.long), mask, given, target=0,
                           fractions=(0.2,), given_labels=given)
    assert s["top20pct_precision"] == 0.0  # the global top 2 are far clean samples
    assert s["suspect_class"] == 0 and s["top20pct_suspect_class_precision"] == 1.0


def test_tail_overlap_counts_poison_beyond_the_clean_quantile():
    from burn.analysis import tail_overlap

    # 1000 clean samples at 1..1000, 100 poisoned: 90 in the middle, 10 beyond every clean one
    clean = torch.arange(1, 1001).double()
    pois = torch.cat([torch.full((90,), 500.0), torch.full((10,), 2000.0)]).double()
    norms = torch.cat([clean, pois])
    mask = torch.cat([torch.zeros(1000, dtype=torch.bool), torch.ones(100, dtype=torch.bool)])
    t = tail_overlap(norms, mask, quantile=0.99)
    assert abs(t["clean_at_q"] - torch.quantile(clean, 0.99).item()) < 1e-9
    assert t["poisoned_median"] == 500.0
    assert t["poisoned_beyond_clean_q"] == 0.1
    # beyond the clean 99% quantile (990.01): 10 clean samples (991..1000) and 10 poisoned
    assert t["precision_beyond_clean_q"] == 0.5
    assert tail_overlap(clean, torch.zeros(1000, dtype=torch.bool)) == {}


def test_target_coverage_names_the_class_whose_poison_falls_elsewhere():
    from burn.analysis import target_coverage
    from burn.defenses.burn import coverage_class

    # 3 classes, target 0. Label-0 samples: 4 clean zeros, 4 poisoned ones, 4 poisoned twos.
    # Poisoned ones fall back to 1 (3 of 4); poisoned twos fall to 1 instead of 2 (1 of 4 reverts).
    orig = torch.tensor([0] * 4 + [1] * 4 + [2] * 4 + [1, 2])
    given = torch.tensor([0] * 12 + [1, 2])
    mask = torch.tensor([False] * 4 + [True] * 8 + [False, False])
    adv = torch.tensor([1, 1, 2, 1] + [1, 1, 1, 0] + [2, 1, 1, 1] + [0, 0])
    tc = target_coverage(adv, given, orig, mask, target=0)
    assert tc["held_by"] == 2 and tc["share"] == pytest.approx(2 / 12)
    two = tc["by_class"][2]
    assert (two["poisoned"], two["reverted"], two["elsewhere"], two["elsewhere_n"]) == (4, 1, 1, 3)
    assert tc["by_class"][1]["share"] == pytest.approx(9 / 12)
    # the share it reports for the target is the guard's own statistic for that label
    suspect, top, _ = coverage_class(adv, given)
    assert suspect == 0 and tc["top_label"] == 0 and tc["share"] == pytest.approx(top)
