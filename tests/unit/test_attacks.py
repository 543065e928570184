import pytest
import torch

from burn.attacks import ATTACKS, BadNets, Blended, NoAttack, make_attack
from burn.attacks.triggers import load_image
from burn.config import AttackCfg
from burn.data import ImageDataset


def _dataset(n=200, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 200, (n, 3, size, size), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 10
    return ImageDataset(x, y, tuple(str(i) for i in range(10)), "toy")


def test_badnets_trigger_is_the_3x3_white_bottom_right_patch():
    x = torch.zeros(2, 3, 32, 32)
    out = BadNets().apply_trigger(x)
    assert (out[..., -3:, -3:] == 1).all()
    assert out[..., :-3, :].sum() == 0 and out[..., -3:, :-3].sum() == 0
    assert int((out > 0).sum()) == 2 * 27


def test_badnets_keeps_other_pixels_and_resizes_for_64px():
    x = torch.rand(1, 3, 64, 64) * 0.5
    out = BadNets().apply_trigger(x)
    changed = (out != x).any(1)[0]
    assert changed[-6:, -6:].all() and changed.sum() == 36  # nearest resize: 6x6 patch
    assert torch.equal(out[..., :-6, :], x[..., :-6, :])


def test_blended_is_alpha_mix_with_hello_kitty():
    x = torch.rand(3, 3, 32, 32)
    t = load_image("blended_hello_kitty.jpeg", (32, 32))
    out = Blended(alpha=0.2).apply_trigger(x)
    torch.testing.assert_close(out, 0.8 * x + 0.2 * t)
    assert t.shape == (3, 32, 32) and 0 <= t.min() and t.max() <= 1 and t.std() > 0.05


def test_blended_test_images_round_the_mix_to_uint8():
    ds = _dataset(100)
    pt = Blended(target=2).poison_test(ds)
    keep = ds.labels != 2
    expected = (0.8 * ds.images[keep].float() / 255 + 0.2 * load_image("blended_hello_kitty.jpeg", (32, 32)))
    assert (pt.images.float() / 255 - expected).abs().max() <= 0.5 / 255 + 1e-6


def test_clean_run_measures_badnets_trigger():
    ds = _dataset(50)
    pt = NoAttack().fit(ds, generator=torch.Generator()).poison_test(ds)
    assert (pt.images[..., -3:, -3:] == 255).all()


def test_registry_builds_from_config():
    assert set(ATTACKS) >= {"clean", "badnets", "blended"}
    a = make_attack(AttackCfg(name="blended", target=1, rate=0.05, params={"alpha": 0.3}))
    assert a == Blended(target=1, rate=0.05, alpha=0.3)
    assert "alpha=0.3" in repr(a)


def test_low_frequency_adds_backdoorbenchs_trigger_and_clips():
    from burn.attacks import LowFrequency
    from burn.attacks.lf import load_additive

    ds = _dataset(n=20)
    lf = LowFrequency().fit(ds, generator=torch.Generator().manual_seed(0))
    assert lf.trigger_file == "lowFrequency_cifar10_preactresnet18_0_255.npy"
    t = load_additive(lf.trigger_file)
    assert t.shape == (3, 32, 32) and t.min() >= 0 and t.max() <= 51 / 255 + 1e-7
    assert float(t[1].abs().max()) == 0.0  # BackdoorBench's CIFAR-10 file: green channel all zero
    out = lf.triggered(ds.images)  # uint8 in, uint8 out: exactly clip(x + t, 0, 255)
    expected = (ds.images.int() + (t * 255).round().int()).clamp(0, 255).to(torch.uint8)
    assert torch.equal(out, expected)
    white = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    assert torch.equal(lf.triggered(white), white)  # clipped, never wrapped
    with pytest.raises(RuntimeError, match="before fit"):
        LowFrequency().apply_trigger(torch.zeros(1, 3, 32, 32))


def test_clean_model_measures_the_trigger_of_a_fitted_attack():
    ds = _dataset(n=20)
    clean = make_attack(AttackCfg(name="clean", params={"trigger": "lf"})).fit(
        ds, generator=torch.Generator().manual_seed(0))
    p = clean.poison_train(ds, generator=torch.Generator().manual_seed(0))
    assert not p.poison_mask.any() and torch.equal(p.images, ds.images)
    x = torch.zeros(1, 3, 32, 32)
    assert torch.equal(clean.apply_trigger(x), ATTACKS["lf"]().fit(ds, generator=None).apply_trigger(x))
