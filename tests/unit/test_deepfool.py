import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from burn.config import DeepFoolCfg
from burn.deepfool import deepfool, deepfool_dataset

NUM_CLASSES = 6


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors: with the cores busy, a thread pool spends more time waiting than working
    # (measured: 31 s with 2 threads against 6 s with 1 on a loaded 2-core machine).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.1),
        nn.Flatten(), nn.Linear(8 * 4 * 4, NUM_CLASSES),
    )


def synthetic(n: int, seed: int):
    """Images (n, 3, 8, 8) in [0, 1]: a class-dependent pattern plus noise, clipped (so some
    pixels sit exactly at 0 or 1, where clipping matters)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(NUM_CLASSES, 3, 8, 8, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    x = (protos[y] + 0.35 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)
    return x, y


@pytest.fixture(scope="module")
def trained_cnn() -> nn.Module:
    return train_tiny_cnn()


def train_tiny_cnn() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the model's initialization and dropout
        model = tiny_cnn()
        x, y = synthetic(2048, seed=1)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(2)
        model.train()
        for _ in range(300):
            idx = torch.randint(0, len(x), (64,), generator=g)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            xt, yt = synthetic(512, seed=3)
            assert (model(xt).argmax(1) == yt).float().mean() > 0.8  # it learned something
    for p in model.parameters():
        p.grad = None
    return model


def reference_deepfool(model, x, *, num_candidates=10, overshoot=0.02, max_iter=50,
                       clip=(0.0, 1.0), step_eps=1e-4):
    """One sample, one candidate at a time (a fresh forward per gradient): the plain algorithm."""
    model.eval()
    x0 = x.detach().clone()
    with torch.no_grad():
        logits = model(x0[None])[0]
    order = logits.argsort(descending=True).tolist()
    orig = order[0]
    cand = order[:min(num_candidates, len(order))]
    r_tot = torch.zeros_like(x0)
    x_adv = x0.clone()
    steps = 0
    while True:
        with torch.no_grad():
            pred = int(model(x_adv[None])[0].argmax())
        if pred != orig or steps == max_iter:
            break
        best = None
        for c in cand[1:]:
            xa = x_adv.clone().requires_grad_(True)
            out = model(xa[None])[0]
            diff = out[c] - out[orig]
            (w,) = torch.autograd.grad(diff, xa)
            dist = abs(float(diff.detach())) / (float(w.norm()) + 1e-8)
            if best is None or dist < best[0]:
                best = (dist, w)
        dist, w = best
        r_tot = r_tot + (dist + step_eps) * w / (w.norm() + 1e-8)
        x_adv = x0 + (1 + overshoot) * r_tot
        if clip is not None:
            x_adv = x_adv.clamp(*clip)
        steps += 1
    return float((x_adv - x0).norm()), pred, orig, steps, pred != orig


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear_model_matches_closed_form(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 5)).to(dtype)
    x = torch.randn(64, 4, 5, dtype=dtype)  # any shape: flattened to 20
    r = deepfool(model, x, overshoot=0.02, step_eps=0.0, clip=None)

    W, b = model[1].weight.detach(), model[1].bias.detach()
    z = x.flatten(1) @ W.T + b
    orig = z.argmax(1)
    f = z - z.gather(1, orig[:, None])
    w = W[None] - W[orig][:, None]
    dist = f.abs() / w.norm(dim=2)
    dist[torch.arange(64), orig] = float("inf")
    dmin, closest = dist.min(1)

    expected = 1.02 * dmin.double()
    assert r.norms.dtype == torch.float32 and r.norms.shape == (64,)
    # The distance is |z_k - z_orig| / ||w_k - w_orig||. The logit difference is computed in
    # the model's dtype, so its absolute rounding error is a few eps * |z| whatever the
    # distance: near the boundary it is large relative to the distance (float32 on some CPUs:
    # 2e-5 relative, 1.9e-8 absolute). The bound allows 16 eps * max|z| / min||w|| absolute on
    # top of 1e-5 relative; in float64 that absolute part is about 1e-14.
    eps = torch.finfo(dtype).eps
    atol = 16 * eps * float(z.abs().max()) / float(w.norm(dim=2)[w.norm(dim=2) > 0].min())
    torch.testing.assert_close(r.norms.double(), expected, rtol=1e-5, atol=atol)
    assert torch.equal(r.orig_labels, orig)
    assert torch.equal(r.adv_labels, closest)
    assert torch.equal(r.adv_labels, model(r.x_adv).argmax(1))
    assert r.converged.all()
    assert (r.iterations == 1).all()
    assert r.x_adv.shape == x.shape and r.x_adv.dtype == dtype


def test_batched_matches_one_sample_reference(trained_cnn):
    # 48 samples: some steps see a few flips (backward over the whole active batch), others
    # many (the remaining rows are forwarded again); both must match the reference.
    x, _ = synthetic(48, seed=5)
    kw = dict(num_candidates=4, overshoot=0.02, max_iter=50, clip=(0.0, 1.0), step_eps=1e-4)
    r = deepfool(trained_cnn, x, **kw)
    ref = [reference_deepfool(trained_cnn, xi, **kw) for xi in x]
    norms, adv, orig, steps, conv = (torch.tensor(v) for v in zip(*ref))
    torch.testing.assert_close(r.norms.double(), norms.double(), rtol=1e-4, atol=0)
    assert torch.equal(r.adv_labels, adv)
    assert torch.equal(r.orig_labels, orig)
    assert torch.equal(r.iterations, steps)
    assert torch.equal(r.converged, conv)
    assert r.iterations.max() > 1  # the nonlinear, clipped case takes several steps


def test_clipping_keeps_images_in_range_and_labels_flip(trained_cnn):
    x, _ = synthetic(64, seed=5)
    assert (x == 0).any() and (x == 1).any()
    r = deepfool(trained_cnn, x)
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    assert r.converged.all()
    assert (r.adv_labels != r.orig_labels).all()
    with torch.no_grad():
        assert torch.equal(r.adv_labels, trained_cnn(r.x_adv).argmax(1))
        assert torch.equal(r.orig_labels, trained_cnn(x).argmax(1))
    torch.testing.assert_close(r.norms, (r.x_adv - x).flatten(1).norm(dim=1))
    assert json.loads(json.dumps(r.to_dict()))["n"] == 64
    assert r.to_dict()["unconverged"] == 0


def two_class_line() -> nn.Module:
    """logit_0 = 0, logit_1 = x_0 + x_1 - 1.5: class 1 needs x_0 + x_1 > 1.5."""
    m = nn.Linear(2, 2)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        m.bias.copy_(torch.tensor([0.0, -1.5]))
    return m


def test_unconverged_when_clipping_blocks_the_first_step():
    # From (0.9, 0.1) the first step is (0.255, 0.255); x_0 is clipped at 1, so the sum is
    # 1.355 < 1.5 and the label does not flip in one step.
    m = two_class_line()
    x = torch.tensor([[0.9, 0.1]])
    r = deepfool(m, x, max_iter=1)
    assert not r.converged[0] and r.iterations[0] == 1
    assert r.adv_labels[0] == r.orig_labels[0] == 0
    step = 1.02 * (0.5 / 2**0.5 + 1e-4) / 2**0.5
    torch.testing.assert_close(r.x_adv[0], torch.tensor([1.0, 0.1 + step]))
    torch.testing.assert_close(r.norms[0], torch.tensor([0.1, step]).norm())
    assert r.to_dict()["unconverged"] == 1

    full = deepfool(m, x, max_iter=50)
    assert full.converged[0] and 1 < full.iterations[0] < 50 and full.adv_labels[0] == 1
    assert full.x_adv[0, 0] == 1.0 and full.x_adv.sum() > 1.5


def test_candidates_are_fixed_by_the_clean_input():
    # logit_2 = 2 x_1 - 0.8 is third at (0.9, 0.1), so with k = 2 the candidates are {0, 1}.
    # After the first (clipped) step class 2 is the runner-up, but DeepFool keeps stepping
    # towards the boundary of class 1 and crosses that of class 2 on the way.
    m = nn.Linear(2, 3)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 2.0]]))
        m.bias.copy_(torch.tensor([0.0, -1.5, -0.8]))
    x = torch.tensor([[0.9, 0.1]], dtype=torch.float64)
    m = m.double()
    r = deepfool(m, x, num_candidates=2)
    s2, eps = 2**0.5, 1e-4
    r1 = (0.5 / s2 + eps) / s2  # per coordinate, towards class 1
    f = 1.0 + 0.1 + 1.02 * r1 - 1.5  # logit_1 after step 1 (x_0 clipped to 1)
    r2 = (abs(f) / s2 + eps) / s2
    expected = torch.tensor([1.0, 0.1 + 1.02 * (r1 + r2)], dtype=torch.float64)
    torch.testing.assert_close(r.x_adv[0], expected, rtol=1e-7, atol=0)  # 1e-8 guards: ~1e-8
    assert r.iterations[0] == 2 and r.converged[0] and r.adv_labels[0] == 2


def test_model_state_is_restored_and_untouched(trained_cnn):
    model = tiny_cnn()
    model.load_state_dict(trained_cnn.state_dict())
    model.train()
    model[6].eval()  # a mixed state must come back exactly
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    x, _ = synthetic(16, seed=6)
    r = deepfool(model, x)
    assert [m.training for m in model.modules()] == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm running stats included
    assert all(p.grad is None for p in model.parameters())
    # It ran in eval mode: same result as the eval-mode model.
    e = deepfool(trained_cnn, x)
    assert torch.equal(r.adv_labels, e.adv_labels)
    torch.testing.assert_close(r.norms, e.norms)


def test_channels_last_model(trained_cnn):
    cl = tiny_cnn()
    cl.load_state_dict(trained_cnn.state_dict())
    cl = cl.eval().to(memory_format=torch.channels_last)
    assert not cl[0].weight.is_contiguous()
    x, _ = synthetic(16, seed=7)
    a, b = deepfool(trained_cnn, x), deepfool(cl, x)
    assert torch.equal(a.adv_labels, b.adv_labels)
    assert torch.equal(a.iterations, b.iterations)
    torch.testing.assert_close(a.norms, b.norms, rtol=1e-4, atol=0)


def test_dataset_runner_scales_uint8(trained_cnn):
    x, _ = synthetic(20, seed=8)
    u8 = (x * 255).round().to(torch.uint8)
    cfg = DeepFoolCfg(num_candidates=4, max_iter=20)
    r = deepfool_dataset(trained_cnn, u8, cfg, batch_size=8, progress=False)
    ref = deepfool(trained_cnn, u8.float() / 255, num_candidates=4, max_iter=20)
    assert r.x_adv is None
    assert torch.equal(r.adv_labels, ref.adv_labels)
    assert torch.equal(r.orig_labels, ref.orig_labels)
    torch.testing.assert_close(r.norms, ref.norms, rtol=1e-4, atol=0)


def test_empty_input(trained_cnn):
    r = deepfool(trained_cnn, torch.zeros(0, 3, 8, 8))
    assert len(r) == 0 and r.x_adv.shape == (0, 3, 8, 8)
    e = deepfool_dataset(trained_cnn, torch.zeros(0, 3, 8, 8, dtype=torch.uint8), DeepFoolCfg(),
                         batch_size=8, progress=False)
    assert len(e) == 0 and e.to_dict()["unconverged"] == 0

