"""The computations behind each table and figure of the paper. Notebooks call these, save the
returned DataFrames with ``provenance.save_table`` and plot them with ``plotting``.

Every function takes attacked-model runs (``experiment.AttackRun``) whose expensive parts (the
model, the DeepFool distances of the whole training set) come from the committed results or
the run cache, so rerunning a notebook after a plot change costs seconds.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import keys
from . import published
from .analysis import auroc, roc_curve, top_fraction_stats
from .cache import config_hash, load_npz, read_json, save_npz
from .config import PROJECT_ROOT, artifact_cfg
from .data import dataset_spec
from .deepfool import deepfool
from .defense_stage import defense_run, make_defense, matching_record
from .defenses.burn import finetune
from .distances import boundary_distances, subset_distances
from .experiment import AttackRun, attacked_model, results_dir
from .metrics import evaluate
from .models import to_model_format
from .runtime import Runtime
from .stages import EntryStore, cached


def attack_label(name: str) -> str:
    from .attacks import ATTACKS

    return ATTACKS[name].label if name in ATTACKS else name


PAPER_ATTACKS = ("badnets", "blended", "inputaware", "lc", "lf", "ssba", "trojannn")
PAPER_DEFENSES = ("burn", "fp", "nad", "anp", "ibau", "ftsam", "sau")
DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tiny": "Tiny-ImageNet-200",
                  "synthetic": "synthetic"}

def load_runs(preset: str, dataset: str, attacks, runtime: Runtime = Runtime()) -> dict[str, AttackRun]:
    """Attacked models of ``attacks`` (trained, or loaded from the committed results)."""
    runs = {}
    for a in attacks:
        runs[a] = attacked_model(artifact_cfg(preset, dataset, a), runtime)
    return runs


def sample_generator(name: str, seed: int) -> torch.Generator:
    """A generator of its own for the analysis sample ``name``. Seeding one with the bare
    ``seed`` would replay the attack's draw (``randperm(N)`` under ``train.seed``), so a
    sample of the training set would be exactly the poisoned samples."""
    return torch.Generator().manual_seed(int(config_hash("sample", name, seed), 16) % 2**62)


def _sample(mask: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded indices of up to ``n`` clean and ``n`` poisoned samples."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for pool in ((~mask).nonzero().squeeze(1), mask.nonzero().squeeze(1)):
        out.append(pool[torch.randperm(len(pool), generator=g)[:n]].sort().values)
    return out[0], out[1]


def table1_boundary_distance(runs: dict[str, AttackRun], *, n: int = 1000, seed: int = 0,
                             clean_run: AttackRun | None = None) -> pd.DataFrame:
    """Mean / median DeepFool distance of ``n`` clean and ``n`` poisoned training samples per
    attack, beside the paper's Table 1 (raw values and the poisoned/clean ratio).

    With ``clean_run`` (the model trained without poison), a row ``clean`` holds the distance
    of ``n`` of its training samples (DeepFool on those only, committed as
    ``deepfool_table1.npz``), and every attack row gets ``ratio_mean_vs_clean_model``: the
    paper's single "Clean" column per dataset may be that model rather than the clean samples
    of each attacked model, so both readings are given."""
    rows = []
    paper = published.values("paper_table1").get(next(iter(runs.values())).cfg.data.dataset, {}) if runs else {}
    clean_model_mean = float("nan")
    if clean_run is not None:
        ci, _ = _sample(clean_run.poisoned.poison_mask, n, seed)
        bd = subset_distances(clean_run, ci, name="table1")
        norms = bd["norms"].double()
        clean_model_mean = float(norms.mean())
        rows.append({"dataset": clean_run.poisoned.name.split(",")[0], "attack": "clean",
                     "model": "clean model", "n_clean": len(ci), "n_poisoned": 0,
                     "mean_clean": clean_model_mean, "median_clean": float(norms.median()),
                     "unconverged_clean": int((~bd["converged"].bool()).sum()), "unconverged_poisoned": 0,
                     "paper_clean": paper.get("clean", float("nan"))})
    for name, run in runs.items():
        bd = boundary_distances(run)
        mask = run.poisoned.poison_mask
        ci, pi = _sample(mask, n, seed)
        norms, conv = bd["norms"].double(), bd["converged"].bool()
        row = {"dataset": run.poisoned.name.split(",")[0], "attack": name, "model": "attacked model",
               "variant": run.cfg.variant,
               "n_clean": len(ci), "n_poisoned": len(pi),
               "mean_clean": float(norms[ci].mean()), "median_clean": float(norms[ci].median()),
               "mean_poisoned": float(norms[pi].mean()) if len(pi) else float("nan"),
               "median_poisoned": float(norms[pi].median()) if len(pi) else float("nan"),
               "unconverged_clean": int((~conv[ci]).sum()), "unconverged_poisoned": int((~conv[pi]).sum()),
               "paper_clean": paper.get("clean", float("nan")),
               "paper_poisoned": paper.get(name, float("nan"))}
        row["ratio_mean"] = row["mean_poisoned"] / row["mean_clean"]
        row["ratio_median"] = row["median_poisoned"] / row["median_clean"]
        row["ratio_mean_vs_clean_model"] = row["mean_poisoned"] / clean_model_mean
        row["paper_ratio"] = row["paper_poisoned"] / row["paper_clean"]
        rows.append(row)
    return pd.DataFrame(rows)


def tail_under_clean_model(run: AttackRun, clean_run: AttackRun, *, fraction: float = 0.005,
                           n_reference: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Why the top of the distance ranking is not poison: is its far tail made by the backdoor
    or is it there without one? The top ``fraction`` of the attacked model's training set by
    distance (Burn's ``P_0``) is measured again under ``clean_run``, the same architecture
    trained on the same data without poison (for a poisoned sample, its image without the
    trigger), beside ``n_reference`` random training samples under that clean model.

    Returns one row per sample (``group`` "tail" or "reference") and a summary: the share of
    the tail's clean samples whose adversarial label is the target under each model, and
    where their clean-model distance falls in the reference distribution (its percentile)."""
    bd = boundary_distances(run)
    p, target = run.poisoned, run.cfg.attack.target
    k = round(fraction * len(p))
    tail = torch.argsort(bd["norms"].float(), descending=True, stable=True)[:k].sort().values
    ref = torch.randperm(len(p), generator=sample_generator("tail-reference", seed))[:n_reference].sort().values
    name = run.cfg.attack.name
    ct = subset_distances(clean_run, tail, name=f"tail_{name}")
    cr = subset_distances(clean_run, ref, name="reference")
    ref_sorted = cr["norms"].double().sort().values
    pct = torch.searchsorted(ref_sorted, ct["norms"].double()).double() / len(ref_sorted)

    def frame(group, idx, under_clean, percentile):
        return pd.DataFrame({
            "attack": name, "group": group, "index": idx.numpy(), "poisoned": p.poison_mask[idx].numpy(),
            "true_label": p.original_labels[idx].numpy(),
            "distance_attacked": bd["norms"][idx].float().numpy(),
            "adv_label_attacked": bd["adv_labels"][idx].long().numpy(),
            "distance_clean_model": under_clean["norms"].numpy(),
            "adv_label_clean_model": under_clean["adv_labels"].long().numpy(),
            "clean_model_percentile": percentile})

    rows = pd.concat([frame("tail", tail, ct, pct.numpy()), frame("reference", ref, cr, float("nan"))],
                     ignore_index=True)
    t = rows[(rows.group == "tail") & ~rows.poisoned]
    r = rows[rows.group == "reference"]
    summary = {
        "attack": name, "fraction": fraction, "n_tail": k, "n_tail_clean": len(t),
        "tail_clean_adv_is_target_attacked": float((t.adv_label_attacked == target).mean()) if len(t) else None,
        "tail_clean_adv_is_target_clean_model": float((t.adv_label_clean_model == target).mean()) if len(t) else None,
        "reference_adv_is_target_clean_model": float((r.adv_label_clean_model == target).mean()),
        "tail_clean_median_percentile_clean_model": float(t.clean_model_percentile.median()) if len(t) else None,
        "tail_clean_share_above_clean_model_p90": float((t.clean_model_percentile >= 0.9).mean()) if len(t) else None,
        "tail_clean_mean_distance_clean_model": float(t.distance_clean_model.mean()) if len(t) else None,
        "reference_mean_distance_clean_model": float(r.distance_clean_model.mean()),
        "tail_clean_classes": {p.classes[c]: int(v) for c, v in t.true_label.value_counts().sort_index().items()},
    }
    return rows, summary


def adversarial_labels(runs: dict[str, AttackRun], *, n: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Fig. 2: for ``n`` clean and ``n`` poisoned samples per attack, the share of each
    adversarial label, and whether it is the sample's true label or the target."""
    rows = []
    for name, run in runs.items():
        bd = boundary_distances(run)
        mask = run.poisoned.poison_mask
        target = run.cfg.attack.target
        for group, idx in zip(("clean", "poisoned"), _sample(mask, n, seed)):
            if not len(idx):
                continue
            adv, true = bd["adv_labels"][idx].long(), run.poisoned.original_labels[idx]
            counts = torch.bincount(adv, minlength=len(run.poisoned.classes))
            for c, k in enumerate(counts.tolist()):
                rows.append({"attack": name, "group": group, "adv_label": c,
                             "class": run.poisoned.classes[c], "share": k / len(idx),
                             "share_true_label": float((adv == true).float().mean()),
                             "share_target": float((adv == target).float().mean()),
                             "n": len(idx)})
    return pd.DataFrame(rows)


def filtering(runs: dict[str, AttackRun], *, fractions=(0.005, 0.01, 0.05, 0.1),
              roc_points: int = 200, dist_samples: int = 5000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Fig. 5: how well the distance separates poisoned from clean training samples.
    Returns (summary: AUROC and top-fraction precision/recall; ROC points; a seeded sample of
    per-sample distances for the distribution plot: up to ``dist_samples`` of each group, drawn
    apart from the attack's poison draw)."""
    summary, roc, dist = [], [], []
    for name, run in runs.items():
        bd = boundary_distances(run)
        mask = run.poisoned.poison_mask
        norms = bd["norms"].float()
        row = {"attack": name, "auroc": auroc(norms, mask), "n": len(norms), "n_poisoned": int(mask.sum())}
        # the poison relabeling can repair: samples whose given label is wrong (with
        # BackdoorBench's pool, target-class images carry the trigger under their own label)
        mislabeled = run.poisoned.labels != run.poisoned.original_labels
        row["n_poisoned_target_class"] = int((mask & ~mislabeled).sum())
        for f in fractions:
            s = top_fraction_stats(norms, mask, f)
            row[f"top{f * 100:g}pct_precision"] = s["precision"]
            row[f"top{f * 100:g}pct_recall"] = s["recall"]
            row[f"top{f * 100:g}pct_mislabeled_precision"] = top_fraction_stats(norms, mislabeled, f)["precision"]
        summary.append(row)
        fpr, tpr = roc_curve(norms, mask, roc_points)
        roc.extend({"attack": name, "fpr": float(a), "tpr": float(b)} for a, b in zip(fpr, tpr))
        g = sample_generator("fig5-distances", seed)
        for group, pool in (("clean", (~mask).nonzero().squeeze(1)), ("poisoned", mask.nonzero().squeeze(1))):
            pick = pool[torch.randperm(len(pool), generator=g)[:dist_samples]].sort().values
            dist.extend({"attack": name, "index": i, "distance": float(norms[i]), "group": group}
                        for i in pick.tolist())
    return pd.DataFrame(summary), pd.DataFrame(roc), pd.DataFrame(dist)


@torch.no_grad()
def _features(model, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model.features(to_model_format(model, x))


def feature_similarity(run: AttackRun, *, n: int = 500, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Fig. 1: cosine similarity of penultimate features between a clean training image x,
    its poisoned version T(x), and T(x) after its DeepFool perturbation, for ``n`` non-target
    clean training images. Returns per-sample similarities and one example (images + values).

    The per-sample numbers are stored beside the model (``fig1_similarity.npz``, keyed by the
    model, the DeepFool config and the images) and read back on a rerun: recomputed on another
    CPU they would differ in the fifth digit, and a cached rerun must leave the files as they
    are."""
    p = run.poisoned
    pool = ((~p.poison_mask) & (p.original_labels != run.cfg.attack.target)).nonzero().squeeze(1)
    g = torch.Generator().manual_seed(seed)
    idx = pool[torch.randperm(len(pool), generator=g)[:n]].sort().values
    x = p.images[idx].float() / 255
    xt = run.attack.triggered(p.images[idx]).float() / 255
    path = run.results_dir / "fig1_similarity.npz"
    key = keys.similarity_key(run.key, run.cfg.deepfool, idx.tolist())
    true = p.original_labels[idx].numpy()
    cols = _similarity_columns(run, x, xt, true, path, key)
    df = pd.DataFrame({"attack": run.cfg.attack.name, "index": idx.numpy(), "true_label": true,
                       **{k: v for k, v in cols.items() if k not in ("example", "x_adv_example")}})
    i = int(cols["example"])
    example = {"clean": x[i], "poisoned": xt[i], "perturbed": torch.from_numpy(cols["x_adv_example"]),
               "cos_clean_poisoned": float(df.cos_clean_poisoned[i]),
               "cos_clean_perturbed": float(df.cos_clean_perturbed[i]),
               "true_class": p.classes[int(df.true_label[i])], "adv_class": p.classes[int(df.adv_label[i])]}
    return df, example


def _similarity_columns(run: AttackRun, x, xt, true, path, key) -> dict:
    """Fig. 1's per-sample arrays (stored at ``path`` under ``key``, computed if missing)."""
    if path.is_file():
        z = load_npz(path, hint="delete it to compute Fig. 1's similarities again")
        if str(z.pop("key")) == key:
            return z
    cfg = run.cfg.deepfool
    res = deepfool(run.model, xt, num_candidates=cfg.num_candidates, overshoot=cfg.overshoot,
                   max_iter=cfg.max_iter, step_eps=cfg.step_eps)
    fx, ft, fa = _features(run.model, x), _features(run.model, xt), _features(run.model, res.x_adv)
    cos = torch.nn.functional.cosine_similarity
    cols = {"cos_clean_poisoned": cos(fx, ft).numpy(), "cos_clean_perturbed": cos(fx, fa).numpy(),
            "adv_label": res.adv_labels.numpy(), "distance": res.norms.numpy(),
            "converged": res.converged.numpy()}
    # the example: a typical sample (the median gain) among those that flipped back
    gain = cols["cos_clean_perturbed"] - cols["cos_clean_poisoned"]
    back = np.flatnonzero(cols["adv_label"] == true)
    pool = back if len(back) else np.arange(len(gain))
    i = int(pool[np.argsort(gain[pool], kind="stable")[len(pool) // 2]])
    cols |= {"example": np.array(i), "x_adv_example": res.x_adv[i].numpy()}
    save_npz(path, key=np.array(key), **cols)
    return cols


def unlearning_budget(run: AttackRun, *, budgets=(0, 5, 10, 20, 30, 50, 100, 200),
                      n_clean: int = 2500, labels: str = "adversarial", seed: int = 0) -> pd.DataFrame:
    """Fig. 6: ACC / ASR after one Burn fine-tuning iteration (the spec's recipe) on N truly
    poisoned samples with restored labels (``labels="adversarial"``: their DeepFool labels, as
    Burn would; ``"true"``: the oracle labels) plus ``n_clean`` random clean samples.

    Each budget's row is kept in ``unlearning_budget.json`` beside the attacked model, keyed
    by everything it depends on, and written as soon as it is measured: a rerun (after a plot
    change, or an interruption) recomputes only the missing budgets."""
    bd = boundary_distances(run)
    p = run.poisoned
    cfg = make_defense(run.cfg, "burn")  # Burn's fine-tuning settings
    store = run.results_dir / "unlearning_budget.json"
    g = torch.Generator().manual_seed(seed)
    pois = p.poison_idx[torch.randperm(len(p.poison_idx), generator=g)]
    clean = (~p.poison_mask).nonzero().squeeze(1)
    clean = clean[torch.randperm(len(clean), generator=g)[:n_clean]]

    def measure(n: int) -> dict:
        pi = pois[:n]
        relabel = bd["adv_labels"][pi].long() if labels == "adversarial" else p.original_labels[pi]
        idx = torch.cat([pi, clean])
        y = torch.cat([relabel, p.labels[clean]])
        model = finetune(copy.deepcopy(run.model), p.images[idx], y, cfg,
                         torch.Generator().manual_seed(cfg.seed),
                         flip=dataset_spec(run.cfg.data.dataset).flip)
        m = evaluate(model, run.test, run.poisoned_test, run.cfg.attack.target)
        return {"attack": run.cfg.attack.name, "n_poisoned": n, "n_clean": len(clean),
                "labels": labels,
                "label_is_true": float((relabel == p.original_labels[pi]).float().mean()) if n else None,
                **m}

    rows = []
    for n in budgets:
        key = keys.unlearning_budget_key(run.key, bd["key"], cfg, n, n_clean, labels, seed)
        rows.append(cached(EntryStore(store, key), key, lambda n=n: measure(n)))
    return pd.DataFrame(rows).astype({"label_is_true": float})


def model_record(path: Path) -> dict | None:
    """The record at ``path`` where it belongs to the model stored beside it: the attacked
    model's ``none.json`` itself, or a run made on that model (its ``attack_config_hash``); a
    run left from another model (one trained again since) is not that model's: None."""
    if not path.is_file():
        return None
    record = read_json(path)
    if path.name == "none.json":
        return record
    model = path.parent / "none.json"
    same = model.is_file() and record.get("attack_config_hash") == read_json(model).get("config_hash")
    return record if same else None


def defense_tradeoff(preset: str, dataset: str, attacks=PAPER_ATTACKS, defenses=PAPER_DEFENSES,
                     *, results_root=None) -> tuple[pd.DataFrame, list[str]]:
    """Fig. 4: ACC and ASR of every (attack, defense) whose results exist, plus the attacked
    model (defense "none"). Runs with non-default options (``<defense>_<tag>.json``: Burn's
    suspect-class selection, FP's and ANP's BackdoorBench test-set rule) are added as defense
    ``<defense>:<tag>`` with ``opt_in`` true, beside the default, never in its place. Other
    seeds' records (``seeds/<n>/``) are rows of their ``seed``; a record made on another model
    than the one stored beside it is left out. Returns the table and the list of missing
    combinations, which the figure names instead of faking them."""
    rows, missing = [], []
    for a in attacks:
        d = results_dir(artifact_cfg(preset, dataset, a), results_root)
        files = [(defense, d / f"{defense}.json", False) for defense in ("none", *defenses)]
        for defense in defenses:
            files += [(f"{defense}:{f.stem[len(defense) + 1:]}", f, True)
                      for f in sorted(d.glob(f"{defense}_*.json"))]
        for defense, f, opt_in in files:
            if not f.is_file():
                missing.append(f"{a}/{defense}")
            # seed 0 is the record itself; seed n, where run, is under seeds/<n>/
            seeds = [(0, f)] + sorted((int(p.parent.name), p) for p in d.glob(f"seeds/*/{f.name}")
                                      if p.parent.name.isdigit())
            for seed, path in seeds:
                if (r := model_record(path)) is not None:
                    rows.append({"attack": a, "defense": defense, "opt_in": opt_in, "seed": seed,
                                 "acc": r["acc"], "asr": r["asr"], "ra": r["ra"]})
    return pd.DataFrame(rows, columns=["attack", "defense", "opt_in", "seed", "acc", "asr", "ra"]), missing


def ablation(run: AttackRun, *, alphas=(0.005, 0.01, 0.02), betas=(0.025, 0.05, 0.1),
             fixed_alpha: float = 0.01, fixed_beta: float = 0.05) -> pd.DataFrame:
    """Table 2: Burn's final ACC/ASR with the poison fraction alpha varied at fixed beta, and
    beta varied at fixed alpha (alpha / beta are the end values of the schedules; the start
    values keep the spec's ratio start = end / 2). Each run is stored under
    ``<results>/ablation/`` and reused."""
    rows = []
    grid = [("alpha", a, fixed_beta) for a in alphas] + [("beta", fixed_alpha, b) for b in betas]
    preset_burn = make_defense(run.cfg, "burn")
    for varied, a, b in grid:
        burn = replace(preset_burn, alpha_start=a / 2, alpha_end=a, beta_start=b / 2, beta_end=b)
        out = run.results_dir / "ablation" / keys.ablation_key(run.key, burn)
        rec = matching_record([out / "burn.json", run.results_dir / "burn.json"], run.key, burn, run)
        if rec is None:
            rec = defense_run(run, "burn", defense=burn, out_dir=out)
        rows.append({"attack": run.cfg.attack.name, "varied": varied, "alpha": a, "beta": b,
                     "acc": rec["acc"], "asr": rec["asr"], "ra": rec["ra"],
                     "precision_final": rec["report"]["iterations"][-1].get("precision")})
    return pd.DataFrame(rows)
