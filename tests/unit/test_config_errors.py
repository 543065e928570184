"""A malformed preset file or ``--set`` is one ``burn: error:`` line (exit 2), never a
traceback; and config, the bottom layer, imports no module above it."""

import ast
from pathlib import Path

import pytest

import burn.config
from burn.cli import main
from burn.config import ConfigError, load_preset


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("burn: error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("text, message", [
    ("train: {epochs: [1\n", "is not valid YAML: line 2, column 1: expected ',' or ']'"),
    ("- train\n- data\n", "must hold a mapping of KEY: VALUE at its top level, got list"),
    ("just words\n", "must hold a mapping of KEY: VALUE at its top level, got str"),
    ("data:\n  dataset: cifar10\n  dataset: tiny\n", "line 3, column 3: key 'dataset' given twice"),
    ("trian:\n  epochs: 3\n", "unknown key(s) ['trian'] in ExperimentCfg"),
    ("train:\n  epochs: many\n", "train.epochs must be an integer, got 'many'"),
    ("train: 3\n", "train is a section, not a value"),
    ("defenses:\n  nope: {epochs: 1}\n", "unknown defense defenses.nope; allowed: ['anp', 'burn'"),
    ("defenses:\n  fp: {epochs: 2.5}\n", "defenses.fp.epochs must be an integer, got 2.5"),
    ("dataset_overrides: [1]\n", "dataset_overrides in preset bad.yaml must map each dataset"),
    ("attack_overrides:\n  badnets: 3\n", "attack_overrides.badnets in preset bad.yaml must be a mapping"),
    ("artifact_variants: 3\n", "artifact_variants in preset bad.yaml must map each attack"),
    ("defense_runs: [1]\n", "defense_runs in preset bad.yaml must map each defense"),
])
def test_a_malformed_preset_file_is_one_error_line(text, message, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    err = _one_line_error(capsys, ["config", "--preset", str(path)])
    assert message in err and "bad.yaml" in err


def test_a_preset_that_is_not_text_is_one_error_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"\x00\xff\xfe")
    assert "is not a text file (not UTF-8)" in _one_line_error(capsys, ["config", "--preset", str(path)])


def test_an_empty_preset_file_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_preset(str(path)).train.epochs == 100 and load_preset(str(path)).preset == "empty"


@pytest.mark.parametrize("settings, message", [
    (["train.epochs=[1"], "the value of --set train.epochs=[1 is not valid YAML: line 1, column 3"),
    (["=3"], "--set expects section.key=value, got '=3'"),
    (["train..epochs=3"], "--set expects section.key=value, got 'train..epochs=3'"),
    (["train.epochs"], "--set expects section.key=value, got 'train.epochs'"),
    (["train=3", "train.epochs=2"], "--set train.epochs=2: train is set to a value (3) by another --set"),
    (["train.epochs=2", "train=3"], "--set train=3: train is a section that another --set gives keys"),
    (["attack.params={a: 1, a: 2}"], "key 'a' given twice in one mapping"),
    (["defenses.nope.x=1"], "unknown defense defenses.nope; allowed: ['anp', 'burn'"),
])
def test_a_malformed_set_is_one_error_line(settings, message, capsys):
    argv = ["config", "--preset", "smoke"] + [a for s in settings for a in ("--set", s)]
    assert message in _one_line_error(capsys, argv)


def test_a_malformed_shared_runs_file_is_one_error_line(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "defense_runs.yaml"
    bad.write_text("burn: [random]\n")
    monkeypatch.setattr(burn.config, "SHARED_RUNS", bad)
    err = _one_line_error(capsys, ["defend", "--preset", "smoke", "--tag", "random", "--quiet"])
    assert "defense_runs.burn in experiments/defense_runs.yaml must be a mapping" in err


def test_config_imports_no_module_of_the_package():
    # the defenses register into config (``register_defenses``) instead of being imported by
    # it: an import from config, even inside a function, would tie every layer into a circle
    tree = ast.parse(Path(burn.config.__file__).read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    relative = [n.module for n in imports if isinstance(n, ast.ImportFrom) and n.level]
    absolute = [a.name for n in imports if isinstance(n, ast.Import) for a in n.names]
    absolute += [n.module for n in imports if isinstance(n, ast.ImportFrom) and not n.level]
    assert relative == [] and not [m for m in absolute if m and m.split(".")[0] == "burn"]


def test_every_defense_is_checked_at_load():
    from burn.defenses import DEFENSES

    for name, cls in DEFENSES.items():
        field = next(iter(cls.__dataclass_fields__))
        with pytest.raises(ConfigError, match=rf"unknown key\(s\) \['nope'\] in defenses\.{name}"):
            load_preset("smoke", {"defenses": {name: {"nope": 1, field: getattr(cls(), field)}}})
