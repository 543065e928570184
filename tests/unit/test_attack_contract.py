"""The contract of every attack in ``burn.attacks.ATTACKS``, checked on each one for being
registered, on 200 random images: how many samples it poisons and from which pool, the labels
it gives them, triggered images within [0, 255] as uint8, the rest of the training set as it
was, a seeded draw, and a test set for the ASR without the target class."""

import dataclasses

import pytest
import torch

from burn.attacks import ATTACKS, NoAttack
from burn.data import ImageDataset
from burn.models import create_model
from burn.resources import StoredResource

TARGET = 3
RATE = 0.25
RATE_CLEAN_LABEL = 0.05  # 10 of the 20 target-class images
# Tiny settings of the attacks that fit a trigger or a network; the others run with defaults.
FAST = {"trojannn": {"iters": 5}, "inputaware": {"mask_epochs": 1, "width": 4},
        "lc": {"steps": 2}}


def _dataset(n: int = 200, seed: int = 0) -> ImageDataset:
    """Random uint8 images over the whole range (so clipping shows), labels 0-9 in turn."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return ImageDataset(x, torch.arange(n) % 10, tuple(str(i) for i in range(10)), "toy")


def _untrained(attack) -> dict:
    """The attack's resources as untrained networks (what they compute is their own tests')."""
    torch.manual_seed(0)
    return {name: StoredResource(res.network(10, 32, "cifar10").eval(), f"test-{name}", {})
            for name, res in attack.resources().items()}


@pytest.fixture(scope="module", params=sorted(ATTACKS))
def attack(request):
    """The attack ready to poison, as the attack stage makes it: fitted (on a clean model
    where it needs one, with its resources) and, where it trains with the classifier, after
    its training hook. A clean-label attack poisons half its pool (the target class)."""
    cls = ATTACKS[request.param]
    a = cls(target=TARGET, rate=RATE_CLEAN_LABEL if cls.clean_label else RATE,
            **FAST.get(request.param, {}))
    torch.manual_seed(0)
    model = create_model("preactresnet18", 10, width=4).eval() if a.needs_clean_model else None
    a = a.fit(_dataset(), generator=torch.Generator().manual_seed(0), model=model,
              resources=_untrained(a))
    return a.training_hook(seed=0).fitted() if a.custom_training else a


@pytest.mark.parametrize("pool", ["all", "non_target"])
def test_poisons_its_share_of_its_pool_with_its_labels(attack, pool):
    attack = dataclasses.replace(attack, pool=pool)
    ds = _dataset()
    images, labels = ds.images.clone(), ds.labels.clone()
    p = attack.poison_train(ds, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ds.images, images) and torch.equal(ds.labels, labels)  # input untouched
    idx, true = p.poison_idx, p.original_labels
    assert torch.equal(true, labels)
    assert len(idx) == (0 if isinstance(attack, NoAttack) else round(attack.rate * len(ds)))
    if attack.clean_label:
        assert (true[idx] == TARGET).all()
    elif pool == "non_target":
        assert (true[idx] != TARGET).all()
    elif len(idx):  # BackdoorBench's pool: target-class images carry the trigger too
        assert (true[idx] == TARGET).any() and (true[idx] != TARGET).any()
    if attack.clean_label:  # every label stays true
        assert torch.equal(p.labels, true)
    else:  # dirty-label: the poison is relabeled to the target, every other label stays true
        assert (p.labels[idx] == TARGET).all()
        assert torch.equal(p.labels[~p.poison_mask], true[~p.poison_mask])
    # triggered images are uint8 (within [0, 255] by type) and the rest are as they were
    assert p.images.dtype == torch.uint8 and p.images.shape == images.shape
    assert torch.equal(p.images[idx], attack.triggered(attack.poison_source(ds, idx)))
    changed = p.poison_mask if p.cross_mask is None else p.poison_mask | p.cross_mask
    assert torch.equal(p.images[~changed], images[~changed])
    assert len(idx) == 0 or not torch.equal(p.images[idx], images[idx])


def test_the_draw_is_seeded(attack):
    ds = _dataset()
    a, b, c = (attack.poison_train(ds, generator=torch.Generator().manual_seed(s)) for s in (5, 5, 6))
    assert torch.equal(a.poison_mask, b.poison_mask) and torch.equal(a.images, b.images)
    # another seed draws other samples (the clean run draws none)
    assert torch.equal(a.poison_mask, c.poison_mask) == isinstance(attack, NoAttack)


def test_trigger_stays_in_range(attack):
    for value in (0.0, 1.0):  # black and white images: an additive trigger must clip
        x = torch.full((2, 3, 32, 32), value)
        out = attack.apply_trigger(x)
        assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0
        assert torch.equal(x, torch.full_like(x, value))  # input untouched


def test_asr_test_set_is_the_non_target_images_with_the_trigger(attack):
    ds = _dataset(100, seed=1)
    pt = attack.poison_test(ds)
    keep = ds.labels != TARGET
    assert len(pt) == int(keep.sum()) and (pt.labels != TARGET).all()
    assert torch.equal(pt.labels, ds.labels[keep])  # the true labels, for RA
    assert pt.images.dtype == torch.uint8
    assert torch.equal(pt.images, attack.triggered(ds.images[keep]))
