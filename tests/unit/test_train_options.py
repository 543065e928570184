"""Training options for a GPU: ``train.tf32`` (in the key, omitted at its default) and the
runtime's ``compile`` (never in the key; the same weights up to rounding)."""

import dataclasses

import pytest
import torch

from burn.config import load_preset
from burn.experiment import build_model
from burn.keys import attack_key
from burn.runtime import Runtime
from burn.train import tf32_enabled, train_model


def test_tf32_enters_the_key_only_when_set():
    cfg = load_preset("smoke")
    assert not cfg.train.tf32
    tf32 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, tf32=True))
    assert attack_key(cfg, "x") != attack_key(tf32, "x")
    assert load_preset("paper").train.tf32  # the paper preset trains as BackdoorBench's GPU runs


def test_constant_lr_schedule_keeps_the_rate_and_enters_the_key_only_when_set():
    cfg = load_preset("smoke", {"train": {"epochs": 2}})
    const = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr_schedule="constant"))
    assert attack_key(cfg, "x") != attack_key(const, "x")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (64, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(64) % 10
    rates = {}
    for c in (cfg, const):
        model = build_model(c, 10)
        rates[c.train.lr_schedule] = [h["lr"] for h in train_model(model, x, y, c.train,
                                                                    progress=False)]
    assert rates["constant"] == [cfg.train.lr] * 2
    assert rates["cosine"][-1] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="lr_schedule"):
        load_preset("smoke", {"train": {"lr_schedule": "step"}})


def test_tf32_block_restores_the_flags():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    for device in (torch.device("cpu"), torch.device("cuda")):
        with tf32_enabled(device, not before[0]):
            pass
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_unknown_compile_mode_is_one_clear_error():
    with pytest.raises(ValueError, match="--compile must be one of"):
        Runtime(compile="fast")


@pytest.mark.slow  # torch.compile's first compilation takes about a minute on a CPU
def test_compiled_training_matches_eager():
    cfg = load_preset("smoke")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (128,), generator=g)
    train = dataclasses.replace(cfg.train, epochs=1)
    eager, compiled = (build_model(cfg, 10) for _ in range(2))
    train_model(eager, images, labels, train, progress=False)
    train_model(compiled, images, labels, train, progress=False, compile_mode="default")
    for a, b in zip(eager.state_dict().values(), compiled.state_dict().values()):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-3, atol=1e-4)
