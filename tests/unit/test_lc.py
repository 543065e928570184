"""Label-consistent: its trigger as BackdoorBench lays it out, its PGD, its robust model
(fast adversarial training as a committed, keyed resource) and the attack stage end to end on
the smoke preset."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from burn.adversarial import RobustModel, cyclic_lr, pgd_linf
from burn.attacks.lc import LabelConsistent, corner_pattern
from burn.cache import DamagedFileError
from burn.config import load_preset
from burn.data import load_dataset
from burn.experiment import attacked_model, resources_dir
from burn.models import create_model
from burn.runtime import Runtime


def test_corner_pattern_is_backdoorbenchs_all_corners():
    m = corner_pattern(32, 32)
    # entries of BackdoorBench's list (utils/bd_img_transform/lc.py), (row, col): value
    for (r, c), v in {(0, 0): 1, (0, 1): -1, (0, 2): -1, (2, 2): 1, (-1, 0): 1, (-3, 2): -1,
                      (-3, 0): 1, (0, -1): 1, (0, -3): -1, (2, -3): 1, (-1, -1): 1,
                      (-3, -3): -1, (-2, -2): 1, (1, -2): 1}.items():
        assert m[r, c] == v, (r, c)
    assert int((m != 0).sum()) == 36 and m[3:-3].abs().sum() == 0 and m[:, 3:-3].abs().sum() == 0
    with pytest.raises(ValueError, match="at least 6x6"):
        corner_pattern(4, 32)


def test_full_amplitude_trigger_sets_the_corners_to_black_and_white():
    x = torch.full((1, 3, 32, 32), 0.5)
    out = LabelConsistent().apply_trigger(x.clone())
    m = corner_pattern(32, 32)
    assert (out[0][:, m > 0] == 1).all() and (out[0][:, m < 0] == 0).all()
    assert (out[0][:, m == 0] == 0.5).all()


def test_pgd_stays_in_its_ball_and_raises_the_loss():
    torch.manual_seed(0)
    net = create_model("preactresnet18", 10, width=4).eval()
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    adv = pgd_linf(net, x, y, eps=8 / 255, step=2 / 255, steps=5)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(net(adv), y) > F.cross_entropy(net(x), y)


def test_cyclic_lr_peaks_halfway():
    assert cyclic_lr(0, 100, 0.2) == 0 and cyclic_lr(50, 100, 0.2) == pytest.approx(0.2)
    assert cyclic_lr(75, 100, 0.2) == pytest.approx(0.1) and cyclic_lr(100, 100, 0.2) == 0


def test_fit_without_its_robust_model_is_one_clear_error():
    from burn.data import ImageDataset

    ds = ImageDataset(torch.zeros(10, 3, 32, 32, dtype=torch.uint8), torch.arange(10),
                      tuple("abcdefghij"), "toy")
    with pytest.raises(ValueError, match="robust model"):
        LabelConsistent().fit(ds, generator=torch.Generator())
    with pytest.raises(RuntimeError, match="before fit"):
        LabelConsistent().poison_train(ds, generator=torch.Generator())


@pytest.fixture(scope="module")
def smoke_lc(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    cfg = load_preset("smoke", {"attack": {"name": "lc"}})
    runtime = Runtime(results_root=str(root), threads=1, progress=False)
    return cfg, runtime, attacked_model(cfg, runtime)


def test_lc_poisons_target_images_with_pgd_then_the_trigger(smoke_lc):
    cfg, runtime, run = smoke_lc
    p, a = run.poisoned, run.attack
    idx = p.poison_idx
    assert len(idx) == round(cfg.attack.rate * len(p)) and (p.original_labels[idx] == 0).all()
    assert torch.equal(p.labels, p.original_labels)  # clean-label
    clean, _ = load_dataset(cfg.data, runtime.data_root, seed=cfg.train.seed)
    inside = corner_pattern(32, 32) == 0
    diff = (p.images[idx].int() - clean.images[idx].int()).abs()[:, :, inside]
    assert 0 < diff.max() <= round(a.eps * 255) + 1  # PGD, within its ball (rounded to 8 bits)
    rec = run.record["attack"]
    assert rec["robust_model_key"] == a.key_parts()[0] and rec["pgd_images"] == int(
        (p.original_labels == 0).sum())
    assert run.record["key_parts"] == [rec["robust_model_key"]]


def test_robust_model_is_stored_once_with_its_record(smoke_lc, monkeypatch):
    cfg, runtime, run = smoke_lc
    folder = resources_dir(cfg, runtime.results_root)
    (pt,) = folder.glob("robust_model-*.pt")
    import json

    record = json.loads(pt.with_suffix(".json").read_text())
    assert {"clean_acc", "pgd_acc", "wall_s", "git", "config"} <= set(record)
    monkeypatch.setattr(RobustModel, "train", lambda *a, **k: pytest.fail("trained again"))
    again = attacked_model(cfg, runtime)
    assert again.key == run.key and not again.trained_now


def test_a_damaged_robust_model_stops_with_the_file_and_the_command(smoke_lc, tmp_path):
    import shutil

    cfg, runtime, _ = smoke_lc
    root = tmp_path / "results"
    shutil.copytree(runtime.results_root, root)
    (pt,) = resources_dir(cfg, root).glob("robust_model-*.pt")
    pt.write_bytes(b"not a torch file")
    with pytest.raises(DamagedFileError, match=r"robust_model-.*\.pt.*burn attack --attack lc"):
        attacked_model(cfg, dataclasses.replace(runtime, results_root=str(root)))


def test_measures_draw_their_test_images_from_every_class_and_can_be_redone(smoke_lc, tmp_path):
    import json
    import shutil

    from burn.adversarial import RobustModel
    from burn.resources import eval_subset, remeasure

    idx = eval_subset(10000, 1000)
    assert len(idx) == len(set(idx.tolist())) == 1000 and idx.max() > 5000  # not the first 1,000
    assert torch.equal(idx, eval_subset(10000, 1000)) and len(eval_subset(50, 100)) == 50
    cfg, runtime, run = smoke_lc
    root = tmp_path / "results"
    shutil.copytree(runtime.results_root, root)
    folder = resources_dir(cfg, root)
    (js,) = folder.glob("robust_model-*.json")
    before = json.loads(js.read_text())
    train, test = load_dataset(cfg.data, runtime.data_root, seed=cfg.train.seed)
    res = run.attack.resources()["robust_model"]
    assert isinstance(res, RobustModel)
    after = remeasure(res, train, test, data=cfg.data, seed=cfg.train.seed, folder=folder,
                      runtime=dataclasses.replace(runtime, results_root=str(root)), rebuild="x")
    assert after["wall_s"] == before["wall_s"] and after["key"] == before["key"]
    assert after["remeasured"]["time_utc"] and {"clean_acc", "pgd_acc"} <= set(after)


def test_pgd_images_are_stored_beside_the_robust_model_and_read_back(smoke_lc, monkeypatch,
                                                                      tmp_path):
    import shutil

    import burn.attacks.lc as lc

    cfg, runtime, run = smoke_lc
    root = tmp_path / "results"
    shutil.copytree(runtime.results_root, root)
    runtime = dataclasses.replace(runtime, results_root=str(root))
    (npz,) = resources_dir(cfg, root).glob("lc_pgd-*.npz")
    monkeypatch.setattr(lc, "_craft_now", lambda *a, **k: pytest.fail("crafted again"))
    again = attacked_model(cfg, runtime)
    assert torch.equal(again.poisoned.images, run.poisoned.images)
    npz.write_bytes(b"garbage")
    with pytest.raises(DamagedFileError, match="lc_pgd-.*craft the PGD images again"):
        attacked_model(cfg, runtime)


def test_another_victim_seed_is_built_with_the_seed_0_robust_model(smoke_lc, monkeypatch):
    """The robust model is the attacker's tool: a victim seed changes the poisoned model, not it."""
    cfg, runtime, run = smoke_lc
    monkeypatch.setattr(RobustModel, "train", lambda *a, **k: pytest.fail("trained again"))
    other = attacked_model(load_preset("smoke", {"attack": {"name": "lc"}, "seed": 3}), runtime)
    assert other.attack.key_parts() == run.attack.key_parts() and other.key != run.key
    assert len(list(resources_dir(cfg, runtime.results_root).glob("robust_model-*.pt"))) == 1
