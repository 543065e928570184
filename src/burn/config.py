"""Experiment configuration: frozen dataclasses are the schema, YAML presets only fill them.

A preset (``experiments/presets/<name>.yaml``) gives the data, model, training, DeepFool and
Burn settings of one regime (``smoke``, ``cpu``, ``cpu-w16``, ``paper``). Unknown keys raise an
error and every value is checked against its field's type and range, so a typo in a preset or
in ``--set`` never silently falls back to a default or reaches a result.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PRESET_DIR = PROJECT_ROOT / "experiments" / "presets"
# Named defense runs every preset shares (``named_run``).
SHARED_RUNS = PROJECT_ROOT / "experiments" / "defense_runs.yaml"

# Field metadata that ``from_dict`` checks, besides the field's type.
POSITIVE = {"check": "positive"}  # a size or count: > 0
NONNEG = {"check": "nonneg"}  # >= 0
FRACTION = {"check": "fraction"}  # in [0, 1]
# options added after results were committed: see ``to_dict(for_key=True)``
OMIT_AT_DEFAULT = {"omit_at_default": True}


def choices(*values: str) -> dict:
    return {"check": "choices", "choices": values}


@dataclass(frozen=True)
class DataCfg:
    """Which training/test data to use. ``limit_train``/``limit_test`` take a seeded,
    class-stratified subset (``None`` = everything)."""

    dataset: str = "cifar10"
    limit_train: int | None = field(default=None, metadata=POSITIVE)
    limit_test: int | None = field(default=None, metadata=POSITIVE)


@dataclass(frozen=True)
class ModelCfg:
    """``arch`` in ``burn.models.MODELS``; ``width`` = channels of the first stage (64 = paper).
    ``final_bn_relu``: a BatchNorm + ReLU before the pool, which BackdoorBench's model does not
    have; only the results made before the re-baseline use it (see docs/backdoorbench.md)."""

    arch: str = "preactresnet18"
    width: int = field(default=64, metadata=POSITIVE)
    final_bn_relu: bool = False


@dataclass(frozen=True)
class TrainCfg:
    """BackdoorBench's recipe: SGD, cosine schedule, random crop (padding 4) + horizontal flip."""

    epochs: int = field(default=100, metadata=POSITIVE)
    batch_size: int = field(default=128, metadata=POSITIVE)
    lr: float = field(default=0.01, metadata=POSITIVE)
    momentum: float = field(default=0.9, metadata=FRACTION)
    weight_decay: float = field(default=5e-4, metadata=NONNEG)
    augment: bool = True
    crop_padding: int = field(default=4, metadata=NONNEG)
    amp_bf16: bool = False
    # TF32 tensor cores for training's convolutions and matmuls on a CUDA device (no effect on
    # the CPU). BackdoorBench trains with amp off under PyTorch's defaults, where cuDNN
    # convolutions run in TF32 on Ampere and later GPUs. DeepFool always runs in exact float32.
    tf32: bool = field(default=False, metadata=OMIT_AT_DEFAULT)
    # ``cosine`` anneals the learning rate to zero over ``epochs`` (BackdoorBench's default
    # recipe); ``constant`` keeps it, as BackdoorBench's Input-aware script does (lr 0.01, its
    # steps at epochs 100, 200, ... never reached in 100 epochs).
    lr_schedule: str = field(default="cosine",
                             metadata={**OMIT_AT_DEFAULT, **choices("cosine", "constant")})
    seed: int = 0


@dataclass(frozen=True)
class AttackCfg:
    """All-to-one poisoning. ``name`` in ``burn.attacks.ATTACKS`` (``clean`` = no poisoning);
    ``params`` are extra keyword arguments of that attack class. ``pool``: which samples may be
    poisoned; ``all`` (BackdoorBench's ``backdoor_generate_poison_index``: target-class images
    too, keeping their label) or ``non_target`` (the results made before the re-baseline)."""

    name: str = "badnets"
    target: int = field(default=0, metadata=NONNEG)
    rate: float = field(default=0.1, metadata=FRACTION)
    pool: str = field(default="all", metadata=choices("all", "non_target"))
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DeepFoolCfg:
    """L2 DeepFool as in docs/method.md (its batch size is a runtime setting: speed only)."""

    num_candidates: int = field(default=10, metadata=POSITIVE)
    overshoot: float = field(default=0.02, metadata=NONNEG)
    max_iter: int = field(default=50, metadata=POSITIVE)
    step_eps: float = field(default=1e-4, metadata=NONNEG)


@dataclass(frozen=True)
class ExperimentCfg:
    preset: str = "paper"
    # A named variant of the preset (e.g. a regime of the regime study): its results go to
    # results/<preset>/<dataset>/<attack>/variants/<variant>/ instead of the preset's folder.
    variant: str = ""
    # The run's one seed (``--seed N``): it drives every random choice of the run (poison
    # indices, initialization, data order, augmentation, the defender's clean subset, Burn's
    # and the baselines' shuffles) by setting ``train.seed`` and each defense's ``seed``. Seed 0
    # is the committed results' (their keys are unchanged); another seed's results go to
    # ``<attack>/[variants/<variant>/]seeds/<n>/``.
    seed: int = field(default=0, metadata=NONNEG)
    data: DataCfg = DataCfg()
    model: ModelCfg = ModelCfg()
    train: TrainCfg = TrainCfg()
    attack: AttackCfg = AttackCfg()
    deepfool: DeepFoolCfg = DeepFoolCfg()
    # settings of the defenses by name (``burn.defenses.DEFENSES``: Burn and its baselines),
    # e.g. ``{burn: {iterations: 5}, fp: {epochs: 20}}``: fields of that defense's dataclass;
    # unset ones keep its defaults (``burn.defense_stage.make_defense`` reads them)
    defenses: dict = field(default_factory=dict, metadata=OMIT_AT_DEFAULT)


class ConfigError(ValueError):
    """A preset or override names a key or value the schema does not have."""


# Sections of an earlier schema and their place now: records written before Burn joined the
# defenses' registry, and ``--set burn.KEY=VALUE``, hold Burn's settings as ``burn``.
MOVED = {"burn": ("defenses", "burn")}


def moved(raw: dict | None) -> dict:
    """``raw`` (a preset, overrides or a record's config) with the sections of ``MOVED`` at
    their place now; a key set at both places takes the value of the place now."""
    out = dict(raw or {})
    for old, (section, name) in MOVED.items():
        if old not in out:
            continue
        earlier, inner = out.pop(old), dict(out.get(section) or {})
        if not isinstance(earlier, dict) or not isinstance(inner.get(name, {}), dict):
            raise ConfigError(f"{section}.{name} is a section, not a value: set its keys "
                              f"({section}.{name}.KEY=VALUE)")
        inner[name] = {**earlier, **inner.get(name, {})}
        out[section] = inner
    return out


def from_dict(cls, data: dict[str, Any] | None, *, where: str = ""):
    """Build dataclass ``cls`` from ``data``; nested dataclasses recurse; unknown keys raise."""
    data = moved(data) if cls is ExperimentCfg else dict(data or {})
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where or cls.__name__}; allowed: {sorted(names)}"
        )
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        name = f"{where}.{f.name}" if where else f.name
        if is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{name} is a section, not a value: set its keys ({name}.KEY=VALUE)")
            value = from_dict(hint, value, where=name)
        else:
            value = check_value(name, hint, value, f.metadata)
        kwargs[f.name] = value
    return cls(**kwargs)


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               dict: "a mapping"}


def check_value(name: str, hint, value, metadata=None) -> Any:
    """``value`` as field ``name`` of type ``hint`` holds it (an int where a float is due
    becomes a float, so ``lr: 1`` and ``lr: 1.0`` hash alike), or a ConfigError saying what
    the field takes. Checks the range or choices of the field's ``metadata``."""
    optional = type(None) in get_args(hint)
    base = next((t for t in get_args(hint) if t is not type(None)), hint) if optional else hint
    base = get_origin(base) or base
    if value is None and optional:
        return None
    ok = isinstance(value, base) and not (base in (int, float) and isinstance(value, bool))
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if base is float and isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        value, ok = float(value), True  # YAML 1.1 reads 1e-3 (no dot) as a string
    if base is tuple and isinstance(value, list):  # YAML and JSON have lists, not tuples
        value, ok = tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                          for v in value), True
    if not ok:
        want = _TYPE_NAMES.get(base, base.__name__) + (" or null" if optional else "")
        raise ConfigError(f"{name} must be {want}, got {value!r}")
    check = (metadata or {}).get("check")
    if check == "positive" and not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    if check == "nonneg" and not value >= 0:
        raise ConfigError(f"{name} must be >= 0, got {value!r}")
    if check == "fraction" and not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a fraction in [0, 1], got {value!r}")
    if check == "choices" and value not in metadata["choices"]:
        raise ConfigError(f"{name} must be one of {list(metadata['choices'])}, got {value!r}")
    return value


def to_dict(obj, *, for_key: bool = False) -> Any:
    """Plain dicts/lists of a config. ``for_key`` (what ``config_hash`` uses) leaves out the
    fields marked ``OMIT_AT_DEFAULT`` while they hold their default: options added after results
    were committed then keep every existing key, and so every committed result, valid."""
    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name), for_key=for_key) for f in fields(obj)
                if not (for_key and f.metadata.get("omit_at_default") and getattr(obj, f.name) == f.default)}
    if isinstance(obj, dict):
        return {str(k): to_dict(v, for_key=for_key) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v, for_key=for_key) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "params":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _preset_path(name: str) -> Path:
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"no preset {name!r}: looked for {path}; available presets: {available_presets()}"
        )
    return path


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the
    last, so the first would be silently ignored)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def yaml_value(text: str, what: str) -> Any:
    """``text`` parsed as YAML, or a ConfigError naming ``what`` and where the text is wrong."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{what} is not valid YAML: {where}{problem}") from None


def read_yaml_mapping(path: Path, what: str) -> dict:
    """The mapping YAML file ``path`` holds (an empty file: ``{}``), or a ConfigError naming
    ``what``: unreadable as text, not YAML, or another top-level type."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not a text file (not UTF-8): {path}") from None
    raw = yaml_value(text, what)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} must hold a mapping of KEY: VALUE at its top level, "
                          f"got {type(raw).__name__}: {path}")
    return raw


# A preset's sections besides the config's, each a mapping of names to mappings: the name
# (dataset, attack, defense) and what a value under it holds.
EXTRA_SECTIONS = {"dataset_overrides": ("dataset", "overrides of the config's sections"),
                  "attack_overrides": ("attack", "overrides of the config's sections"),
                  "artifact_variants": ("attack", "{variant: NAME, ...}"),
                  "defense_runs": ("defense", "named runs, TAG: {KEY: VALUE}")}


def _check_mapping_of_mappings(raw: dict, section: str, where: str) -> None:
    name, holds = EXTRA_SECTIONS[section]
    value = raw.get(section)
    if value is None:
        return
    if not isinstance(value, dict):
        raise ConfigError(f"{section} in {where} must map each {name} to {holds}, got {value!r}")
    for key, inner in value.items():
        if inner is not None and not isinstance(inner, dict):
            raise ConfigError(f"{section}.{key} in {where} must be a mapping of {holds}, "
                              f"got {inner!r}")


def _read_preset(path: Path) -> dict:
    raw = read_yaml_mapping(path, f"preset {path.name}")
    for section in EXTRA_SECTIONS:
        _check_mapping_of_mappings(raw, section, f"preset {path.name}")
    raw.setdefault("preset", path.stem)
    return raw


def artifact_overrides(name: str, attack: str) -> dict[str, Any]:
    """The overrides under which the paper's artifacts (notebooks, Fig. 4, the report) read
    ``attack`` of preset ``name``: ``{}`` (the preset's own model), or the variant the preset
    names under ``artifact_variants: {ATTACK: {variant: NAME, <section>: {...}}}`` where the
    repository's model of that attack was trained as a variant (e.g. in fp32 on a CPU without
    bf16). The variant's own overrides are given in full, so its stored key is checked."""
    entry = (_read_preset(_preset_path(name)).get("artifact_variants") or {}).get(attack) or {}
    if entry and not entry.get("variant"):
        raise ConfigError(f"artifact_variants.{attack} in preset {name!r} names no variant: give "
                          "{variant: NAME, ...} with the overrides that variant was run with")
    return moved(dict(entry))


def artifact_cfg(name: str, dataset: str, attack: str) -> ExperimentCfg:
    """The config of ``attack`` on ``dataset`` as the paper's artifacts read it
    (``artifact_overrides``)."""
    return load_preset(name, _deep_merge(artifact_overrides(name, attack),
                                         {"data": {"dataset": dataset}, "attack": {"name": attack}}))


def named_run(preset: str, defense: str, tag: str) -> dict[str, Any] | None:
    """The overrides ``{"defenses": {defense: {...}}}`` that preset ``preset`` gives run ``tag``
    of ``defense`` under ``defense_runs: {DEFENSE: {TAG: {KEY: VALUE}}}``, or None where it
    names no such run. A named run (the random control, Burn's opt-ins, a baseline at another
    schedule) is then one setting wherever its tag is used: the CLI, sweeps and the report."""
    runs = _defense_runs(preset).get(defense) or {}
    if not tag or tag not in runs:
        return None
    if not isinstance(runs[tag], dict):
        raise ConfigError(f"defense_runs.{defense}.{tag} in preset {preset!r} is not a mapping "
                          f"of {defense}'s settings: {runs[tag]!r}")
    return {"defenses": {defense: dict(runs[tag])}}


def named_run_source(preset: str, defense: str, tag: str) -> str:
    """Where run ``tag`` of ``defense`` is named: the shared file or the preset's own file."""
    if tag in (_shared_runs().get(defense) or {}):
        return f"experiments/{SHARED_RUNS.name}, shared by every preset"
    return f"defense_runs in {_preset_path(preset).name}"


def _shared_runs() -> dict[str, dict]:
    """The named runs every preset shares (``SHARED_RUNS``)."""
    if not SHARED_RUNS.is_file():  # without it `--tag random` would silently run the defaults
        raise ConfigError(f"{SHARED_RUNS} is missing: it names the runs every preset shares "
                          "(restore it from the repository: git checkout -- experiments/defense_runs.yaml)")
    runs = read_yaml_mapping(SHARED_RUNS, f"experiments/{SHARED_RUNS.name}")
    _check_mapping_of_mappings({"defense_runs": runs}, "defense_runs", f"experiments/{SHARED_RUNS.name}")
    return runs


def _defense_runs(preset: str) -> dict[str, dict]:
    """The named runs of ``preset``: those every preset shares (``SHARED_RUNS``: Burn's random
    control and opt-ins) and the preset's own ``defense_runs`` (e.g. a baseline's full
    schedule where the preset shortens it). A preset may add tags, never give a shared tag
    other settings: a tag is one setting in every preset's tables."""
    shared = _shared_runs()
    own = _read_preset(_preset_path(preset)).get("defense_runs") or {}
    runs = {d: dict(tags or {}) for d, tags in shared.items()}
    for defense, tags in own.items():
        for tag, settings in (tags or {}).items():
            before = runs.setdefault(defense, {}).setdefault(tag, settings)
            if before != settings:
                raise ConfigError(f"defense_runs.{defense}.{tag} in preset {preset!r} gives "
                                  f"{settings!r}, but {SHARED_RUNS.name} names that tag "
                                  f"{before!r} for every preset: choose another tag")
    return runs


def load_preset(name: str, overrides: dict[str, Any] | None = None) -> ExperimentCfg:
    """Load ``experiments/presets/<name>.yaml`` (or a path to a YAML file) and apply
    ``overrides``, a nested dict such as ``{"attack": {"name": "blended"}}``."""
    path = _preset_path(name)
    raw = _read_preset(path)
    raw.pop("artifact_variants", None)
    raw.pop("defense_runs", None)
    # ``dataset_overrides: {cifar100: {model: {arch: preactresnet34}}}`` in a preset applies
    # to the dataset finally chosen (the paper uses a deeper model for CIFAR-100 / Tiny).
    # ``attack_overrides: {inputaware: {attack: {params: {mask_epochs: 2}}}}`` likewise applies
    # to the attack finally chosen (an attack's own costs sized per preset).
    per_dataset = raw.pop("dataset_overrides", {}) or {}
    per_attack = raw.pop("attack_overrides", {}) or {}
    raw, overrides = moved(raw), moved(overrides)
    raw = _deep_merge(raw, overrides)
    dataset = raw.get("data", {}).get("dataset", DataCfg.dataset)
    attack = raw.get("attack", {}).get("name", AttackCfg.name)
    for extra in (per_dataset.get(dataset), per_attack.get(attack)):
        if extra:
            raw = _deep_merge(_deep_merge(raw, moved(extra)), overrides)
    try:
        return with_seed(check_defenses(from_dict(ExperimentCfg, raw)))
    except ConfigError as e:
        raise ConfigError(f"{e} (preset {path.name}{' with --set' if overrides else ''})") from None


# The defenses' settings dataclasses by name, as ``burn.defenses`` registers them when it is
# imported (``register_defenses``). The defenses import this module, so it never imports them:
# it reads the names registered.
_DEFENSES: dict[str, type] = {}


def register_defenses(classes: dict[str, type]) -> dict[str, type]:
    """Make the dataclasses of ``classes`` (name -> a defense's settings) the defenses that
    ``check_defenses`` knows; returns ``classes``, the registry of the layer that owns them."""
    _DEFENSES.update(classes)
    return classes


def check_defenses(cfg: ExperimentCfg) -> ExperimentCfg:
    """``cfg``, once each ``defenses.<name>`` names a registered defense and holds only its
    fields, with values of their types: a typo fails at load, whatever the command. The
    defenses register when ``burn.defenses`` is imported, which the CLI, the sweeps and the
    notebooks' ``burn.artifacts`` do first; a process that has not imported it runs no defense
    yet, and ``burn.defense_stage.make_defense`` checks the section again when it does."""
    for name, settings in cfg.defenses.items():
        if _DEFENSES and name not in _DEFENSES:
            raise ConfigError(f"unknown defense defenses.{name}; allowed: {sorted(_DEFENSES)}")
        if not isinstance(settings, dict):
            raise ConfigError(f"defenses.{name} is a section, not a value: set its keys "
                              f"(defenses.{name}.KEY=VALUE)")
        if name in _DEFENSES:
            from_dict(_DEFENSES[name], settings, where=f"defenses.{name}")
    return cfg


def with_seed(cfg: ExperimentCfg) -> ExperimentCfg:
    """``cfg`` with its run seed written into ``train.seed`` (the defenses read it in
    ``burn.defense_stage.make_defense``). A section seed set apart from the run seed is refused:
    one integer drives a run."""
    if cfg.seed == 0:
        return cfg
    if cfg.train.seed not in (0, cfg.seed):
        raise ConfigError(f"train.seed={cfg.train.seed} differs from the run's seed {cfg.seed}: "
                          "set the seed once, with --seed N")
    return replace(cfg, train=replace(cfg.train, seed=cfg.seed))


def replace(cfg, **changes):
    """``dataclasses.replace`` re-exported, for nested updates in one place."""
    return dataclasses.replace(cfg, **changes)
