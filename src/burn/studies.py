"""Multi-run studies built from the experiment stages: the regime study of the DeepFool/Burn
issue (which training regime, if any, makes Burn's distance-based selection work)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import yaml

from .cache import read_json
from .config import PROJECT_ROOT, load_preset


@dataclass(frozen=True)
class Regime:
    """One row of the regime study: overrides of the study's preset, stored as its variant
    ``name``; or, with ``preset``, another preset's own results (``name`` labels the row)."""

    name: str
    why: str
    overrides: dict = field(default_factory=dict)
    needs: str = "cpu"
    preset: str = ""


def load_regimes(path) -> tuple[str, str, list[Regime]]:
    raw = yaml.safe_load(Path(path).read_text())
    regimes = [Regime(**r) for r in raw["regimes"]]
    return raw["preset"], raw["attack"], regimes


def regime_cfg(preset: str, attack: str, regime: Regime):
    over = {**regime.overrides, "attack": {**regime.overrides.get("attack", {}), "name": attack}}
    if regime.name and not regime.preset:
        over["variant"] = regime.name
    return load_preset(regime.preset or preset, over)


def regime_row(cfg, regime: Regime, results_root=None) -> dict:
    """One row of regime.csv from the committed results of that regime (NaN where missing)."""
    from .experiment import results_dir

    d = results_dir(cfg, results_root)
    row = {"regime": regime.name or cfg.preset, "why": regime.why, "needs": regime.needs,
           "head": "BN-ReLU" if cfg.model.final_bn_relu else "BackdoorBench", "pool": cfg.attack.pool,
           "arch": cfg.model.arch, "width": cfg.model.width, "epochs": cfg.train.epochs,
           "augment": cfg.train.augment, "status": "not run"}
    if (d / "none.json").is_file():
        rec = read_json(d / "none.json")
        row.update(status="trained", data=rec["dataset"].split(",")[0], acc=rec["acc"], asr=rec["asr"], ra=rec["ra"],
                   train_wall_s=rec["wall_s"])
    if (d / "burn.json").is_file():
        b = read_json(d / "burn.json")
        df = b["deepfool"]
        row.update(status="done", deepfool_wall_s=df["wall_s"],
                   unconverged=df["unconverged_clean"] + df["unconverged_poisoned"],
                   mean_ratio=df.get("mean_ratio"), median_ratio=df.get("median_ratio"),
                   auroc=df["auroc"],
                   top05_precision=df["top0.5pct_precision"], top05_recall=df["top0.5pct_recall"],
                   top1_precision=df["top1pct_precision"], top1_recall=df["top1pct_recall"],
                   top05_clean_adv_is_target=df["top0.5pct_clean_adv_is_target"],
                   revert_share=df["revert_share_poisoned"],
                   burn_acc=b["acc"], burn_asr=b["asr"], burn_ra=b["ra"], burn_wall_s=b["wall_s"],
                   suspect_class=df.get("suspect_class"),
                   top05_suspect_class_precision=df.get("top0.5pct_suspect_class_precision"),
                   top1_suspect_class_precision=df.get("top1pct_suspect_class_precision"))
    # the opt-in repair, measured beside the paper's default (burn --tag suspect_class)
    if (d / "burn_suspect_class.json").is_file():
        b = read_json(d / "burn_suspect_class.json")
        row.update(burn_sc_acc=b["acc"], burn_sc_asr=b["asr"], burn_sc_ra=b["ra"])
    return row


def training_fit(run) -> dict:
    """How well the attacked model fits its own training set: accuracy and cross-entropy on
    its clean training samples (true labels) and on its poisoned ones (the labels it was
    given), without augmentation. Stored beside the model as ``train_fit.json`` under the
    model's key, so it is measured once per committed model."""
    import torch.nn.functional as F

    from .cache import config_hash
    from .metrics import predict_logits
    from .stages import JsonStore, cached

    def compute() -> dict:
        p = run.poisoned
        logits = predict_logits(run.model, p.images)
        loss = F.cross_entropy(logits, p.labels, reduction="none").double()
        hit = (logits.argmax(1) == p.labels).double()
        out = {"n": len(p), "n_poisoned": int(p.poison_mask.sum())}
        for group, m in (("clean", ~p.poison_mask), ("poisoned", p.poison_mask), ("all", None)):
            h, l = (hit, loss) if m is None else (hit[m], loss[m])
            out[f"train_acc_{group}"] = round(float(h.mean()), 6) if len(h) else None
            out[f"train_loss_{group}"] = round(float(l.mean()), 6) if len(l) else None
        return {**out, "attack_config_hash": run.key}

    path = run.results_dir / "train_fit.json"
    return cached(JsonStore(path, redo="delete it to measure it again"),
                  config_hash("train-fit", run.key), compute)


def tail_overlap_row(cfg, runtime) -> dict:
    """The regime's ``analysis.tail_overlap`` (does the poison reach the clean samples' far
    tail, where Burn selects?) from its committed model and distances; {} while its DeepFool
    distances are not committed (this never starts a DeepFool run)."""
    from .analysis import tail_overlap
    from .distances import stored_distances
    from .experiment import attacked_model, results_dir

    d = results_dir(cfg, runtime.results_root)
    if not (d / "burn.json").is_file():
        return {}
    # the distances Burn used, as committed; None if missing or of another model/config
    bd = stored_distances(d / "deepfool.npz", read_json(d / "burn.json")["deepfool"]["key"])
    if bd is None:
        return {}
    run = attacked_model(cfg, replace(runtime, progress=False))
    t = tail_overlap(bd["norms"], run.poisoned.poison_mask)
    return {"clean_q995": t["clean_at_q"], "poisoned_median": t["poisoned_median"],
            "poisoned_beyond_clean_q995": t["poisoned_beyond_clean_q"],
            "precision_beyond_clean_q995": t["precision_beyond_clean_q"]}


def fit_row(cfg, runtime) -> dict:
    """The regime's fit to its own training set (``training_fit``); {} while its model is not
    trained (this never trains)."""
    from .experiment import attacked_model, results_dir

    if not (results_dir(cfg, runtime.results_root) / "model.pt").is_file():
        return {}
    fit = training_fit(attacked_model(cfg, replace(runtime, progress=False)))
    return {k: fit[k] for k in ("train_acc_clean", "train_loss_clean", "train_acc_poisoned",
                                "train_loss_poisoned")}


def regime_study(path, runtime, *, run: bool = False, include_gpu: bool = False,
                 only: list[str] | None = None) -> pd.DataFrame:
    """With ``run``, train / DeepFool / Burn each selected regime that lacks results (each
    stage resumes from its cache); always return the table of what exists."""
    from .defense_stage import defense_run
    from .experiment import attack_by_class, attacked_model

    preset, attack, regimes = load_regimes(path)
    rows = []
    for regime in regimes:
        cfg = regime_cfg(preset, attack, regime)
        selected = (only is None or (regime.name or preset) in only) and (regime.needs != "gpu" or include_gpu)
        if run and selected:
            r = attacked_model(cfg, runtime)
            attack_by_class(r)  # asr_by_class.csv beside none.json: where the trigger loses
            defense_run(r, "burn")
        rows.append(regime_row(cfg, regime, runtime.results_root) | fit_row(cfg, runtime)
                    | tail_overlap_row(cfg, runtime))
    return pd.DataFrame(rows)


def regime_csv_path(path, results_root=None) -> Path:
    preset, attack, _ = load_regimes(path)
    cfg = load_preset(preset, {"attack": {"name": attack}})
    return Path(results_root or PROJECT_ROOT / "results") / preset / cfg.data.dataset / attack / "regime.csv"
