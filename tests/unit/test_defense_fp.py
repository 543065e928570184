import pytest
import torch
from defense_fixtures import FAST
from defense_fixtures import random_data as _data
from defense_fixtures import tiny_model as _model

from burn.defenses.fp import (
    FinePruning,
    mean_activation,
    prune_counts,
    within_tolerance,
)


def _zero_columns(m):
    return (m.linear.weight == 0).all(0).nonzero().flatten().tolist()


def _no_evaluate(m):
    raise AssertionError("the held-out selection must not read the test sets")


@pytest.fixture(scope="module")
def default_run():
    return FinePruning(**FAST["fp"])(_model(), _data(), evaluate=_no_evaluate)


def test_schedule_and_tolerance_follow_backdoorbench():
    c512 = prune_counts(512, 0.01)  # width 64: 6 more channels per step, 0..510
    assert c512[:3] == [0, 6, 12] and c512[-1] == 510 and len(c512) == 86
    assert prune_counts(128, 0.01)[:3] == [0, 2, 4]  # width 16
    assert prune_counts(32, 0.01) == list(range(32))  # width 4
    assert within_tolerance(0.82, 0.9, 0.1) and not within_tolerance(0.80, 0.9, 0.1)
    assert not within_tolerance(1.0, 0.9, 0.1)  # BackdoorBench's test is on |change|


def test_mean_activation_is_the_mean_of_the_linear_layers_input():
    model, data = _model(), _data(50)
    act = mean_activation(model, data.clean.images, batch_size=16)
    with torch.no_grad():
        ref = model.eval().features(data.clean.float()).mean(0)
    assert act.shape == (32,)  # 8 * width
    torch.testing.assert_close(act, ref, rtol=1e-4, atol=1e-5)


def test_held_out_run_prunes_lowest_channels_and_finetunes(default_run):
    purified, report = default_run
    for key in ("config", "n_channels", "step", "activation", "order", "prune_curve",
                "n_pruned", "pruned_channels", "epochs", "wall_s"):
        assert key in report
    assert report["n_channels"] == 32 and report["step"] == 1
    assert report["n_fit"] == 160 and report["n_held_out"] == 40
    n = report["n_pruned"]
    assert n > 0
    assert report["pruned_channels"] == sorted(report["order"][:n])
    act = torch.tensor(report["activation"])
    assert torch.equal(torch.tensor(report["order"]), torch.argsort(act, stable=True))
    # the mask survives fine-tuning: exactly the pruned columns are zero
    assert _zero_columns(purified) == report["pruned_channels"]
    assert report["prune_curve"][0]["n_pruned"] == 0
    assert len(report["epochs"]) == 1 and report["epochs"][0]["loss"] > 0
    assert set(report["wall_s"]) == {"rank", "prune", "finetune", "total"}


def test_test_set_rule_uses_evaluate_and_stops_at_first_failure():
    calls = []

    def evaluate(m):
        k = len(_zero_columns(m))
        calls.append(k)
        return {"acc": 0.9 if k < 5 else 0.5, "asr": 1.0, "ra": 0.0}

    model, data = _model(), _data()
    purified, report = FinePruning(selection="test_set", **FAST["fp"])(model, data, evaluate=evaluate)
    assert calls[:6] == [0, 1, 2, 3, 4, 5]  # one call per step until the first failure
    assert report["n_pruned"] == 4 and len(report["prune_curve"]) == 6
    assert report["n_fit"] == 200 and report["n_held_out"] == 0
    assert _zero_columns(purified) == sorted(report["order"][:4])


def test_eval_every_reports_test_metrics_per_epoch():
    calls = []

    def evaluate(m):
        calls.append(m.training)
        return {"acc": 0.5, "asr": 0.5, "ra": 0.5}

    fp = FinePruning(epochs=2, batch_size=64, eval_every=1)
    _, report = fp(_model(), _data(), evaluate=evaluate)
    assert calls == [False, False] and report["epochs"][1]["acc"] == 0.5


def test_bad_selection_is_refused():
    with pytest.raises(ValueError):
        FinePruning(selection="oracle")(_model(), _data())
    with pytest.raises(ValueError):
        FinePruning(selection="test_set")(_model(), _data())
