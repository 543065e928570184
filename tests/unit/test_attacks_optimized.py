"""TrojanNN (a trigger optimized on a clean model) and Input-aware (generators trained with the
classifier): triggers on hand-made images, poison indices and labels, determinism, and that
the optimization does what it is for."""

import shutil

import pytest
import torch

from burn.attacks import InputAware, TrojanNN
from burn.attacks.inputaware import Generator, threshold
from burn.attacks.triggers import load_image
from burn.cache import cache_dir
from burn.data import ImageDataset
from burn.models import create_model


def _dataset(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 200, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return ImageDataset(x, torch.arange(n) % 10, tuple(str(i) for i in range(10)), "toy")


def _model(seed=0):
    torch.manual_seed(seed)
    return create_model("preactresnet18", 10, width=4).eval()


def _fit_trojannn(model):
    return TrojanNN(iters=60).fit(_dataset(8), generator=torch.Generator().manual_seed(0),
                                     model=model)


def test_trojannn_trigger_lies_in_the_apple_mask_and_is_added_with_clipping():
    a = _fit_trojannn(_model())
    init = load_image("trojannn_apple4.png", (32, 32))
    apple = init > 0
    t = a.trigger
    assert t.dtype == torch.uint8 and t.shape == (3, 32, 32)
    assert int(t[~apple].abs().sum()) == 0  # pixels outside the mask never change
    start = init * 255
    assert ((t.float() - start).abs()[apple] <= 0.3 * 255 + 1).all()  # within eps of the start
    x = torch.full((2, 3, 32, 32), 100, dtype=torch.uint8)
    out = a.triggered(x)
    assert torch.equal(out, (x.int() + t.int()).clamp(0, 255).to(torch.uint8))
    white = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    assert torch.equal(a.triggered(white), white)  # clipped, never wrapped


def test_trojannn_raises_the_most_connected_neurons_and_is_deterministic():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = _fit_trojannn(model)
    w = model.linear.weight.abs().sum(0)
    assert sorted(a.fitted["neurons"]) == sorted(w.argsort(descending=True)[:2].tolist())
    err = lambda acts: sum((v - 100.0) ** 2 for v in acts)  # noqa: E731
    assert err(a.fitted["activation_trigger"]) < err(a.fitted["activation_start"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched
    shutil.rmtree(cache_dir() / "runs" / "trojannn")  # optimized again, not read back
    b = _fit_trojannn(model)
    assert torch.equal(a.trigger, b.trigger) and a.fitted == b.fitted
    other = _fit_trojannn(_model(seed=1))
    assert a.key_parts() != other.key_parts()  # the clean model is part of the attacked model's key
    assert "trigger" not in a.describe() and a.describe()["trigger_sha256"]


def test_trojannn_reads_its_trigger_back_for_the_same_clean_model_and_settings(monkeypatch):
    import burn.attacks.trojannn as trojannn

    model = _model()
    a = _fit_trojannn(model)
    monkeypatch.setattr(trojannn, "optimize_trigger", lambda *a, **k: pytest.fail("optimized again"))
    b = _fit_trojannn(model)
    assert torch.equal(a.trigger, b.trigger) and a.fitted == b.fitted
    with pytest.raises(pytest.fail.Exception, match="optimized again"):  # other weights: a new key
        _fit_trojannn(_model(seed=1))
    with pytest.raises(pytest.fail.Exception, match="optimized again"):  # other settings
        TrojanNN(iters=61).fit(_dataset(8), generator=torch.Generator().manual_seed(0), model=model)


def test_trojannn_backdoorbench_neurons_come_from_an_untrained_1000_output_layer():
    from burn.attacks.trojannn import most_connected_inputs, untrained_linear_layer

    model = _model()
    fit = lambda seed: TrojanNN(iters=5, neuron_choice="backdoorbench").fit(  # noqa: E731
        _dataset(8), generator=torch.Generator().manual_seed(seed), model=model)
    a, again, other = fit(0), fit(0), fit(1)
    layer = untrained_linear_layer(model.linear.in_features, 1000, 0)
    assert layer.weight.shape == (1000, model.linear.in_features)
    assert a.fitted["neurons"] == most_connected_inputs(layer, 2).tolist() == again.fitted["neurons"]
    assert other.fitted["neurons"] != a.fitted["neurons"]  # the run's seed draws the layer
    default = TrojanNN(iters=5).fit(_dataset(8), generator=torch.Generator().manual_seed(0),
                                    model=model)
    assert default.key_parts() == (default.fitted["clean_model_sha256"],)  # committed keys kept
    assert a.key_parts() == (a.fitted["clean_model_sha256"], "backdoorbench")
    with pytest.raises(ValueError, match="neuron_choice"):
        TrojanNN(neuron_choice="random").fit(_dataset(8), generator=torch.Generator(), model=model)


def test_trojannn_needs_a_clean_model_and_a_fit():
    with pytest.raises(ValueError, match="clean model"):
        TrojanNN().fit(_dataset(4), generator=torch.Generator())
    with pytest.raises(RuntimeError, match="before fit"):
        TrojanNN().apply_trigger(torch.zeros(1, 3, 32, 32))


def _fit_inputaware():
    ds = _dataset(64)
    return InputAware(mask_epochs=2, width=4).fit(ds, generator=torch.Generator().manual_seed(0)), ds


def test_inputaware_generators_have_backdoorbenchs_shape_and_range():
    g = Generator(3, width=32)
    x = torch.rand(2, 3, 32, 32)
    out = g(x)
    assert out.shape == (2, 3, 32, 32) and 0 < out.min() and out.max() < 1
    assert Generator(1, width=32)(x).shape == (2, 1, 32, 32)
    convs = [m.out_channels for m in g if isinstance(m, torch.nn.Conv2d)]
    assert convs == [32, 32, 64, 64, 128, 128, 128, 128, 64, 64, 32, 32, 3]
    m = threshold(torch.tensor([0.0, 0.5, 1.0]))
    assert m[0] < 1e-4 and abs(m[1] - 0.5) < 1e-4 and m[2] > 1 - 1e-4


def test_inputaware_mask_training_is_deterministic_and_leaves_the_poisoning_generator():
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    a, _ = _fit_inputaware()
    InputAware(mask_epochs=2, width=4).fit(_dataset(64), generator=gen)
    assert torch.equal(gen.get_state(), state)  # poison indices do not depend on whether it ran
    b, _ = _fit_inputaware()
    for p, q in zip(a.mask_net.state_dict().values(), b.mask_net.state_dict().values()):
        assert torch.equal(p, q)
    with pytest.raises(RuntimeError, match="before training"):
        a.apply_trigger(torch.zeros(1, 3, 32, 32))


def test_inputaware_mask_fit_interrupted_resumes_to_the_same_net(tmp_path, monkeypatch):
    """A fit killed after its first epoch resumes from its checkpoint, and ends with the
    weights of an uninterrupted fit; a checkpoint of another length is not resumed from."""
    ds, ckpt = _dataset(64), tmp_path / "fit_checkpoint.pt"
    whole, _ = _fit_inputaware()
    real, calls = InputAware._mask_epoch, []

    def dies_in_epoch_2(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(InputAware, "_mask_epoch", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        InputAware(mask_epochs=2, width=4).fit(ds, generator=torch.Generator().manual_seed(0),
                                               checkpoint=ckpt)
    assert torch.load(ckpt, weights_only=False)["epoch"] == 1
    monkeypatch.setattr(InputAware, "_mask_epoch", real)
    calls.clear()
    resumed = InputAware(mask_epochs=2, width=4).fit(ds, generator=torch.Generator().manual_seed(0),
                                                     checkpoint=ckpt)
    for p, q in zip(whole.mask_net.state_dict().values(), resumed.mask_net.state_dict().values()):
        assert torch.equal(p, q)
    longer = InputAware(mask_epochs=3, width=4)  # the checkpoint holds 2 of 2: not this fit's
    spy = []
    monkeypatch.setattr(InputAware, "_mask_epoch", lambda self, *a, **k: spy.append(1) or real(self, *a, **k))
    longer.fit(ds, generator=torch.Generator().manual_seed(0), checkpoint=ckpt)
    assert len(spy) == 3


def test_inputaware_hook_poisons_a_share_of_each_batch_and_trains_the_pattern_net():
    a, ds = _fit_inputaware()
    hook = a.training_hook(seed=0)
    x, y = ds.images[:40].float() / 255, ds.labels[:40].clone()
    before = [p.clone() for p in hook.pattern.parameters()]
    xb, yb, extra = hook.batch(x, y, torch.Generator().manual_seed(0))
    nb = int(0.1 * 40)
    assert (yb[:nb] == 0).all() and torch.equal(yb[nb:], y[nb:])  # poisoned, then cross + clean
    assert not torch.allclose(xb[:2 * nb], x[:2 * nb]) and torch.equal(xb[2 * nb:], x[2 * nb:])
    assert extra.ndim == 0 and extra > 0
    extra.backward()
    hook.after_step()
    assert any(not torch.equal(p, q) for p, q in zip(before, hook.pattern.parameters()))
    assert all(p.grad is None for p in hook.mask.parameters())  # the mask net is frozen


def test_inputaware_materializes_poison_and_cross_samples_and_stores_its_state():
    a, ds = _fit_inputaware()
    trained = a.training_hook(seed=0).fitted()
    p = trained.poison_train(ds, generator=torch.Generator().manual_seed(0))
    assert p.poison_mask.sum() == p.cross_mask.sum() == round(0.1 * len(ds))
    assert not (p.poison_mask & p.cross_mask).any()
    assert torch.equal(p.labels[p.cross_mask], ds.labels[p.cross_mask])  # cross keeps its label
    # each image gets its own trigger: the changes differ between two poisoned images
    i, j = p.poison_idx[:2]
    d_i = p.images[i].int() - ds.images[i].int()
    d_j = p.images[j].int() - ds.images[j].int()
    assert not torch.equal(d_i, d_j)
    again = InputAware(mask_epochs=2, width=4).with_state(trained.attack_state())
    q = again.poison_train(ds, generator=torch.Generator().manual_seed(0))
    assert torch.equal(p.images, q.images)  # the stored state makes the same sets
    assert all(v.dtype in (torch.float32, torch.int64) for v in trained.attack_state().values())


def test_input_aware_keeps_a_generator_beyond_float16s_range():
    """G's BatchNorm running variances pass float16's 65,504 after training; as stored they
    stay finite and G makes the same trigger again."""
    from burn.attacks.inputaware import InputAware

    a, ds = _fit_inputaware()
    trained = a.training_hook(seed=0).fitted()
    with torch.no_grad():
        for m in trained.pattern_net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.mul_(2e5)  # a trained G's scale (1e5 on the cpu preset)
    again = InputAware(mask_epochs=2, width=4).with_state(trained.attack_state())
    x = ds.images[:8].float() / 255.0
    assert torch.equal(trained.apply_trigger(x), again.apply_trigger(x))
    assert InputAware().key_parts() == ("generators float32",)


def test_inputaware_diversity_never_compares_an_image_with_itself():
    """Every draw pairs poisoned image i with another image; identical images would give a
    zero distance, whose square root has a NaN gradient (it stopped a real run)."""
    from burn.attacks.inputaware import diversity

    a, ds = _fit_inputaware()
    hook = a.training_hook(seed=0)
    x = torch.rand(40, 3, 32, 32)
    x[20:] = x[:20]  # duplicates in the batch are fine; the pairing must not be i with i
    for seed in range(60):
        xb, yb, extra = hook.batch(x[:20], torch.zeros(20, dtype=torch.long),
                                   torch.Generator().manual_seed(seed))
        assert torch.isfinite(extra) and extra > 0
    same = torch.rand(2, 3, 8, 8, requires_grad=True)
    d = diversity(same, same.detach(), same, same.detach())
    d.backward()
    assert torch.isfinite(same.grad).all()
