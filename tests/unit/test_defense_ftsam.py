import copy

import pytest
import torch
import torch.nn.functional as F
from defense_fixtures import FAST as _FAST
from defense_fixtures import random_data, tiny_model

from burn.defenses.ftsam import FTSAM, sam_perturbation, sam_step, smooth_cross_entropy


def _setup(n=200):
    return tiny_model(), random_data(n)


FAST = FTSAM(**_FAST["ftsam"])


def _batch(n=16):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % 10


def test_smooth_cross_entropy_is_backdoorbenchs():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(5, 10, generator=g), torch.tensor([0, 3, 9, 3, 1])
    torch.testing.assert_close(smooth_cross_entropy(logits, y, 0.0), F.cross_entropy(logits, y))
    q = torch.full((5, 10), 0.1 / 9)
    q[torch.arange(5), y] = 0.9
    expected = F.kl_div(F.log_softmax(logits, 1), q, reduction="none").sum(1).mean()
    torch.testing.assert_close(smooth_cross_entropy(logits, y, 0.1), expected)


@pytest.mark.parametrize("adaptive", [True, False])
def test_sam_perturbation_has_radius_rho(adaptive):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(4, 3, generator=g), torch.randn(7, generator=g)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    e = sam_perturbation(params, rho=2.0, adaptive=adaptive)
    scaled = [ei / p.abs() if adaptive else ei for ei, p in zip(e, params)]
    norm = torch.linalg.vector_norm(torch.cat([s.flatten() for s in scaled]))
    assert float(norm) == pytest.approx(2.0, rel=1e-5)
    for ei, p in zip(e, params):  # an ascent direction, per coordinate along the gradient
        assert (ei * p.grad >= 0).all()


def test_sam_step_with_rho_zero_is_a_plain_step_and_rho_changes_it():
    model, _ = _setup()
    x, y = _batch()
    ref = copy.deepcopy(model).train()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    smooth_cross_entropy(ref(x), y, 0.1).backward()
    opt.step()
    plain = copy.deepcopy(model).train()
    sam_step(plain, torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4),
             x, y, rho=0.0)
    sr, sp = ref.state_dict(), plain.state_dict()
    # BN running stats included: the second pass leaves them alone (only its batch counter
    # ticks, as in BackdoorBench)
    for k in sr:
        if k.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(sp[k], sr[k], atol=1e-6, rtol=1e-5)
    sharp = copy.deepcopy(model).train()
    sam_step(sharp, torch.optim.SGD(sharp.parameters(), lr=0.1), x, y, rho=2.0)
    ss = sharp.state_dict()
    assert any(not torch.allclose(ss[k], sr[k]) for k in sr if ss[k].is_floating_point())
    for k in sr:
        if "running" in k:
            torch.testing.assert_close(ss[k], sr[k])


def test_sam_step_restores_the_weights_exactly():
    model, _ = _setup()
    x, y = _batch()
    before = {k: v.clone() for k, v in model.named_parameters()}
    model.train()
    sam_step(model, torch.optim.SGD(model.parameters(), lr=0.0), x, y, rho=2.0)
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_ftsam_reports_its_epochs():
    _, report = FAST(*_setup())
    row = report["epochs"][0]
    assert set(row) >= {"epoch", "loss", "train_acc", "lr_end", "epoch_s"}
    assert row["loss"] > 0 and 0 <= row["train_acc"] <= 1
    assert report["config"]["rho"] == 2.0 and report["wall_s"] > 0


def test_cosine_schedule_is_stepped_per_batch():
    model, data = _setup()  # 200 images, batch 64: 4 steps an epoch
    _, report = FTSAM(epochs=2, batch_size=64, t_max_steps=4)(model, data)
    assert report["epochs"][0]["lr_end"] == pytest.approx(0.0, abs=1e-12)
    assert report["epochs"][1]["lr_end"] == pytest.approx(0.01)


def test_ftsam_evaluate_is_opt_in():
    model, data = _setup()
    calls = []

    def evaluate(m):
        calls.append(m.training)
        return {"acc": 0.5, "asr": 0.25, "ra": 0.125}

    FAST(model, data, evaluate=evaluate)
    assert calls == []
    _, report = FTSAM(**_FAST["ftsam"], eval_every=1)(model, data, evaluate=evaluate)
    assert len(calls) == 2 and report["epochs"][0]["asr"] == 0.25 and "before" in report
