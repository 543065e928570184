"""SSBA and its StegaStamp encoder: the networks' shapes, BackdoorBench's image-loss schedule,
that training lowers the bit loss and is seeded, the trigger's plumbing (one secret, shape,
range, batching), and the attack fitted through the pipeline on the smoke preset with its
encoder stored as a keyed resource (and a damaged one refused)."""

import dataclasses
import json
import shutil

import pytest
import torch

from burn.attacks import ATTACKS, SSBA
from burn.cache import DamagedFileError
from burn.data import ImageDataset
from burn.resources import RESOURCES, StoredResource
from burn.stegastamp import (StegaStamp, StegaStampCfg, l2_weight, measure_stegastamp,
                             train_step)


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def _dataset(n: int = 32, seed: int = 0) -> ImageDataset:
    return ImageDataset(_images(n, seed=seed), torch.arange(n) % 10,
                        tuple(str(i) for i in range(10)), "toy")


def test_encoder_and_decoder_shapes_and_range():
    torch.manual_seed(0)
    for size, residual in ((32, False), (64, True), ((48, 32), False)):
        h, w = (size, size) if isinstance(size, int) else size
        net = StegaStamp(12, size, residual=residual)
        x, secret = torch.rand(2, 3, h, w), torch.randint(0, 2, (2, 12)).float()
        with torch.no_grad():
            encoded, logits = net(x, secret)
        assert encoded.shape == x.shape and logits.shape == (2, 12)
        assert 0.0 <= float(encoded.min()) and float(encoded.max()) <= 1.0
    with pytest.raises(ValueError, match="divisible by 16"):
        StegaStamp(12, 40)


def test_image_loss_waits_then_ramps_as_backdoorbench():
    ramp = dict(weight=10.0, await_steps=1000, ramp=3000)
    assert l2_weight(-1, **ramp) == 0.0  # bit accuracy has not passed 0.9 yet
    assert l2_weight(0, **ramp) == l2_weight(1000, **ramp) == 0.0
    assert l2_weight(2500, **ramp) == pytest.approx(5.0)
    assert l2_weight(4000, **ramp) == l2_weight(10 ** 6, **ramp) == 10.0


def test_a_few_training_steps_lower_the_bit_loss():
    torch.manual_seed(0)
    net = StegaStamp(16, 16)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16, generator=g)
    secret = torch.randint(0, 2, (8, 16), generator=g).float()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = [train_step(net, opt, x, secret, l2_w=0.0)["bce"] for _ in range(10)]
    assert losses[-1] < losses[0] - 0.02


def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_the_resource_trains_deterministically_and_is_registered():
    assert RESOURCES["stegastamp"] is StegaStampCfg
    cfg = StegaStampCfg(secret_length=8, epochs=1, batch_size=16)
    ds = _dataset(32)
    a, b, c = (_state(cfg.train(ds, seed=s, device=torch.device("cpu"), progress=False))
               for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert a["trained"].tolist() == [2, -1]  # 2 steps; the image loss never switched on


def test_measure_reads_bits_back_from_the_rounded_images():
    torch.manual_seed(0)
    net = StegaStamp(8, 32, residual=True).eval()
    m = measure_stegastamp(net, _images(10))
    assert m["measured_images"] == 10 and 0.0 <= m["bit_accuracy"] <= 1.0
    assert 0 <= m["linf_mean"] <= m["linf_max"] <= 255 and m["psnr_min"] <= m["psnr_mean"]
    assert StegaStampCfg(secret_length=8).measure(net, None, _dataset(10), device="cpu")[
        "l2_on_step"] == -1


def _faint_ssba(secret_seed: int = 0) -> SSBA:
    """SSBA with a residual encoder whose last layer is scaled down: a faint trigger."""
    torch.manual_seed(0)
    net = StegaStamp(8, 32, residual=True)
    with torch.no_grad():
        net.encoder.out.weight.mul_(0.01)
        net.encoder.out.bias.zero_()
    stored = StoredResource(net.eval(), "k", {"bit_accuracy": 0.5})
    return SSBA(secret_length=8, secret_seed=secret_seed, min_bit_accuracy=0.0).fit(
        _dataset(4), generator=torch.Generator(), resources={"stegastamp": stored})


def test_apply_trigger_hides_one_secret_and_keeps_shape_and_range():
    a = _faint_ssba()
    x = _images(260).float() / 255.0  # more than one encoder batch
    before = x.clone()
    out = a.apply_trigger(x)
    assert torch.equal(x, before)  # input untouched
    assert out.shape == x.shape and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    change = (out - x).abs()
    assert 0.0 < float(change.max()) < 0.05  # slight, but present
    enc = a.encoder(x[:5], a.secret().expand(5, -1))
    assert torch.allclose(out[:5], enc.clamp(0, 1), atol=1e-6)  # the one secret, per image
    assert torch.allclose(a.apply_trigger(x[256:]), out[256:], atol=1e-6)  # batching
    assert not torch.equal(_faint_ssba(secret_seed=1).apply_trigger(x[:5]), out[:5])
    assert torch.equal(a.secret(), SSBA(secret_length=8).secret()) and set(
        a.secret().tolist()) == {0.0, 1.0}


def test_ssba_needs_its_encoder():
    with pytest.raises(RuntimeError, match="before fit"):
        SSBA().apply_trigger(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="StegaStamp encoder"):
        SSBA().fit(_dataset(4), generator=torch.Generator())
    assert ATTACKS["ssba"] is SSBA and not SSBA.clean_label and SSBA().rate == 0.1


# ------------------------------------------------------------- through the pipeline (smoke)
def _smoke(root):
    from burn.config import load_preset
    from burn.experiment import prepare_data
    from burn.runtime import Runtime

    cfg = load_preset("smoke", {"attack": {"name": "ssba"}})
    return cfg, prepare_data(cfg, Runtime(device="cpu", results_root=str(root), progress=False))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    cfg, out = _smoke(root)
    return root, cfg, out


def test_the_smoke_attack_poisons_ten_percent_with_dirty_labels(smoke_run):
    root, cfg, (attack, poisoned, test, poisoned_test) = smoke_run
    assert isinstance(attack, SSBA) and attack.epochs == 1 and attack.secret_length == 8
    n = len(poisoned)
    idx = poisoned.poison_idx
    assert len(idx) == round(0.1 * n)
    assert (poisoned.labels[idx] == cfg.attack.target).all()
    assert (poisoned.original_labels[idx] != cfg.attack.target).any()  # relabeled
    clean = ~poisoned.poison_mask
    assert torch.equal(poisoned.labels[clean], poisoned.original_labels[clean])
    assert poisoned.images.dtype == torch.uint8
    assert (poisoned.labels[clean] == cfg.attack.target).sum() < clean.sum()
    assert len(poisoned_test) == int((test.labels != cfg.attack.target).sum())


def test_the_encoder_is_a_stored_keyed_resource(smoke_run):
    root, cfg, (attack, poisoned, *_) = smoke_run
    (pt,) = (root / "smoke" / cfg.data.dataset / "resources").glob("stegastamp-*.pt")
    record = json.loads(pt.with_suffix(".json").read_text())
    key = record["key"]
    assert pt.name == f"stegastamp-{key}.pt" and attack.key_parts() == (key,)
    assert record["config"]["secret_length"] == 8 and record["train_steps"] == 7  # 400 / 64
    d = attack.describe()
    assert d["stegastamp_key"] == key and "encoder" not in d
    for k in ("bit_accuracy", "psnr_mean", "linf_max"):
        assert d[f"stegastamp_{k}"] == record[k]
    # read back, not retrained: the same poisoned set
    _, (again, poisoned2, *_) = _smoke(root)
    assert again.key_parts() == (key,) and torch.equal(poisoned2.images, poisoned.images)
    assert dataclasses.replace(attack, secret_seed=1) != attack  # the secret is in the config


def test_a_damaged_stored_encoder_is_refused_by_name(smoke_run, tmp_path):
    root, *_ = smoke_run
    shutil.copytree(root, tmp_path / "r")
    (pt,) = (tmp_path / "r").rglob("stegastamp-*.pt")
    pt.write_bytes(b"not a torch file")
    with pytest.raises(DamagedFileError, match=pt.name):
        _smoke(tmp_path / "r")


def test_an_encoder_that_never_learned_is_refused():
    from burn.attacks import SSBA
    from burn.data import ImageDataset
    from burn.resources import StoredResource
    from burn.stegastamp import StegaStampCfg

    net = StegaStampCfg(secret_length=8).network(10, 32, "cifar10")
    ds = ImageDataset(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.arange(4),
                      tuple("abcdefghij"), "toy")
    stored = StoredResource(net.eval(), "k", {"bit_accuracy": 0.49})
    with pytest.raises(ValueError, match="did not learn to hide its secret.*0.490"):
        SSBA(secret_length=8).fit(ds, generator=torch.Generator(), resources={"stegastamp": stored})
    ok = SSBA(secret_length=8, min_bit_accuracy=0.0).fit(
        ds, generator=torch.Generator(), resources={"stegastamp": stored})
    assert ok.encoder is not None


def test_kaiming_init_is_an_option_that_keeps_the_stored_key():
    from burn.config import load_preset
    from burn.resources import resource_key

    data = load_preset("smoke").data
    assert resource_key(StegaStampCfg(), data, 0) == resource_key(StegaStampCfg(init="pytorch"), data, 0)
    assert resource_key(StegaStampCfg(init="kaiming"), data, 0) != resource_key(StegaStampCfg(), data, 0)
    from burn.stegastamp import _seeded

    make = lambda: StegaStampCfg(secret_length=8).network(10, 32)  # noqa: E731
    a, b = _seeded(make, 0, "kaiming"), _seeded(make, 0, "kaiming")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    default = _seeded(make, 0)
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), default.state_dict().values()))


def test_a_stored_models_encoded_sets_are_made_once_then_read_from_the_run_cache(smoke_run,
                                                                                monkeypatch):
    from burn.experiment import poison, stored_poison

    _, cfg, (attack, *_) = smoke_run
    train, test = _dataset(40), _dataset(20, seed=1)
    first = stored_poison(cfg, attack, train, test, "k-sets-test")
    want = poison(cfg, attack, train, test)
    monkeypatch.setattr(SSBA, "apply_trigger", lambda *a: pytest.fail("encoded again"))
    again = stored_poison(cfg, attack, train, test, "k-sets-test")
    for got in (first, again):
        assert torch.equal(got[0].images, want[0].images)
        assert torch.equal(got[0].poison_mask, want[0].poison_mask)
        assert torch.equal(got[0].original_labels, want[0].original_labels)
        assert torch.equal(got[1].images, want[1].images) and got[1].name == want[1].name
    with pytest.raises(pytest.fail.Exception, match="encoded again"):  # another model: made anew
        stored_poison(cfg, attack, train, test, "k-other-model")
