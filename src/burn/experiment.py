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

import numpy as np
import torch
from torch import nn

from .analysis import separation_summary
from .atomic import ensure_writable
from .attacks import Attack, PoisonedDataset, make_attack
from .cache import (
    DamagedFileError,
    config_hash,
    load_npz,
    load_torch,
    read_json,
    run_dir,
    save_npz,
    save_torch,
    tensors_sha256,
    write_json,
)
from .config import PROJECT_ROOT, AttackCfg, BurnCfg, ExperimentCfg, from_dict, to_dict
from .data import ImageDataset, dataset_spec, load_dataset
from .metrics import evaluate
from .models import create_model
from .provenance import provenance
from .runtime import Runtime
from .train import train_model

ATTACK_STAGE_VERSION = 1
RESULTS_ROOT = PROJECT_ROOT / "results"
STORED_TOLERANCE_IMAGES = 2


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
    return base / "variants" / cfg.variant if cfg.variant else base


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


def clean_model_cfg(cfg: ExperimentCfg) -> ExperimentCfg:
    """The config of the clean model an attack of ``cfg`` is built on (TrojanNN's trigger):
    the same data, model, recipe and variant, with nothing poisoned."""
    a = cfg.attack
    return dataclasses.replace(cfg, attack=AttackCfg(name="clean", target=a.target, rate=a.rate,
                                                     pool=a.pool))


def fit_attack(cfg: ExperimentCfg, runtime: Runtime, train: ImageDataset) -> Attack:
    """The attack of ``cfg`` fitted to ``train`` (deterministic; it never draws from the
    poisoning generator). An attack that optimizes against a clean model gets the preset's
    (loaded, or trained first)."""
    attack = make_attack(cfg.attack)
    clean = None
    if attack.needs_clean_model:
        runtime.say(f"{cfg.attack.name}: its trigger is optimized on the clean model of preset "
                    f"{cfg.preset}")
        clean = attacked_model(clean_model_cfg(cfg), runtime).model
    return attack.fit(train, generator=torch.Generator().manual_seed(cfg.train.seed), model=clean,
                      device=runtime.torch_device(), amp_bf16=cfg.train.amp_bf16,
                      progress=runtime.progress)


def poison(cfg: ExperimentCfg, attack: Attack, train: ImageDataset, test: ImageDataset):
    """(poisoned training set, poisoned test set) of a fitted (or trained) attack."""
    gen = torch.Generator().manual_seed(cfg.train.seed)
    return attack.poison_train(train, generator=gen), attack.poison_test(test)


def prepare_data(cfg: ExperimentCfg, runtime: Runtime = Runtime()):
    """Load data, fit the attack and poison train and test sets (all deterministic); for an
    attack that trains with the model (``custom_training``), use ``attacked_model``."""
    train, test = load_dataset(cfg.data, runtime.data_root, download=runtime.download,
                               seed=cfg.train.seed)
    if make_attack(cfg.attack).custom_training:
        raise ValueError(f"{cfg.attack.name} poisons with what it learns in training: "
                         "use attacked_model")
    attack = fit_attack(cfg, runtime, train)
    poisoned, poisoned_test = poison(cfg, attack, train, test)
    return attack, poisoned, test, poisoned_test


def attack_key(cfg: ExperimentCfg, data_name: str, parts: tuple = ()) -> str:
    """The attacked model's key; ``parts``: the fitted attack's ``key_parts()`` (stored in
    none.json as ``key_parts``), for attacks that depend on more than their config."""
    return config_hash("attack", ATTACK_STAGE_VERSION, data_name, cfg.data, cfg.model, cfg.train,
                       cfg.attack, *parts)


def _load_committed(model, out: Path, key: str) -> tuple[dict, dict] | None:
    """(stored record, stored attack state) of ``out`` with its weights loaded into ``model``,
    or None if there is none; a model of another config is refused, a damaged one reported."""
    record_path, model_path = out / "none.json", out / "model.pt"
    if not (model_path.is_file() and record_path.is_file()):
        return None
    hint = (f"restore it with `git checkout -- {model_path}` if it is committed, or train it "
            "again with --retrain")
    saved = load_torch(model_path, hint=hint)
    if saved.get("config_hash") != key:
        raise ResultsConflictError(
            f"{model_path} holds a model of another config (hash {saved.get('config_hash')}, "
            f"this run: {key}). Pass --variant NAME (config key `variant`) to keep both, or "
            "--retrain to replace it.")
    bad = [k for k, v in saved["state_dict"].items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise DamagedFileError(model_path, f"non-finite weights in {bad[:3]}", hint)
    state = saved.get("attack_state", {})
    if state and tensors_sha256(state) != saved.get("attack_sha256"):
        raise DamagedFileError(model_path, "its attack state does not match its checksum", hint)
    _load_half_state(model, saved["state_dict"])
    record = read_json(record_path)
    if record.get("config_hash") != key:
        raise DamagedFileError(record_path, f"its config hash {record.get('config_hash')} is not "
                               f"the model's ({key})")
    return record, state


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
    """The attacked model of ``cfg``: the committed one when its key matches, else trained
    (resuming from the run cache) and written with its record."""
    runtime.apply()
    train, test = load_dataset(cfg.data, runtime.data_root, download=runtime.download,
                               seed=cfg.train.seed)
    attack = make_attack(cfg.attack)
    if not attack.custom_training:  # custom ones fit (train their nets) only if not stored
        attack = fit_attack(cfg, runtime, train)
    key = attack_key(cfg, f"{train.name}, {attack.name}", attack.key_parts())
    out = results_dir(cfg, runtime.results_root)
    model = build_model(cfg, len(train.classes), runtime)
    stored = None if retrain else _load_committed(model, out, key)
    trained_now = stored is None
    if trained_now:
        ensure_writable(out)
        record, attack = _train_attacked(cfg, runtime, model, attack, train, test, key, out, retrain)
    else:
        record, state = stored
        attack = attack.with_state(state) if attack.custom_training else attack
    poisoned, poisoned_test = poison(cfg, attack, train, test)
    return AttackRun(cfg, key, model.eval(), attack, poisoned, test, poisoned_test, record, out,
                     runtime, trained_now)


def _fit_custom(cfg, runtime, attack, train, cache: Path) -> Attack:
    """Fit a custom-training attack (Input-aware's mask net), kept in the run cache so an
    interrupted training run does not fit it again."""
    path = cache / "fitted_attack.pt"
    if path.is_file():
        return attack.with_state(load_torch(path)["attack_state"])
    runtime.say(f"{cfg.attack.name}: fitting the attack's own networks before training")
    attack = fit_attack(cfg, runtime, train)
    save_torch({"attack_state": attack.attack_state()}, path)
    return attack


def _train_attacked(cfg, runtime, model, attack, train, test, key, out, retrain):
    cache = run_dir("attack", key)
    ckpt = cache / "checkpoint.pt"
    # A partly trained run committed from another machine (results/.../checkpoint-<key>.pt,
    # see results/README.md) resumes here; the run cache outside the repository may be gone.
    shipped = out / f"checkpoint-{key}.pt"
    if retrain:
        for f in (ckpt, cache / "fitted_attack.pt"):
            f.unlink(missing_ok=True)
    if not retrain and not ckpt.exists() and shipped.is_file():
        shutil.copyfile(shipped, ckpt)
    hook = None
    if attack.custom_training:
        attack = _fit_custom(cfg, runtime, attack, train, cache)
        hook = attack.training_hook(seed=cfg.train.seed, device=runtime.torch_device())
        images, labels = train.images, train.labels  # the hook poisons each batch
    else:
        poisoned, _ = poison(cfg, attack, train, test)
        images, labels = poisoned.images, poisoned.labels
    runtime.say(f"train: {cfg.attack.name} model ({cfg.model.arch} width {cfg.model.width}, "
                f"{cfg.train.epochs} epochs on {len(train)} images, {runtime.torch_device()}); "
                f"a checkpoint after every epoch in {cache} lets an interrupted run resume"
                + (" (resuming now)" if ckpt.exists() else "") + "; the bar shows the time left")
    t0 = time.perf_counter()
    # on a GPU the training set lives on the device (150 MB for CIFAR-10), so a step copies
    # nothing from the host
    device = runtime.torch_device()
    history = train_model(model, images.to(device), labels.to(device), cfg.train,
                          flip=dataset_spec(cfg.data.dataset).flip, checkpoint=ckpt,
                          progress=runtime.progress, hook=hook)
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
    attack_state = attack.attack_state()
    save_torch({"config_hash": key, "config": to_dict(cfg), "state_dict": state,
                "sha256": tensors_sha256(state),
                **({"attack_state": attack_state, "attack_sha256": tensors_sha256(attack_state)}
                   if attack_state else {})}, out / "model.pt")
    write_json(out / "none.json", record)
    shipped.unlink(missing_ok=True)  # superseded by model.pt
    return record, attack


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
    ``asr_by_class.csv`` beside none.json: computed from the model once, then read back while
    its sidecar names this model's config hash (a retrained model recomputes it)."""
    import pandas as pd

    from .metrics import attack_metrics_by_class, predict
    from .provenance import save_table

    path = run.results_dir / "asr_by_class.csv"
    sidecar = path.with_name(path.name + ".json")
    if path.is_file() and sidecar.is_file() and \
            read_json(sidecar)["config"].get("attack_config_hash") == run.key:
        return pd.read_csv(path)
    pt = run.poisoned_test
    df = pd.DataFrame(attack_metrics_by_class(predict(run.model, pt.images), pt.labels,
                                              run.cfg.attack.target, run.poisoned.classes))
    save_table(df, path, config={"attack_config_hash": run.key})
    return df


# ------------------------------------------------------------------------- boundary distances
def _load_distances(path: Path, key: str) -> dict | None:
    """The DeepFool arrays saved at ``path`` if their key is ``key``, else None."""
    if not path.is_file():
        return None
    z = load_npz(path, hint=f"restore it with `git checkout -- {path}` if it is committed, "
                            "or delete it to compute the distances again")
    if str(z["key"]) != key:
        return None
    return {k: torch.from_numpy(v) for k, v in z.items() if k not in ("key", "wall_s")} | {
        "key": key, "wall_s": float(z["wall_s"])}


def _save_distances(path: Path, key: str, wall: float, res, **extra) -> dict:
    """Save a DeepFoolResult's arrays (compact dtypes) atomically; return them as tensors."""
    out = {"norms": res.norms.float(), "adv_labels": res.adv_labels.long(),
           "orig_labels": res.orig_labels.long(), "iterations": res.iterations.long(),
           "converged": res.converged.bool()}
    save_npz(path, key=np.array(key), wall_s=np.array(wall),
             norms=out["norms"].numpy(), adv_labels=out["adv_labels"].numpy().astype(np.int16),
             orig_labels=out["orig_labels"].numpy().astype(np.int16),
             iterations=out["iterations"].numpy().astype(np.int16),
             converged=out["converged"].numpy(), **{k: v.numpy() for k, v in extra.items()})
    return out | extra | {"key": key, "wall_s": wall}


def distances_key(run: AttackRun) -> str:
    from .deepfool import DEEPFOOL_VERSION

    return config_hash("deepfool", DEEPFOOL_VERSION, run.key, run.cfg.deepfool)


def boundary_distances(run: AttackRun) -> dict:
    """DeepFool distances of the frozen attacked model on its whole (poisoned) training set.

    Committed beside the model as ``deepfool.npz`` (a few hundred KB) and reused when its key
    matches; otherwise computed through the resumable run cache. Returns a dict of tensors:
    norms, adv_labels, orig_labels (the model's prediction), iterations, converged, plus
    ``key`` and ``wall_s``."""
    from .deepfool import cached_deepfool

    cfg = run.cfg.deepfool
    key = distances_key(run)
    path = run.results_dir / "deepfool.npz"
    saved = _load_distances(path, key)
    if saved is not None:
        return saved
    ensure_writable(run.results_dir)
    run.runtime.say(f"deepfool: L2 distance to the decision boundary of all {len(run.poisoned)} "
                    f"training images ({run.runtime.deepfool_batch_size()} a batch); parts are "
                    "saved as they finish, so an interrupted run resumes; the bar shows the time left")
    t0 = time.perf_counter()
    res = cached_deepfool(run.model, run.poisoned.images, cfg, key=run.key,
                          batch_size=run.runtime.deepfool_batch_size(), progress=run.runtime.progress)
    return _save_distances(path, key, time.perf_counter() - t0, res)


def subset_distances(run: AttackRun, index: torch.Tensor, *, name: str) -> dict:
    """DeepFool distances of the frozen model of ``run`` on the training samples ``index``
    only (a few hundred or thousand: Table 1's clean-model reference, the far-tail check of
    Fig. 5), committed beside the model as ``deepfool_<name>.npz`` and reused while the model,
    the DeepFool config and the indices are the same. The arrays follow ``index``'s order and
    include it as ``index``."""
    from .deepfool import DEEPFOOL_VERSION, deepfool_dataset

    index = torch.as_tensor(index, dtype=torch.long)
    cfg = run.cfg.deepfool
    key = config_hash("deepfool-subset", DEEPFOOL_VERSION, run.key, cfg, index.tolist())
    path = run.results_dir / f"deepfool_{name}.npz"
    saved = _load_distances(path, key)
    if saved is not None:
        return saved
    t0 = time.perf_counter()
    res = deepfool_dataset(run.model, run.poisoned.images[index], cfg,
                           batch_size=run.runtime.deepfool_batch_size(), progress=run.runtime.progress)
    return _save_distances(path, key, time.perf_counter() - t0, res, index=index)


def matching_burn_record(paths, attack_key: str, burn_cfg) -> dict | None:
    """The first Burn record among ``paths`` run on this attacked model with exactly
    ``burn_cfg`` (so Table 2's grid point equal to the defaults reuses ``burn.json``)."""
    for path in paths:
        if Path(path).is_file():
            rec = read_json(path)
            # read through the schema, so a Burn option added later (at its default) still matches
            if rec.get("attack_config_hash") == attack_key and \
                    from_dict(BurnCfg, rec["config"]["burn"]) == burn_cfg:
                return rec
    return None


def burn_run(run: AttackRun, *, out_dir: Path | None = None, tag: str = "",
             rerun: bool = False) -> dict:
    """Burn on an attacked model; writes ``burn.json`` (none.json's fields + the report) to
    ``out_dir`` (default: the attacked model's results folder); with ``tag`` (a run with
    non-default Burn options), ``burn_<tag>.json`` instead, so the paper's default stays.
    A stored record of the same model, DeepFool distances and Burn config is returned as it
    is (``rerun`` computes it again)."""
    from .defenses.burn import defend

    key = config_hash("burn", run.key, distances_key(run), run.cfg.burn)
    out = Path(out_dir or run.results_dir)
    path = out / (f"burn_{tag}.json" if tag else "burn.json")
    if not rerun and path.is_file():
        saved = read_json(path, hint=f"restore it with `git checkout -- {path}` if it is "
                                     "committed, or compute it again with --rerun")
        if saved.get("config_hash") == key:
            return saved
    ensure_writable(out)
    bd = boundary_distances(run)
    target = run.cfg.attack.target
    run.runtime.say(f"burn: {run.cfg.burn.iterations + 1} rounds of selection + {run.cfg.burn.epochs} "
                    "fine-tuning epochs, evaluated after each (no resume inside a run: an "
                    f"interrupted run starts again); writes {path}")

    def evaluate_fn(m):
        return evaluate(m, run.test, run.poisoned_test, target)

    t0 = time.perf_counter()
    purified, report = defend(run.model, run.poisoned.images, run.poisoned.labels, run.cfg.burn,
                              norms=bd["norms"], adv_labels=bd["adv_labels"].long(),
                              poison_mask=run.poisoned.poison_mask,
                              original_labels=run.poisoned.original_labels,
                              evaluate=evaluate_fn, flip=dataset_spec(run.cfg.data.dataset).flip,
                              progress=run.runtime.progress)
    wall = time.perf_counter() - t0
    final = report.iterations[-1]
    mask = run.poisoned.poison_mask
    df_summary = {
        "key": bd["key"], "wall_s": round(bd["wall_s"], 1),
        "unconverged_clean": int((~bd["converged"].bool())[~mask].sum()),
        "unconverged_poisoned": int((~bd["converged"].bool())[mask].sum()),
        **separation_summary(bd["norms"], bd["adv_labels"], mask, run.poisoned.original_labels,
                             target, given_labels=run.poisoned.labels),
    }
    record = {
        "acc": final.acc, "asr": final.asr, "ra": final.ra,
        "before": report.before,
        "dataset": run.record["dataset"], "attack": run.record["attack"],
        "defense": "burn", "wall_s": round(wall, 1),
        "deepfool": df_summary,
        "report": report.to_dict(),
        "config_hash": key,
        "attack_config_hash": run.key,
        "config": to_dict(run.cfg),
        **provenance(run.runtime),
    }
    write_json(path, record)
    # the record as stored (JSON types), so a fresh and a reused run return the same thing;
    # ``_computed_now`` is not stored: it tells a caller the numbers were just measured
    return {**read_json(path), "_computed_now": True}
