import pytest
import torch
import torch.nn.functional as F
from defense_fixtures import FAST as _FAST
from defense_fixtures import random_data as _data
from defense_fixtures import tiny_model as _model

import burn.defenses.anp as anp_mod
from burn.defenses.anp import (
    ANP,
    adversarial_noise,
    bn_layers,
    masked_forward,
    prune_by_threshold,
    thresholds,
)

FAST = _FAST["anp"]


def _zero_bn_weights(m):
    return sum(int((bn.weight == 0).sum()) for _, bn in bn_layers(m))


def _no_evaluate(m):
    raise AssertionError("the held-out selection must not read the test sets")


@pytest.fixture(scope="module")
def default_run():
    model = _model()
    purified, report = ANP(**FAST)(model, _data(), evaluate=_no_evaluate)
    return model, purified, report


def test_threshold_grid_is_backdoorbenchs():
    t = thresholds(0.90, 0.05)
    assert len(t) == 19 and t[0] == 0.0 and t[1] == 0.05 and t[-1] == 0.9


def test_masked_forward_is_the_model_at_mask_one_and_changes_with_masks():
    model = _model().train()
    layers = bn_layers(model)
    assert len(layers) == 16  # bn1 and bn2 of the 8 blocks
    x = torch.rand(8, 3, 32, 32)
    ones = [torch.ones(m.num_features) for _, m in layers]
    with torch.no_grad():
        torch.testing.assert_close(masked_forward(model, layers, ones, x), model(x))
        half = [o * 0.5 for o in ones]
        assert not torch.allclose(masked_forward(model, layers, half, x), model(x))


def test_adversarial_noise_shape_range_and_step():
    model = _model().train()
    layers = bn_layers(model)
    with torch.no_grad():  # nonzero biases, so the bias noise has a gradient
        for _, m in layers:
            m.bias.uniform_(-0.5, 0.5)
    x, y = torch.rand(16, 3, 32, 32), torch.arange(16) % 10
    masks = [torch.ones(m.num_features) for _, m in layers]
    gen = torch.Generator().manual_seed(0)
    noise_w, noise_b = adversarial_noise(model, layers, masks, x, y, eps=0.4, steps=1,
                                         generator=gen)
    start = torch.Generator().manual_seed(0)  # the same uniform start, drawn again
    for part, noise in enumerate((noise_w, noise_b)):
        for (_, m), nz in zip(layers, noise):
            assert nz.shape == (m.num_features,)
            assert nz.abs().max() <= 0.8 + 1e-6
    init = [(torch.rand(m.num_features, generator=start) * 2 - 1) * 0.4
            for _ in range(2) for _, m in layers]
    moved = torch.cat([n - i for n, i in zip(noise_w + noise_b, init)])
    # one signed step of eps: every coordinate moved by exactly +-0.4 (or 0 where the gradient is 0)
    assert torch.allclose(moved.abs()[moved != 0], torch.tensor(0.4), atol=1e-6)
    assert (moved != 0).float().mean() > 0.9
    # the step ascends the cross-entropy (checked at a small eps, where it is near-linear)
    noise = adversarial_noise(model, layers, masks, x, y, eps=1e-3, steps=1,
                              generator=torch.Generator().manual_seed(1))
    start = torch.Generator().manual_seed(1)
    init = [[(torch.rand(m.num_features, generator=start) * 2 - 1) * 1e-3 for _, m in layers]
            for _ in range(2)]
    with torch.no_grad():
        def ce(nz):
            return F.cross_entropy(masked_forward(model, layers, masks, x, nz), y)

        assert ce(noise) > ce(tuple(init))


def test_prune_by_threshold_zeroes_bn_weights_at_or_below_it():
    model = _model()
    layers = bn_layers(model)
    masks = [torch.linspace(0, 1, m.num_features) for _, m in layers]
    masks[0][1] = 0.30004  # stored as 0.3000: pruned at 0.3, as BackdoorBench's mask file
    pruned, n = prune_by_threshold(model, masks, 0.3)
    expected = sum(int((torch.round(mk.double() * 1e4) / 1e4 <= 0.3).sum()) for mk in masks)
    assert n == expected == _zero_bn_weights(pruned) and n > 0
    assert pruned.layers[0].bn1.weight[1] == 0
    for (_, bn), (_, ref), mk in zip(bn_layers(pruned), layers, masks):
        torch.testing.assert_close(bn.bias, ref.bias)  # only the weight is pruned
        keep = torch.round(mk.double() * 1e4) / 1e4 > 0.3
        torch.testing.assert_close(bn.weight[keep], ref.weight[keep])
    assert prune_by_threshold(model, masks, None)[1] == 0


def test_held_out_run_prunes_and_reports(default_run):
    model, purified, report = default_run
    for key in ("config", "log", "threshold", "n_pruned", "n_neurons", "curve", "mask_values",
                "pruned_per_layer", "n_fit", "n_held_out", "wall_s"):
        assert key in report
    assert report["n_fit"] == 160 and report["n_held_out"] == 40
    assert [r["iteration"] for r in report["log"]] == [2, 4]
    layers = bn_layers(model)
    assert list(report["mask_values"]) == [n for n, _ in layers]
    for (_, m), vals in zip(layers, report["mask_values"].values()):
        v = torch.tensor(vals)
        assert v.shape == (m.num_features,) and v.min() >= 0 and v.max() <= 1
    assert report["n_neurons"] == sum(m.num_features for _, m in layers)
    # the untrained model's held-out ACC never moves, so the rule goes to the largest threshold
    assert report["threshold"] == 0.9 and report["n_pruned"] > 0
    assert _zero_bn_weights(purified) == report["n_pruned"]
    assert report["n_pruned"] == sum(report["pruned_per_layer"].values())


def test_held_out_rule_stops_before_the_first_failing_threshold(monkeypatch):
    # held-out ACC falls once more than 20 neurons are pruned
    monkeypatch.setattr(anp_mod, "accuracy_on",
                        lambda m, ds: 0.9 if _zero_bn_weights(m) <= 20 else 0.5)
    _, report = ANP(**FAST)(_model(), _data(), evaluate=_no_evaluate)
    passed = [r for r in report["curve"][1:] if r["n_pruned"] <= 20]
    assert report["threshold"] == passed[-1]["threshold"] and report["n_pruned"] <= 20
    assert report["curve"][-1]["n_pruned"] > 20  # the scan ended at the first failure


def test_test_set_rule_takes_lowest_asr_within_the_acc_tolerance():
    calls = []

    def evaluate(m):
        k = _zero_bn_weights(m)
        calls.append(k)
        return {"acc": 0.9 if k <= 30 else 0.5, "asr": 1.0 / (1 + k), "ra": 0.0}

    _, report = ANP(selection="test_set", **FAST)(_model(), _data(), evaluate=evaluate)
    assert len(calls) == 20 and report["n_fit"] == 200  # unpruned + 19 thresholds
    ok = [r for r in report["curve"][1:] if r["n_pruned"] <= 30]
    best = min(ok, key=lambda r: (r["asr"], r["threshold"]))
    assert report["threshold"] == best["threshold"] and 0 < report["n_pruned"] <= 30


def test_bad_selection_is_refused():
    with pytest.raises(ValueError):
        ANP(selection="oracle")(_model(), _data())
    with pytest.raises(ValueError):
        ANP(selection="test_set")(_model(), _data())
