import json

import pytest

from burn.cli import main
from burn.config import ConfigError, available_presets, load_preset


def test_presets_exist_and_differ():
    assert {"smoke", "cpu", "cpu-w16", "paper"} <= set(available_presets())
    cpu, w16, paper = load_preset("cpu"), load_preset("cpu-w16"), load_preset("paper")
    assert cpu.model.width == 16 and cpu.train.amp_bf16 and cpu.train.epochs == 20
    assert not cpu.model.final_bn_relu and cpu.attack.pool == "all"  # BackdoorBench's
    assert w16.model.width == 16 and not w16.train.amp_bf16 and w16.train.epochs == 20
    assert w16.model.final_bn_relu and w16.attack.pool == "non_target"  # before the re-baseline
    assert paper.model.width == 64 and paper.train.epochs == 100
    assert paper.train.lr == 0.01 and paper.train.batch_size == 128 and paper.train.weight_decay == 5e-4


def test_result_keys_do_not_depend_on_the_presets_name():
    """Renaming a preset (cpu -> cpu-w16) keeps every committed result valid: keys hash the
    settings, never the preset's or the variant's name."""
    from burn.keys import attack_key

    w16 = load_preset("cpu-w16")
    same = load_preset("cpu", {"model": {"final_bn_relu": True}, "train": {"amp_bf16": False},
                               "attack": {"pool": "non_target"}, "variant": "x"})
    assert w16.preset != same.preset and w16.variant != same.variant
    assert attack_key(w16, "CIFAR-10") == attack_key(same, "CIFAR-10")
    assert attack_key(load_preset("cpu"), "CIFAR-10") != attack_key(w16, "CIFAR-10")


def test_an_attack_param_stated_at_its_default_keeps_the_key():
    """A variant that names an attack's default (TrojanNN's ``neuron_choice``, which the cpu
    preset overrides) is the same model as a config without it; a stored dict keys alike."""
    from burn.keys import attack_key, without_default_params

    def trojannn(**attack):
        return load_preset("cpu", {"attack": {"name": "trojannn", **attack}})

    bare = trojannn(params={})  # an explicit mapping replaces the preset's params
    stated = trojannn(params={"neuron_choice": "clean_linear"})
    preset = trojannn()
    assert preset.attack.params == {"neuron_choice": "backdoorbench"}
    assert attack_key(bare, "C") == attack_key(stated, "C") != attack_key(preset, "C")
    assert stated.attack.params == {"neuron_choice": "clean_linear"}  # the config keeps what was said
    stored = {"name": "trojannn", "params": {"neuron_choice": "clean_linear", "iters": 5}}
    assert without_default_params(stored)["params"] == {"iters": 5}


def test_unknown_keys_raise():
    with pytest.raises(ConfigError, match="epochz"):
        load_preset("smoke", {"train": {"epochz": 3}})
    with pytest.raises(ConfigError, match="no preset"):
        load_preset("nonexistent")


def test_dataset_override_picks_the_papers_deeper_model():
    assert load_preset("paper", {"data": {"dataset": "cifar100"}}).model.arch == "preactresnet34"
    assert load_preset("paper").model.arch == "preactresnet18"


def test_cli_config_set_and_help(capsys):
    assert main(["config", "--preset", "smoke", "--attack", "blended", "--set", "train.epochs=7",
                 "--set", "attack.params.alpha=0.3"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["epochs"] == 7 and cfg["attack"] == {
        "name": "blended", "target": 0, "rate": 0.1, "pool": "all", "params": {"alpha": 0.3}}
    with pytest.raises(SystemExit) as e:
        main(["attack", "--help"])
    assert e.value.code == 0
    assert "--retrain" in capsys.readouterr().out


def test_cli_missing_dataset_is_a_clear_error(tmp_path, capsys):
    code = main(["attack", "--preset", "cpu", "--data-root", str(tmp_path), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "CIFAR-10 not found" in err and str(tmp_path) in err


def test_one_seed_drives_the_run_and_seed_zero_keeps_every_key():
    from burn.defense_stage import make_defense
    from burn.experiment import results_dir
    from burn.keys import attack_key

    base, zero, one = load_preset("cpu"), load_preset("cpu", {"seed": 0}), load_preset("cpu", {"seed": 1})
    assert attack_key(base, "C") == attack_key(zero, "C") != attack_key(one, "C")
    assert results_dir(zero) == results_dir(base)
    assert results_dir(one) == results_dir(base) / "seeds" / "1"
    assert one.train.seed == make_defense(one, "burn").seed == 1
    assert base.train.seed == make_defense(base, "burn").seed == 0
    assert make_defense(one, "sau").seed == 1 and make_defense(base, "sau") == make_defense(zero, "sau")
    with pytest.raises(ConfigError, match="set the seed once"):
        load_preset("cpu", {"seed": 1, "train": {"seed": 2}})


def test_a_tag_the_preset_names_is_one_setting_everywhere(tmp_path, capsys):
    """``defense_runs`` in a preset: the tag brings its settings (CLI and sweeps alike), may be
    repeated with the same settings, and refuses others before any data is read."""
    from burn.defense_stage import make_defense, tagged_cfg
    from burn.sweep import expand, load_sweep

    over = {"attack": {"name": "lf"}}
    cfg = tagged_cfg("cpu", over, "burn", "coverage_class_outside")
    burn = make_defense(cfg, "burn")
    assert (burn.selection, burn.clean_set_outside_suspect) == ("coverage_class", True)
    assert burn.iterations == 5 and cfg.attack.name == "lf"  # the rest of the preset stays
    same = {**over, "defenses": {"burn": {"selection": "coverage_class",
                                          "clean_set_outside_suspect": True}}}
    assert tagged_cfg("cpu", same, "burn", "coverage_class_outside") == cfg
    mine = {**over, "defenses": {"burn": {"lr": 1e-3}}}
    assert make_defense(tagged_cfg("cpu", mine, "burn", "my_lr"), "burn").lr == 1e-3  # not named
    with pytest.raises(ConfigError, match="is the name preset 'cpu' gives burn.*defense_runs.yaml, shared"):
        tagged_cfg("cpu", mine, "burn", "random")
    with pytest.raises(ConfigError, match="defense_runs in cpu.yaml"):  # the preset's own tag
        tagged_cfg("cpu", {**over, "defenses": {"sau": {"epochs": 3}}}, "sau", "e100")
    code = main(["defend", "--preset", "cpu", "--attack", "lf", "--tag", "random", "--set",
                 "defenses.burn.lr=1e-3", "--data-root", str(tmp_path), "--quiet"])
    assert code == 2 and "is the name preset 'cpu' gives burn" in capsys.readouterr().err
    spec = tmp_path / "s.yaml"
    spec.write_text("preset: cpu\nattacks: [lf]\ndefenses: [{name: sau, tag: e100}, "
                    "{name: burn, tag: random}]\n")
    jobs = {j.stage: j for j in expand(load_sweep(spec))}
    assert make_defense(jobs["sau_e100"].cfg, "sau").epochs == 100
    assert make_defense(jobs["burn_random"].cfg, "burn").selection == "random"


def test_presets_share_one_setting_per_tag(tmp_path):
    """Burn's opt-ins are named once (experiments/defense_runs.yaml) for every preset; a
    preset adds its own tags and may not give a shared one other settings."""
    from burn.config import named_run

    for preset in ("cpu", "paper", "cpu-w16"):
        assert named_run(preset, "burn", "coverage_class_outside") == {
            "defenses": {"burn": {"selection": "coverage_class", "clean_set_outside_suspect": True}}}
    assert named_run("cpu", "sau", "e100") == {"defenses": {"sau": {"epochs": 100}}}
    assert named_run("paper", "sau", "e100") is None  # the cpu preset's own tag
    assert named_run("cpu-w16", "burn", "suspect_class_phase1_clean") is not None
    mine = tmp_path / "mine.yaml"
    mine.write_text("defense_runs: {burn: {random: {selection: suspect_class}}}\n")
    with pytest.raises(ConfigError, match="names that tag"):
        named_run(str(mine), "burn", "random")


def test_a_missing_shared_runs_file_is_one_clear_error(tmp_path, monkeypatch):
    """Without experiments/defense_runs.yaml a shared tag would silently mean the defaults."""
    from burn import config

    monkeypatch.setattr(config, "SHARED_RUNS", tmp_path / "defense_runs.yaml")
    with pytest.raises(ConfigError, match="defense_runs.yaml is missing"):
        config.named_run("cpu", "burn", "random")


def test_scientific_notation_without_a_dot_is_a_number():
    # YAML 1.1 reads `1e-3` as a string; the CLI's own example (--set defenses.burn.lr=1e-3) needs it
    assert load_preset("cpu", {"train": {"lr": "1e-3"}}).train.lr == 1e-3
    with pytest.raises(ConfigError, match="must be a number"):
        load_preset("cpu", {"train": {"lr": "fast"}})


def test_a_variant_of_attack_parameters_shares_the_presets_clean_model(tmp_path):
    """TrojanNN's trigger is optimized on a clean model: a variant that changes only attack
    parameters reads the preset's (per seed), one that changes the recipe trains its own, and
    a variant folder that already holds one keeps it (its models' keys name its weights)."""
    import dataclasses

    from burn.experiment import clean_model_cfg, results_dir

    over = {"attack": {"name": "trojannn", "params": {"neuron_choice": "backdoorbench"}},
            "variant": "bb", "seed": 1}
    cfg = load_preset("smoke", over)
    shared = clean_model_cfg(cfg, tmp_path)
    assert (shared.variant, shared.seed, shared.attack.name) == ("", 1, "clean")
    recipe = load_preset("smoke", {**over, "train": {"epochs": 2}})
    assert clean_model_cfg(recipe, tmp_path).variant == "bb"
    own = results_dir(dataclasses.replace(shared, variant="bb"), tmp_path)
    own.mkdir(parents=True)
    (own / "none.json").write_text("{}")
    assert clean_model_cfg(cfg, tmp_path).variant == "bb"
