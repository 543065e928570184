import pytest
import torch
from defense_fixtures import FAST as _FAST
from defense_fixtures import random_data, tiny_model

from burn.defenses.nad import NAD, at_loss, attention_map, capture_outputs, stage_ends
from burn.models import create_model


def _setup(n=200):
    return tiny_model(), random_data(n)


FAST = NAD(**_FAST["nad"])


def test_stage_ends_are_layer1_to_layer4():
    assert stage_ends(create_model("preactresnet18", 10, width=4)) == [1, 3, 5, 7]
    assert stage_ends(create_model("preactresnet34", 10, width=4)) == [2, 6, 12, 15]


def test_attention_map_is_a_unit_spatial_map_and_at_loss_compares_them():
    g = torch.Generator().manual_seed(0)
    fm = torch.randn(3, 8, 4, 4, generator=g)
    am = attention_map(fm)
    assert am.shape == (3, 16)
    torch.testing.assert_close(am.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    assert (am >= 0).all()
    # a channel permutation and the sign of the features do not change the map
    torch.testing.assert_close(attention_map(-fm[:, torch.randperm(8, generator=g)]), am)
    expected = (fm.pow(2).sum(1).flatten(1))
    torch.testing.assert_close(am, expected / expected.norm(dim=1, keepdim=True), atol=1e-5, rtol=0)
    assert float(at_loss(fm, fm)) == 0.0
    assert float(at_loss(fm, torch.randn(3, 8, 4, 4, generator=g))) > 0.0


def test_capture_outputs_sees_layer3_and_layer4_and_cleans_up():
    model, _ = _setup()
    with capture_outputs(model, [5, 7]) as out:
        model(torch.rand(2, 3, 32, 32))
    assert out[5].shape == (2, 16, 8, 8) and out[7].shape == (2, 32, 4, 4)
    assert not any(m._forward_hooks for m in model.modules())


def test_nad_reports_and_leaves_no_hooks():
    model, data = _setup()
    purified, report = FAST(model, data)
    assert not any(m._forward_hooks for m in purified.modules())
    assert all(p.requires_grad for p in purified.parameters())
    assert [r["epoch"] for r in report["teacher_epochs"]] == [1]
    row = report["student_epochs"][0]
    assert set(row) >= {"loss", "ce", "at_layer3", "at_layer4", "lr", "epoch_s"}
    # the teacher moved away from the student's start, so the distillation terms are live
    assert row["at_layer3"] > 0 and row["at_layer4"] > 0
    assert row["loss"] == pytest.approx(row["ce"] + 500 * row["at_layer3"] + 1000 * row["at_layer4"])
    assert report["config"]["beta_layer4"] == 1000.0
    assert report["teacher_s"] > 0 and report["student_s"] > 0 and report["wall_s"] > 0


def test_the_distillation_changes_the_result():
    model, data = _setup()
    a, _ = FAST(model, data)
    c, _ = NAD(**{**_FAST["nad"], "beta_layer3": 0.0, "beta_layer4": 0.0})(model, data)
    sa, sc = a.state_dict(), c.state_dict()
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_evaluate_is_for_the_report_only_and_opt_in():
    model, data = _setup()
    calls = []

    def evaluate(m):
        calls.append(m.training)
        return {"acc": 0.5, "asr": 0.25, "ra": 0.125}

    _, report = FAST(model, data, evaluate=evaluate)
    assert calls == []
    _, report = NAD(teacher_epochs=1, epochs=2, batch_size=64, eval_every=1)(model, data, evaluate=evaluate)
    assert len(calls) == 1 + 1 + 2  # before, teacher epoch 1, student epochs 1-2
    assert report["before"]["acc"] == 0.5 and report["student_epochs"][1]["asr"] == 0.25
