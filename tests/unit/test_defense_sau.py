import pytest
import torch
import torch.nn.functional as F
from defense_fixtures import FAST, calibrated_model, random_data

from burn.defenses.base import frozen_copy, trainable_copy
from burn.defenses.sau import SAU, js_divergence, project, shared_label_loss

SMALL = SAU(**FAST["sau"])
SHARES = ("fooled", "fooled_ref", "common", "shared", "pgd_fooled", "pgd_fooled_ref",
          "pgd_common", "pgd_shared")


def _data(n=160):
    return random_data(n)


_model = calibrated_model


def test_sau_keeps_batchnorm_statistics_and_reports_epochs():
    model, data = _model(), _data()
    purified, report = SMALL(model, data)
    # eval mode throughout (train_mode=False): BatchNorm's running statistics are unchanged
    assert torch.equal(purified.layers[0].bn1.running_mean, model.layers[0].bn1.running_mean)
    assert [r["epoch"] for r in report["epochs"]] == [1, 2]
    for row in report["epochs"]:
        assert all(0.0 <= row[k] <= 1.0 for k in SHARES)
        assert row["common"] <= min(row["fooled"], row["fooled_ref"]) and row["shared"] <= row["common"]
        assert 1.0 <= row["pgd_steps"] <= 3.0
        assert row["loss"] == pytest.approx(row["loss_clean"] + row["loss_sar"])
        assert row["loss_clean"] > 0 and row["loss_sar"] > 0 and row["epoch_s"] >= 0
        assert row["pgd_shared"] > 0 and row["fooled_ref"] > 0


def test_sau_calls_evaluate_only_when_asked_and_train_mode_moves_batchnorm():
    model, data = _model(), _data(64)
    calls = []

    def evaluate(m):
        calls.append(m.training)
        return {"acc": 0.5, "asr": 0.25, "ra": 0.125}

    _, report = SAU(epochs=2, batch_size=64, pgd_steps=1)(model, data, evaluate=evaluate)
    assert calls == [] and "acc" not in report["epochs"][0]
    purified, report = SAU(epochs=2, batch_size=64, pgd_steps=1, eval_every=2,
                           train_mode=True)(model, data, evaluate=evaluate)
    assert calls == [False] and report["epochs"][1]["asr"] == 0.25
    assert not torch.equal(purified.layers[0].bn1.running_mean, model.layers[0].bn1.running_mean)
    with pytest.raises(ValueError):
        SAU(norm_type="L3")(model, data)


def test_shared_pgd_stays_in_the_ball():
    model, data = _model(), _data(32)
    x, y = data.clean.float(), data.clean.labels
    for init in ("max", "random", "zero"):
        cfg = SAU(pgd_init=init, pgd_steps=2)
        delta, row = cfg._shared_pgd(trainable_copy(model).eval(), frozen_copy(model), x, y,
                                     torch.Generator().manual_seed(0))
        assert delta.shape == x.shape and not delta.requires_grad
        assert float(delta.abs().max()) <= 0.2 + 1e-7 and float(delta.abs().max()) > 0
        assert set(row) == {"pgd_fooled", "pgd_fooled_ref", "pgd_common", "pgd_shared", "pgd_steps"}
    # the same model on both sides: every image that fools one fools the other with the same label
    ref = frozen_copy(model)
    _, row = SAU()._shared_pgd(ref, ref, x, y, torch.Generator())
    assert row["pgd_fooled"] == row["pgd_common"] == row["pgd_shared"]


def test_projection_and_losses():
    d = torch.tensor([[[[0.5, -0.3, 0.1, 0.0]]], [[[0.01, 0.0, 0.0, 0.0]]]])
    assert torch.equal(project(d, "L_inf", 0.2), d.clamp(-0.2, 0.2))
    p2 = project(d, "L2", 0.2)
    assert float(p2[0].norm()) == pytest.approx(0.2) and torch.equal(p2[1], d[1])
    assert float(project(d, "L1", 0.2)[0].abs().sum()) == pytest.approx(0.2)
    assert torch.equal(project(d, "Reg", 0.2), d)

    a, b = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, -1.0]])
    assert float(js_divergence(a, a)) == pytest.approx(0.0, abs=1e-7)
    assert float(js_divergence(a, b)) == pytest.approx(float(js_divergence(b, a)))
    assert 0 < float(js_divergence(a, b)) < float(torch.log(torch.tensor(2.0)))

    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    ref_label = torch.tensor([0, 1, 2])
    sel = torch.tensor([True, True, False])
    p = F.softmax(logits, 1)[[0, 1], [0, 1]]
    want = -torch.log(1 - p).sum() / 3  # the two clamped forms agree away from the clamps
    assert float(shared_label_loss(logits, ref_label, sel, 3)) == pytest.approx(float(want), rel=1e-4)
    assert float(shared_label_loss(logits, ref_label, torch.zeros(3, dtype=torch.bool), 3)) == 0.0
