import torch
import torch.nn.functional as F
from defense_fixtures import FAST, calibrated_model, random_data
from torch import nn

from burn.defenses.ibau import IBAU

SMALL = IBAU(**FAST["ibau"])


def _data(n=200):
    return random_data(n)


_model = calibrated_model


def test_ibau_keeps_batchnorm_statistics_and_reports_rounds():
    model, data = _model(), _data()
    purified, report = SMALL(model, data)
    # eval mode throughout: BatchNorm's running statistics are the attacked model's
    assert torch.equal(purified.layers[0].bn1.running_mean, model.layers[0].bn1.running_mean)
    assert report["delta_shape"] == [3, 32, 32] and len(report["rounds"]) == 2
    for row in report["rounds"]:
        assert row["delta_l2"] > 0 and row["delta_linf"] > 0
        assert row["delta_l2_pixels"] < row["delta_l2"]  # pixel units = normalized units * std < 1
        assert 0.0 <= row["delta_fooled_share"] <= 1.0
        assert row["outer_loss"] > 0 and row["perturb_s"] >= 0 and row["unlearn_s"] >= 0


def test_ibau_calls_evaluate_only_when_asked():
    model, data = _model(), _data(64)
    calls = []

    def evaluate(m):
        calls.append(m.training)
        return {"acc": 0.5, "asr": 0.25, "ra": 0.125}

    cfg = IBAU(rounds=2, fixed_point_steps=1, batch_size=64)
    _, report = cfg(model, data, evaluate=evaluate)
    assert calls == [] and "acc" not in report["rounds"][0]
    _, report = IBAU(rounds=2, fixed_point_steps=1, batch_size=64, eval_every=1)(model, data, evaluate=evaluate)
    assert calls == [False, False] and report["rounds"][1]["asr"] == 0.25


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x.flatten(1))))


def test_hypergradient_matches_explicit_jacobians():
    """The parameter gradients of one unlearning step equal dL_out/dtheta + (dPhi/dtheta)^T v,
    v = sum_{k<K} (J^T)^k dL_out/ddelta, with J and dPhi/dtheta as full Jacobians."""
    torch.manual_seed(0)
    net = _Tiny().double()
    cfg = IBAU(fixed_point_steps=4, patch_share=0.25, inner_lr=0.1, delta_reg=0.001)
    x0, y0 = torch.rand(8, 3, 2, 2, dtype=torch.double), torch.randint(0, 3, (8,))
    xb, yb = torch.rand(8, 3, 2, 2, dtype=torch.double), torch.randint(0, 3, (8,))
    delta = torch.randn(3, 2, 2, dtype=torch.double)
    scale = torch.ones(1, 1, 1, 1, dtype=torch.double)
    params = list(net.parameters())
    cfg._unlearn_step(net, params, delta, (x0, y0), (xb, yb), scale, torch.Generator().manual_seed(3))
    got = [p.grad.clone() for p in params]

    rows = torch.randperm(8, generator=torch.Generator().manual_seed(3))[:2]
    mask = torch.zeros(8, 1, 1, 1, dtype=torch.double)
    mask[rows] = 1.0
    names = [n for n, _ in net.named_parameters()]
    theta = {n: p.detach() for n, p in net.named_parameters()}
    call = torch.func.functional_call

    def outer(th, d):
        return F.cross_entropy(call(net, th, (xb + mask * d,)), yb)

    def phi(th, d):
        inner = lambda dd: -F.cross_entropy(call(net, th, (x0 + dd,)), y0) + 0.001 * dd.pow(2).sum()
        return d - 0.1 * torch.func.grad(inner)(d)

    g_theta, g_delta = torch.func.grad(outer, argnums=(0, 1))(theta, delta)
    jac_delta = torch.func.jacrev(phi, argnums=1)(theta, delta).reshape(12, 12)
    jac_theta = torch.func.jacrev(phi, argnums=0)(theta, delta)
    v, term = torch.zeros(12, dtype=torch.double), g_delta.reshape(12)
    for _ in range(4):
        v = v + term
        term = jac_delta.T @ term
    for n, g in zip(names, got):
        want = g_theta[n] + torch.einsum("i,i...->...", v, jac_theta[n].reshape(12, *g.shape))
        torch.testing.assert_close(g, want, rtol=1e-8, atol=1e-10)
