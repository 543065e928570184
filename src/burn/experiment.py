"""Experiment stages with caching and the results contract.

``attacked_model(cfg)`` trains (or loads) the backdoored model of one preset/dataset/attack
and writes ``results/<preset>/<dataset>/<attack>/none.json`` plus ``model.pt`` (a float16
state dict with its config). The committed ``model.pt`` is loaded instead of retraining when
its config hash matches, so a reviewer runs every defense without training.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .attacks import Attack, PoisonedDataset, make_attack
from .cache import (
    DamagedFileError,
    load_torch,
    read_json,
    run_dir,
    save_torch,
    tensors_sha256,
    write_json,
)
from .config import PROJECT_ROOT, AttackCfg, ExperimentCfg, load_preset, to_dict
from .data import ImageDataset, dataset_spec, load_dataset
from .keys import attack_key
from .metrics import evaluate
from .models import create_model
from .provenance import provenance
from .runtime import Runtime, cpu_has_bf16
from .stages import TorchStore, cached
from .train import measure_rate, train_model

RESULTS_ROOT = PROJECT_ROOT / "results"
STORED_TOLERANCE_IMAGES = 2
MEASURED_STEPS = 5  # training steps timed for the expected time (not counted in any result)


@dataclass
class AttackRun:
    """Everything downstream stages need from one attacked model."""

    cfg: ExperimentCfg
    key: str
    model: nn.Module
    attack: Attack
    poisoned: PoisonedDataset  # the training set as poisoned, with the true poison mask
    test: ImageDataset
    poisoned_test: ImageDataset
    record: dict  # the content of none.json
    results_dir: Path
    runtime: Runtime = Runtime()
    trained_now: bool = False  # False: loaded from the stored model.pt


def results_dir(cfg: ExperimentCfg, root: Path | None = None) -> Path:
    base = Path(root or RESULTS_ROOT) / cfg.preset / cfg.data.dataset / cfg.attack.name
    base = base / "variants" / cfg.variant if cfg.variant else base
    return base / "seeds" / str(cfg.seed) if cfg.seed else base


class ResultsConflictError(RuntimeError):
    """The results folder holds a model of another config; nothing is overwritten silently."""


def _half_state(model: nn.Module) -> dict:
    return {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}


def _load_half_state(model: nn.Module, state: dict) -> None:
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})


def build_model(cfg: ExperimentCfg, num_classes: int, runtime: Runtime = Runtime()) -> nn.Module:
    """The seeded, untrained model of ``cfg``, on the runtime's device and memory format."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.train.seed)
        model = create_model(cfg.model.arch, num_classes, cfg.model.width, cfg.data.dataset,
                             final_bn_relu=cfg.model.final_bn_relu)
    model = model.to(runtime.torch_device())
    if runtime.use_channels_last(cfg.model.width):
        model = model.to(memory_format=torch.channels_last)
    return model


def clean_model_cfg(cfg: ExperimentCfg, root: Path | None = None) -> ExperimentCfg:
    """The config of the clean model an attack of ``cfg`` is built on (TrojanNN's trigger):
    the same data, model, recipe and variant, with nothing poisoned. A variant that changes
    nothing the clean model depends on (e.g. only attack parameters) shares the preset's clean
    model, unless its own folder under ``root`` already holds one (whose weights the variant's
    stored models were built on: their key names them)."""
    a = cfg.attack
    clean = dataclasses.replace(cfg, attack=AttackCfg(name="clean", target=a.target, rate=a.rate,
                                                      pool=a.pool))
    if not cfg.variant or (results_dir(clean, root) / "none.json").is_file():
        return clean
    # the preset as it is, without the variant's overrides
    plain = load_preset(cfg.preset, {"data": {"dataset": cfg.data.dataset}, "seed": cfg.seed,
                                     "attack": to_dict(clean.attack)})
    same = all(getattr(plain, s) == getattr(clean, s) for s in ("data", "model", "train"))
    return dataclasses.replace(clean, variant="") if same else clean


def resources_dir(cfg: ExperimentCfg, root: Path | None = None) -> Path:
    """Where the networks attacks are built with are committed (``burn.resources``), shared
    by the preset's attacks, variants and seeds (each file is keyed)."""
    return Path(root or RESULTS_ROOT) / cfg.preset / cfg.data.dataset / "resources"


def attack_resources(cfg: ExperimentCfg, runtime: Runtime, attack: Attack, train: ImageDataset,
                     test: ImageDataset) -> dict:
    """The attack's resources (``Attack.resources()``), each read back or trained once."""
    from .resources import resource_stage

    rebuild = f"burn attack --attack {cfg.attack.name} --preset {cfg.preset}"
    seed = cfg.train.seed if attack.resource_seed is None else attack.resource_seed
    return {name: resource_stage(res, train, test, data=cfg.data, seed=seed,
                                 folder=resources_dir(cfg, runtime.results_root),
                                 runtime=runtime, rebuild=rebuild)
            for name, res in attack.resources().items()}


def fit_attack(cfg: ExperimentCfg, runtime: Runtime, train: ImageDataset,
               test: ImageDataset, checkpoint: Path | None = None) -> Attack:
    """The attack of ``cfg`` fitted to ``train`` (deterministic; it never draws from the
    poisoning generator). An attack that optimizes against a clean model gets the preset's
    (loaded, or trained first); one built with networks of its own (``resources``) gets them
    from their committed stage. ``checkpoint``: where a long fit (Input-aware's mask net)
    saves its progress, to resume after an interruption."""
    attack = make_attack(cfg.attack)
    clean = None
    if attack.needs_clean_model:
        runtime.say(f"{cfg.attack.name}: its trigger is optimized on the clean model of preset "
                    f"{cfg.preset}")
        clean = attacked_model(clean_model_cfg(cfg, runtime.results_root), runtime).model
    return attack.fit(train, generator=torch.Generator().manual_seed(cfg.train.seed), model=clean,
                      device=runtime.torch_device(), amp_bf16=cfg.train.amp_bf16,
                      progress=runtime.progress, checkpoint=checkpoint,
                      resources=attack_resources(cfg, runtime, attack, train, test))


def poison(cfg: ExperimentCfg, attack: Attack, train: ImageDataset, test: ImageDataset):
    """(poisoned training set, poisoned test set) of a fitted (or trained) attack."""
    gen = torch.Generator().manual_seed(cfg.train.seed)
    return attack.poison_train(train, generator=gen), attack.poison_test(test)


POISON_CACHE_FORMAT = 1  # of the tensors below; a change makes every cached set a miss


def stored_poison(cfg: ExperimentCfg, attack: Attack, train: ImageDataset, test: ImageDataset,
                  key: str):
    """``poison``'s sets of the stored model ``key``. An attack whose trigger is a network run
    over every image (``slow_poison``: Input-aware, SSBA; minutes each time) keeps them in the
    run cache under the model's key, so every notebook and defense after the first reads them."""
    if not attack.slow_poison:
        return poison(cfg, attack, train, test)

    def compute() -> dict:
        tr, te = poison(cfg, attack, train, test)
        return {"train": {f.name: getattr(tr, f.name) for f in dataclasses.fields(tr)},
                "test": {f.name: getattr(te, f.name) for f in dataclasses.fields(te)}}

    path = run_dir("attack", key) / "poisoned_sets.pt"
    sets = cached(TorchStore(path), f"{key}-sets{POISON_CACHE_FORMAT}", compute)
    poisoned, poisoned_test = PoisonedDataset(**sets["train"]), ImageDataset(**sets["test"])
    if len(poisoned) != len(train) or len(poisoned_test) > len(test):
        raise DamagedFileError(path, f"holds {len(poisoned)} training and {len(poisoned_test)} "
                               f"test images for {len(train)} and {len(test)}",
                               "delete it; it is made again")
    return poisoned, poisoned_test


def prepare_data(cfg: ExperimentCfg, runtime: Runtime = Runtime()):
    """Load data, fit the attack and poison train and test sets (all deterministic); for an
    attack that trains with the model (``custom_training``), use ``attacked_model``."""
    train, test = load_dataset(cfg.data, runtime.data_root, download=runtime.download,
                               seed=cfg.train.seed)
    if make_attack(cfg.attack).custom_training:
        raise ValueError(f"{cfg.attack.name} poisons with what it learns in training: "
                         "use attacked_model")
    attack = fit_attack(cfg, runtime, train, test)
    poisoned, poisoned_test = poison(cfg, attack, train, test)
    return attack, poisoned, test, poisoned_test


@dataclass(frozen=True)
class ModelStore:
    """The attacked model's store (``burn.stages``): ``model.pt`` (float16 weights, the
    attack's own trained state, checksums) and ``none.json`` (its record) in ``out``. Its value
    is ``{"record", "state_dict", "attack_state"}``."""

    out: Path

    @property
    def path(self) -> Path:
        return self.out / "model.pt"

    def _hint(self) -> str:
        return (f"restore it with `git checkout -- {self.path}` if it is committed, or train it "
                "again with --retrain")

    def stored_key(self):
        if not (self.path.is_file() and (self.out / "none.json").is_file()):
            return None
        return load_torch(self.path, hint=self._hint()).get("config_hash")

    def load(self) -> dict:
        saved = load_torch(self.path, hint=self._hint())
        state = saved.get("attack_state", {})
        for what, tensors in (("weights", saved["state_dict"]), ("attack state", state)):
            if bad := _non_finite(tensors):
                raise DamagedFileError(self.path, f"non-finite {what} in {bad[:3]}", self._hint())
        if state and tensors_sha256(state) != saved.get("attack_sha256"):
            raise DamagedFileError(self.path, "its attack state does not match its checksum",
                                   self._hint())
        record = read_json(self.out / "none.json")
        if record.get("config_hash") != saved["config_hash"]:
            raise DamagedFileError(self.out / "none.json", f"its config hash "
                                   f"{record.get('config_hash')} is not the model's "
                                   f"({saved['config_hash']})")
        return {"record": record, "state_dict": saved["state_dict"], "attack_state": state}

    def save(self, value: dict, key: str) -> dict:
        state, attack_state = value["state_dict"], value["attack_state"]
        for what, tensors in (("weights", state), ("attack state", attack_state or {})):
            if bad := _non_finite(tensors):  # stored, they would give other numbers than measured
                raise ValueError(f"not storing {self.path}: non-finite {what} in {bad[:3]} "
                                 "(an overflow of the stored precision, or a diverged run)")
        save_torch({"config_hash": key, "config": value["record"]["config"], "state_dict": state,
                    "sha256": tensors_sha256(state),
                    **({"attack_state": attack_state, "attack_sha256": tensors_sha256(attack_state)}
                       if attack_state else {})}, self.path)
        write_json(self.out / "none.json", value["record"])
        return self.load()


def _non_finite(tensors: dict) -> list[str]:
    """The names of ``tensors``' floating tensors that hold an inf or a NaN."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()]


def _conflict(model_path: Path, key: str):
    def error(stored: str) -> Exception:
        return ResultsConflictError(
            f"{model_path} holds a model of another config (hash {stored}, this run: {key}). "
            "Pass --variant NAME (config key `variant`) to keep both, or --retrain to replace it.")
    return error


def measure_stored(run: "AttackRun") -> dict:
    """ACC / ASR / RA of the loaded model measured now, beside the stored ones, and whether
    they agree within ``STORED_TOLERANCE_IMAGES`` test images (float32 rounding differs
    between CPUs and can flip a prediction or two)."""
    now = evaluate(run.model, run.test, run.poisoned_test, run.cfg.attack.target)
    sizes = {"acc": len(run.test), "ra": len(run.poisoned_test), "asr": len(run.poisoned_test)}
    agree = all(abs(now[k] - run.record[k]) * max(sizes[k], 1) <= STORED_TOLERANCE_IMAGES + 1e-6
                for k in ("acc", "asr", "ra"))
    return {"measured": now, "agree": agree}


def attacked_model(cfg: ExperimentCfg, runtime: Runtime = Runtime(), *,
                   retrain: bool = False) -> AttackRun:
    """The attacked model of ``cfg``: the stored one when its key matches, else trained
    (resuming from the run cache) and written with its record; a stored model of another
    config is refused (``--variant`` keeps both)."""
    runtime.apply()
    train, test = load_dataset(cfg.data, runtime.data_root, download=runtime.download,
                               seed=cfg.train.seed)
    attack = make_attack(cfg.attack)
    if not attack.custom_training:  # custom ones fit (train their nets) only if not stored
        attack = fit_attack(cfg, runtime, train, test)
    key = attack_key(cfg, f"{train.name}, {attack.name}", attack.key_parts())
    out = results_dir(cfg, runtime.results_root)
    model = build_model(cfg, len(train.classes), runtime)
    made = []  # the poisoned sets of a model trained now (Input-aware's take minutes to make)

    def train_now() -> dict:
        value = _train_attacked(cfg, runtime, model, attack, train, test, key, out, retrain)
        made.append(value.pop("poisoned"))
        return value

    stored = cached(ModelStore(out), key, train_now, rerun=retrain,
                    conflict=_conflict(out / "model.pt", key))
    if made:  # a shipped partial checkpoint is superseded by the model.pt just written
        (out / f"checkpoint-{key}.pt").unlink(missing_ok=True)
    _load_half_state(model, stored["state_dict"])
    if attack.custom_training:
        attack = attack.with_state(stored["attack_state"])
    # made from the stored attack state either way (``fitted`` rounds as ``attack_state`` stores)
    poisoned, poisoned_test = made[0] if made else stored_poison(cfg, attack, train, test, key)
    return AttackRun(cfg, key, model.eval(), attack, poisoned, test, poisoned_test,
                     stored["record"], out, runtime, bool(made))


@dataclass(frozen=True)
class FittedAttackStore:
    """A fitted attack (Input-aware's networks) in the run cache, as its ``attack_state()``.
    A fit made now is returned as fitted; a stored one is rebuilt with ``template.with_state``."""

    path: Path
    template: Attack

    def stored_key(self):
        return TorchStore(self.path).stored_key()

    def load(self) -> Attack:
        return self.template.with_state(TorchStore(self.path).load())

    def save(self, value: Attack, key: str) -> Attack:
        TorchStore(self.path).save(value.attack_state(), key)
        return value


def _fit_custom(cfg, runtime, attack, train, test, cache: Path, key: str, rerun: bool) -> Attack:
    """Fit a custom-training attack (Input-aware's mask net), kept in the run cache so an
    interrupted training run does not fit it again."""
    partial = cache / "fit_checkpoint.pt"
    if rerun:
        partial.unlink(missing_ok=True)

    def fit():
        runtime.say(f"{cfg.attack.name}: fitting the attack's own networks before training"
                    + (" (resuming)" if partial.is_file() else ""))
        return fit_attack(cfg, runtime, train, test, checkpoint=partial)

    fitted = cached(FittedAttackStore(cache / "fitted_attack.pt", attack), key, fit, rerun=rerun)
    partial.unlink(missing_ok=True)  # the fitted attack is stored: its partial fit is done with
    return fitted


def _train_attacked(cfg, runtime, model, attack, train, test, key, out, retrain):
    cache = run_dir("attack", key)
    ckpt = cache / "checkpoint.pt"
    # A partly trained run committed from another machine (results/.../checkpoint-<key>.pt,
    # see results/README.md) resumes here; the run cache outside the repository may be gone.
    shipped = out / f"checkpoint-{key}.pt"
    if retrain:
        ckpt.unlink(missing_ok=True)
    if not retrain and not ckpt.exists() and shipped.is_file():
        shutil.copyfile(shipped, ckpt)
    flip = dataset_spec(cfg.data.dataset).flip
    bf16_rate = _warn_slow_bf16(cfg, runtime, model, train.images, train.labels, flip)
    hook = None
    if attack.custom_training:
        attack = _fit_custom(cfg, runtime, attack, train, test, cache, key, retrain)
        hook = attack.training_hook(seed=cfg.train.seed, device=runtime.torch_device())
        images, labels = train.images, train.labels  # the hook poisons each batch
    else:
        poisoned, _ = poison(cfg, attack, train, test)
        images, labels = poisoned.images, poisoned.labels
    runtime.say(f"train: {cfg.attack.name} model ({cfg.model.arch} width {cfg.model.width}, "
                f"{cfg.train.epochs} epochs on {len(train)} images, {runtime.torch_device()}); "
                f"a checkpoint after every epoch in {cache} lets an interrupted run resume"
                + (" (resuming now)" if ckpt.exists() else "") + "; the bar shows the time left")
    # on a GPU the training set lives on the device (150 MB for CIFAR-10), so a step copies
    # nothing from the host
    device = runtime.torch_device()
    images, labels = images.to(device), labels.to(device)
    _say_expected_time(cfg, runtime, model, images, labels, flip, hook, ckpt,
                       rate=bf16_rate if hook is None else None)
    t0 = time.perf_counter()
    history = train_model(model, images, labels, cfg.train, flip=flip, checkpoint=ckpt,
                          progress=runtime.progress, hook=hook, compile_mode=runtime.compile)
    wall = time.perf_counter() - t0
    if hook is not None:
        attack = hook.fitted()
    poisoned, poisoned_test = poison(cfg, attack, train, test)
    # Metrics are measured on the float16 weights that are committed, so the committed model
    # reproduces the committed numbers exactly.
    state = _half_state(model)
    _load_half_state(model, state)
    model.eval()
    record = _attack_record(cfg, runtime, model, attack, poisoned, test, poisoned_test, key,
                            history, wall)
    return {"record": record, "state_dict": state, "attack_state": attack.attack_state(),
            "poisoned": (poisoned, poisoned_test)}


def _rate(images_per_s: float) -> str:
    return f"{images_per_s:,.0f}" if images_per_s >= 100 else f"{images_per_s:.1f}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _warn_slow_bf16(cfg, runtime, model, images, labels, flip) -> float | None:
    """Before any long work: where the config asks for bf16 autocast on a CPU without bf16
    instructions (or where that is unknown), one line with the measured rates of bf16 and
    fp32 steps and the fp32 alternative. It warns, it never refuses. Returns the bf16 rate
    (None: nothing measured)."""
    if not (runtime.progress and cfg.train.amp_bf16 and runtime.torch_device().type == "cpu"):
        return None
    has_bf16 = cpu_has_bf16()
    if has_bf16:
        return None
    bf16, fp32 = (measure_rate(model, images, labels, cfg.train, amp_bf16=amp, flip=flip,
                               steps=MEASURED_STEPS) for amp in (True, False))
    if bf16 is None or fp32 is None:
        return None
    lacks = ("has no bf16 instructions (avx512_bf16, amx_bf16)" if has_bf16 is False
             else "may lack bf16 instructions (unknown here)")
    runtime.say(f"warning: train.amp_bf16 asks for bf16 autocast, but this CPU {lacks}: bf16 "
                f"steps run at {_rate(bf16)} img/s here, fp32 steps at {_rate(fp32)} img/s. "
                "fp32 is another result, under its own key: --set train.amp_bf16=false "
                "--variant NAME")
    return bf16


def _say_expected_time(cfg, runtime, model, images, labels, flip, hook, ckpt, rate=None) -> None:
    """One line with the training's expected time, from ``rate`` (images/s) or from
    ``MEASURED_STEPS`` steps measured now on copies of the model and hook (nothing with
    ``progress=False``, or with ``compile``, whose first steps compile)."""
    if not runtime.progress or runtime.compile:
        return
    done = load_torch(ckpt)["epoch"] if ckpt.exists() else 0
    left, n = cfg.train.epochs - done, len(labels)
    if rate is None:
        rate = measure_rate(model, images, labels, cfg.train, flip=flip, hook=hook,
                            steps=MEASURED_STEPS)
    if rate is None or left <= 0:
        return
    steps = min(MEASURED_STEPS, -(-n // cfg.train.batch_size) - 1)
    epochs = (f"{left} of {cfg.train.epochs} epochs left" if done
              else f"{left} epoch{'s' if left > 1 else ''}")
    runtime.say(f"training: {epochs} of {n:,} images, about {_duration(left * n / rate)} here "
                f"({_rate(rate)} img/s measured over {steps} steps)")


def _attack_record(cfg, runtime, model, attack, poisoned, test, poisoned_test, key, history,
                   wall) -> dict:
    metrics = evaluate(model, test, poisoned_test, cfg.attack.target)
    target_poisoned = poisoned.poison_mask & (poisoned.original_labels == cfg.attack.target)
    return {
        **metrics,
        "dataset": poisoned.name,
        "attack": attack.describe(),
        **({"key_parts": list(attack.key_parts())} if attack.key_parts() else {}),
        "num_train": len(poisoned),
        "num_poisoned": int(poisoned.poison_mask.sum()),
        "num_poisoned_target_class": int(target_poisoned.sum()),
        **({"num_cross": int(poisoned.cross_mask.sum())} if poisoned.cross_mask is not None else {}),
        "num_test": len(test),
        "num_poisoned_test": len(poisoned_test),
        "wall_s": round(sum(h["epoch_s"] for h in history), 1),  # with interrupted sessions' epochs
        "wall_s_this_session": round(wall, 1),
        "config_hash": key,
        "config": to_dict(cfg),
        "history": history,
        **provenance(runtime),
    }


def attack_by_class(run: AttackRun):
    """ASR / RA of the poisoned test set by true class (a DataFrame), kept as
    ``asr_by_class.csv`` beside none.json under this model's key (a retrained model
    recomputes it)."""
    import pandas as pd

    from .metrics import attack_metrics_by_class, predict
    from .stages import TableStore

    def compute():
        pt = run.poisoned_test
        return pd.DataFrame(attack_metrics_by_class(predict(run.model, pt.images), pt.labels,
                                                    run.cfg.attack.target, run.poisoned.classes))

    return cached(TableStore(run.results_dir / "asr_by_class.csv", "attack_config_hash"), run.key,
                  compute)
