import json

import pytest
import torch

from burn.cache import read_json
from burn.config import load_preset
from burn.experiment import ResultsConflictError, attacked_model, build_model
from burn.models import create_model
from burn.runtime import Runtime
from burn.train import augment_batch, train_model


def test_augment_is_crop_and_flip():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, g, padding=0)
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    out = augment_batch(torch.ones(64, 3, 8, 8), g, padding=2)
    assert out.shape == (64, 3, 8, 8) and (out == 0).any() and out.max() == 1


def test_models_features_and_shapes():
    for arch in ("preactresnet18", "preactresnet34"):
        m = create_model(arch, 7, width=4).eval()
        x = torch.rand(2, 3, 32, 32)
        assert m(x).shape == (2, 7) and m.features(x).shape == (2, 32)
        torch.testing.assert_close(m.linear(m.features(x)), m(x))


def test_training_is_deterministic_and_resumes_after_interruption(tmp_path):
    cfg = load_preset("smoke", {"train": {"epochs": 3}})
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (96, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(96) % 10

    full = build_model(cfg, 10)
    train_model(full, x, y, cfg.train, progress=False)

    part = build_model(cfg, 10)
    ckpt = tmp_path / "ckpt.pt"
    hist = train_model(part, x, y, cfg.train, checkpoint=ckpt, progress=False, stop_after=1)
    assert len(hist) == 1
    resumed = build_model(cfg, 10)  # a fresh process: new model, state from the checkpoint
    hist = train_model(resumed, x, y, cfg.train, checkpoint=ckpt, progress=False)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in
               zip(full.state_dict().values(), build_model(cfg, 10).state_dict().values()))


def test_attack_run_writes_contract_and_hits_cache(tmp_path):
    cfg = load_preset("smoke", {"train": {"epochs": 4}})
    run = attacked_model(cfg, Runtime(results_root=tmp_path, progress=False))
    rec = json.loads((tmp_path / "smoke" / "synthetic" / "badnets" / "none.json").read_text())
    for k in ("acc", "asr", "ra"):
        assert 0 <= rec[k] <= 1
    assert rec["acc"] > 0.15  # above chance (0.1): the model learns the synthetic classes
    assert rec["config"]["attack"]["name"] == "badnets" and rec["versions"]["torch"]
    assert "commit" in rec["git"] and rec["num_poisoned"] == 40 and rec["wall_s"] >= 0
    assert (tmp_path / "smoke" / "synthetic" / "badnets" / "model.pt").is_file()

    again = attacked_model(cfg, Runtime(results_root=tmp_path, progress=False))  # cache hit: no training
    assert again.record["config_hash"] == run.record["config_hash"]
    assert again.record["time_utc"] == run.record["time_utc"]
    for a, b in zip(run.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    from burn.metrics import evaluate
    assert evaluate(again.model, again.test, again.poisoned_test, 0) == {
        k: rec[k] for k in ("acc", "asr", "ra")}

    other = load_preset("smoke", {"train": {"epochs": 3}})
    with pytest.raises(ResultsConflictError, match="--variant"):  # never overwrites silently
        attacked_model(other, Runtime(results_root=tmp_path, progress=False))
    changed = attacked_model(load_preset("smoke", {"train": {"epochs": 3}, "variant": "short"}), Runtime(results_root=tmp_path, progress=False))
    assert changed.record["config_hash"] != run.record["config_hash"]
    assert (tmp_path / "smoke" / "synthetic" / "badnets" / "variants" / "short" / "none.json").is_file()


def test_a_committed_partial_checkpoint_resumes_on_a_new_machine(tmp_path, monkeypatch):
    from burn.cache import run_dir
    from burn.experiment import prepare_data, results_dir
    from burn.keys import attack_key

    cfg = load_preset("smoke", {"train": {"epochs": 2}})
    full = attacked_model(cfg, Runtime(results_root=tmp_path / "a", progress=False))

    # machine 1 trains one epoch, then the session ends; its checkpoint is committed
    _, poisoned, _, _ = prepare_data(cfg)
    key = attack_key(cfg, poisoned.name)
    monkeypatch.setenv("BURN_CACHE", str(tmp_path / "cache1"))
    m = build_model(cfg, 10)
    train_model(m, poisoned.images, poisoned.labels, cfg.train, checkpoint=run_dir("attack", key) / "checkpoint.pt",
                progress=False, stop_after=1)
    shipped = results_dir(cfg, tmp_path / "b") / f"checkpoint-{key}.pt"
    shipped.parent.mkdir(parents=True)
    shipped.write_bytes((run_dir("attack", key) / "checkpoint.pt").read_bytes())

    # machine 2: empty cache; the run resumes from the shipped checkpoint and finishes
    monkeypatch.setenv("BURN_CACHE", str(tmp_path / "cache2"))
    run = attacked_model(cfg, Runtime(results_root=tmp_path / "b", progress=False))
    assert [h["epoch"] for h in run.record["history"]] == [1, 2]
    assert not shipped.exists()  # superseded by model.pt
    for a, b in zip(full.model.state_dict().values(), run.model.state_dict().values()):
        assert torch.equal(a, b)


def test_attack_by_class_is_cached_per_model(tmp_path):
    from burn.experiment import attack_by_class

    run = attacked_model(load_preset("smoke"), Runtime(results_root=tmp_path, progress=False))
    df = attack_by_class(run)
    assert run.cfg.attack.target not in df["true_label"].tolist()
    assert df["n"].sum() == len(run.poisoned_test)
    overall = (df["asr"] * df["n"]).sum() / df["n"].sum()
    assert overall == pytest.approx(run.record["asr"], abs=1e-6)
    path = run.results_dir / "asr_by_class.csv"
    path.write_text(path.read_text().replace("\n1,", "\n1,X", 1))  # mark the cached copy
    assert attack_by_class(run)["class"].iloc[0].startswith("X")  # read back, not recomputed
    run.key = "another-model"
    assert not attack_by_class(run)["class"].iloc[0].startswith("X")  # stale: recomputed


def test_burn_run_reuses_its_stored_record(tmp_path, monkeypatch):
    """A finished Burn run costs nothing the second time (a committed burn.json is not
    recomputed); another Burn config, or --rerun, computes."""
    import burn.defenses.burn as burn_module
    from burn.config import replace
    from burn.defense_stage import defense_run, make_defense

    run = attacked_model(load_preset("smoke"), Runtime(results_root=tmp_path, progress=False))
    first = defense_run(run, "burn")
    stored = read_json(run.results_dir / "burn.json")
    assert first.pop("_computed_now") and first == stored

    def fail(*a, **k):
        raise AssertionError("Burn was run again")

    monkeypatch.setattr(burn_module, "defend", fail)
    assert defense_run(run, "burn") == stored
    other = replace(make_defense(run.cfg, "burn"), lr=2e-4)
    with pytest.raises(AssertionError, match="run again"):
        defense_run(run, "burn", defense=other, tag="lr")
    with pytest.raises(AssertionError, match="run again"):
        defense_run(run, "burn", rerun=True)


@pytest.mark.parametrize("attack", ["trojannn", "inputaware"])
def test_optimized_attacks_run_end_to_end_and_reload_the_same_sets(tmp_path, attack):
    """TrojanNN optimizes on the preset's clean model (trained first here); Input-aware trains
    its generators with the classifier. Loading the stored model makes the same poisoned sets."""
    rt = Runtime(results_root=tmp_path, progress=False)
    cfg = load_preset("smoke", {"attack": {"name": attack}})
    run = attacked_model(cfg, rt)
    assert run.trained_now and run.poisoned.poison_mask.sum() == run.record["num_poisoned"] > 0
    assert len(run.poisoned_test) == run.record["num_poisoned_test"] > 0
    if attack == "trojannn":
        assert (tmp_path / "smoke" / "synthetic" / "clean" / "model.pt").is_file()
        assert run.record["key_parts"] == [run.attack.fitted["clean_model_sha256"]]
    else:
        assert run.record["num_cross"] == run.record["num_poisoned"]
        assert "attack_state" in torch.load(run.results_dir / "model.pt", weights_only=False)
    again = attacked_model(cfg, rt)
    assert not again.trained_now and again.key == run.key
    assert torch.equal(again.poisoned.images, run.poisoned.images)
    assert torch.equal(again.poisoned_test.images, run.poisoned_test.images)
    from burn.experiment import measure_stored

    assert measure_stored(again)["agree"]


def test_a_model_with_a_non_finite_attack_state_is_neither_stored_nor_loaded(tmp_path):
    """An attack state that overflowed its stored precision would make other poisoned images
    than those measured: the store refuses to write it, and refuses a file that holds one."""
    from burn.cache import save_torch, tensors_sha256
    from burn.cache import DamagedFileError
    from burn.experiment import ModelStore

    store = ModelStore(tmp_path)
    state = {"w": torch.ones(2, dtype=torch.float16)}
    bad = {"pattern.net.1.running_var": torch.tensor([1.0, float("inf")])}
    record = {"config": {}, "config_hash": "k"}
    with pytest.raises(ValueError, match="non-finite attack state in .'pattern.net.1.running_var'"):
        store.save({"record": record, "state_dict": state, "attack_state": bad}, "k")
    assert not (tmp_path / "model.pt").exists()
    save_torch({"config_hash": "k", "state_dict": state, "attack_state": bad,
                "attack_sha256": tensors_sha256(bad)}, tmp_path / "model.pt")
    (tmp_path / "none.json").write_text(json.dumps(record))
    with pytest.raises(DamagedFileError, match="non-finite attack state"):
        store.load()
