"""The line with a training's expected time, and the warning for bf16 autocast on a CPU
without bf16 instructions: measured on copies, so the trained weights do not change."""

import copy
import re

import torch

import burn.experiment as experiment
import burn.provenance as provenance
from burn.attacks.inputaware import Generator, InputAware, Normalized
from burn.config import load_preset
from burn.experiment import attacked_model, build_model
from burn.runtime import Runtime, cpu_has_bf16
from burn.train import measure_rate


def test_bf16_on_a_cpu_without_bf16_is_named_and_measured_and_the_model_is_unchanged(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(experiment, "cpu_has_bf16", lambda: False)
    cfg = load_preset("smoke", {"data": {"limit_train": 192},
                                "train": {"epochs": 1, "batch_size": 32, "amp_bf16": True}})
    shown = attacked_model(cfg, Runtime(device="cpu", results_root=tmp_path / "a"))
    err = capsys.readouterr().err
    warning = re.search(r"^warning: train.amp_bf16 asks for bf16 autocast, but this CPU has no "
                        r"bf16 instructions \(avx512_bf16, amx_bf16\): bf16 steps run at [\d.,]+ "
                        r"img/s here, fp32 steps at [\d.,]+ img/s\. fp32 is another result, under "
                        r"its own key: --set train.amp_bf16=false --variant NAME$", err, re.M)
    eta = re.search(r"^training: 1 epoch of 192 images, about \d+ s here \([\d.,]+ img/s "
                    r"measured over 5 steps\)$", err, re.M)
    assert warning and eta and warning.start() < eta.start()
    quiet = attacked_model(cfg, Runtime(device="cpu", results_root=tmp_path / "b", progress=False))
    assert "img/s" not in capsys.readouterr().err  # --quiet: nothing measured
    for a, b in zip(shown.model.state_dict().values(), quiet.model.state_dict().values()):
        assert torch.equal(a, b)


def test_no_warning_where_the_cpu_has_bf16_or_training_is_fp32(monkeypatch, capsys):
    cfg = load_preset("smoke", {"train": {"amp_bf16": True}})
    x, y = torch.zeros(256, 3, 32, 32, dtype=torch.uint8), torch.zeros(256, dtype=torch.long)
    monkeypatch.setattr(experiment, "cpu_has_bf16", lambda: True)
    assert experiment._warn_slow_bf16(cfg, Runtime(device="cpu"), None, x, y, True) is None
    monkeypatch.setattr(experiment, "cpu_has_bf16", lambda: False)
    fp32 = load_preset("smoke")
    assert experiment._warn_slow_bf16(fp32, Runtime(device="cpu"), None, x, y, True) is None
    assert capsys.readouterr().err == ""


def test_cpu_has_bf16_reads_the_flags(monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    for flags, has in ((["avx2", "avx512f"], False), (["avx512_bf16"], True), (["amx_bf16"], True)):
        monkeypatch.setattr(provenance, "cpu_info", lambda f=flags: {"model": "x", "flags": f})
        assert cpu_has_bf16() is has
    monkeypatch.setattr("platform.machine", lambda: "arm64")
    assert cpu_has_bf16() is None  # unknown: neither the flags nor torch's check apply


def test_measuring_leaves_the_model_and_the_attack_hook_untouched():
    cfg = load_preset("smoke")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (192, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(192) % 10
    model = build_model(cfg, 10)
    mask = Normalized(Generator(1, 4), torch.full((3,), 0.5), torch.full((3,), 0.25))
    hook = InputAware(width=4, mask_net=mask.eval().requires_grad_(False)).training_hook(seed=0)
    before = copy.deepcopy((model.state_dict(), hook.state_dict()))
    rng = torch.get_rng_state()
    assert measure_rate(model, x, y, cfg.train, hook=hook, steps=2) > 0
    assert measure_rate(model, x[:64], y[:64], cfg.train) is None  # no batch beyond the warm-up
    after = (model.state_dict(), hook.state_dict())
    assert torch.equal(rng, torch.get_rng_state())
    for a, b in zip(before[0].values(), after[0].values()):
        assert torch.equal(a, b)
    assert before[1]["opt"]["state"] == after[1]["opt"]["state"] == {}
    for a, b in zip(before[1]["pattern"].values(), after[1]["pattern"].values()):
        assert torch.equal(a, b)
