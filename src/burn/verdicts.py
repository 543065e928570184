"""Paper vs ours: for each claim of the paper that a notebook tests, the paper's claim, our
number at seed 0 and over seeds, a verdict (holds / holds in part / does not hold) and its
mechanism. The verdict and the numbers are computed here from the notebook's own table
(``results/<preset>/<dataset>/*.csv``) and the runs' records over seeds; the prose comes from
``claims.yaml``. One rendering serves the notebooks' closing cell, ``paper_vs_ours.md``, the
README and the findings page, so the four cannot state different verdicts."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import pandas as pd
import yaml

from .artifacts import attack_label
from .overseeds import REMOVED_AT, OverSeeds, over_seeds, within

CLAIMS_FILE = Path(__file__).with_name("claims.yaml")
HOLDS, IN_PART, FAILS, NOT_RUN = "holds", "holds in part", "does not hold", "not run"
BASELINES = ("fp", "nad", "anp", "ibau", "ftsam", "sau")
MOSTLY_POISON = 0.5  # Fig. 5: Burn's first selection (top 0.5%) is "mostly poison" above this
FEW_POISONS = 50  # Fig. 6: "a few dozen" relabeled poisons, 1% of BackdoorBench's 5,000


@dataclass(frozen=True)
class Verdict:
    claim: str
    title: str
    notebook: str
    paper: str
    ours: str  # seed 0, from the notebook's table
    seeds: str  # over the seeds the records hold ("seed 0 only" where there are none)
    verdict: str
    mechanism: str
    link: str  # from the repository root


@lru_cache(maxsize=None)
def claims() -> dict:
    """``claims.yaml``: ``{claim: {title, notebook, paper, mechanism, link}}``."""
    data = yaml.safe_load(CLAIMS_FILE.read_text())
    for name, c in data.items():
        missing = {"title", "notebook", "paper", "mechanism", "link"} - set(c)
        if missing:
            raise ValueError(f"{CLAIMS_FILE}: claim {name!r} lacks {sorted(missing)}")
    return data


def verdict_of(k: int, n: int) -> str:
    """``holds`` when all ``n`` cases hold, ``holds in part`` for some, else ``does not hold``."""
    if n == 0:
        return NOT_RUN
    return HOLDS if k == n else IN_PART if k else FAILS


class Evidence:
    """What the verdicts read: the notebooks' tables in ``res`` (``results/<preset>/<dataset>``)
    and each attack's records over seeds."""

    def __init__(self, res: Path):
        self.res = Path(res)

    def table(self, name: str) -> pd.DataFrame | None:
        p = self.res / f"{name}.csv"
        return pd.read_csv(p) if p.is_file() else None

    def over_seeds(self, attack: str, stem: str, name: str) -> OverSeeds:
        """Field ``name`` of record ``<stem>.json`` over the attack's seeds."""
        from .artifacts import model_record

        pairs = []
        for seed, d in seed_dirs(artifact_dir(self.res, attack)).items():
            pairs.append((seed, record_field(model_record(d / f"{stem}.json"), name)))
        return over_seeds(pairs)


def artifact_dir(res: Path, attack: str) -> Path:
    """The folder the tables read ``attack`` from: the preset's own, or the variant its
    ``artifact_variants`` names (``res`` is ``results/<preset>/<dataset>``)."""
    from .config import artifact_cfg, available_presets
    from .experiment import results_dir

    preset = res.parent.name
    if preset not in available_presets():
        return res / attack
    return results_dir(artifact_cfg(preset, res.name, attack), res.parent.parent)


def seed_dirs(run_dir: Path) -> dict[int, Path]:
    """``{seed: folder}`` of a run's seeds that have an attacked model's record."""
    dirs = {0: run_dir} | {int(p.name): p for p in (run_dir / "seeds").glob("*") if p.name.isdigit()}
    return {s: d for s, d in sorted(dirs.items()) if (d / "none.json").is_file()}


def record_field(record: dict, name: str):
    """``record``'s field ``name``; ``a.b`` reads field ``b`` of ``a`` (``b`` may hold dots,
    as ``top0.5pct_precision`` does)."""
    if not isinstance(record, dict):
        return None
    if name in record:
        return record[name]
    head, _, rest = name.partition(".")
    return record_field(record.get(head), rest) if rest else None


CLAIM_RULES: dict[str, Callable[[Evidence], tuple[str, str, str] | None]] = {}


def rule(name: str, table: str):
    """Registers the function computing claim ``name``'s (ours, seeds, verdict) from the
    notebook's ``table`` (``fn(evidence, df)``); without the table the claim is not run."""
    def register(fn):
        def run(ev: Evidence):
            df = ev.table(table)
            return None if df is None or df.empty else fn(ev, df)
        CLAIM_RULES[name] = run
        return fn
    return register


def verdict(claim: str, res: Path) -> Verdict:
    """The verdict of ``claim`` on the results in ``res``."""
    c = claims()[claim]
    out = CLAIM_RULES[claim](Evidence(res))
    ours, seeds, word = out if out else ("not run yet", "", NOT_RUN)
    return Verdict(claim, c["title"], c["notebook"], c["paper"], ours, seeds or "seed 0 only",
                   word, c["mechanism"], c["link"])


def all_verdicts(res: Path) -> list[Verdict]:
    return [verdict(c, res) for c in claims()]


def _per_attack(ev: Evidence, attacks, stem: str, name: str, spec=".2f") -> tuple[str, list]:
    """``BadNets 2.04 [1.90, 2.10] (3 seeds); ...`` for the attacks with more than one seed,
    and every (attack, value) pair over seeds."""
    parts, values = [], []
    for a in attacks:
        s = ev.over_seeds(a, stem, name)
        values += [(a, v) for v in s.values.values()]
        if s.n > 1:
            parts.append(f"{attack_label(a)} {s.median_text(spec)} ({s.n} seeds)")
    return "; ".join(parts), values


def _above(values: pd.Series, at: float, what: str) -> tuple[str, int]:
    """``BadNets 0.69, ...: <what> on k of n attacks`` (k: values above ``at``) and k."""
    k = int((values > at).sum())
    listed = ", ".join(f"{attack_label(a)} {v:.2f}" for a, v in values.items())
    return f"{listed}: {what} on {k} of {len(values)} attacks", k


def _span(values, spec=".2f") -> str:
    return f"{min(values):{spec}}-{max(values):{spec}}"


@rule("table1", "table1_boundary_distance")
def _table1(ev: Evidence, df: pd.DataFrame):
    df = df[df["model"] == "attacked model"]
    k, n = int((df["ratio_mean"] > 1).sum()), len(df)
    ours = (f"mean distance poisoned / clean {_span(df['ratio_mean'])} (paper "
            f"{_span(df['paper_ratio'])}), above 1 on {k} of {n} attacks (1,000 samples each)")
    text, values = _per_attack(ev, df["attack"], "burn", "deepfool.mean_ratio")
    k_all = sum(v > 1 for _, v in values)
    seeds = (f"ratio over the whole training set above 1 in {k_all} of {len(values)} models; "
             f"median [range]: {text}") if text else ""
    return ours, seeds, verdict_of(k_all, len(values)) if values else verdict_of(k, n)


@rule("fig1", "fig1_feature_similarity")
def _fig1(ev: Evidence, df: pd.DataFrame):
    g = df.groupby("attack", sort=False)[["cos_clean_poisoned", "cos_clean_perturbed"]].mean()
    k = int((g["cos_clean_perturbed"] > g["cos_clean_poisoned"]).sum())
    ours = (f"mean cosine to the clean features {_span(g['cos_clean_poisoned'])} (poisoned) -> "
            f"{_span(g['cos_clean_perturbed'])} (perturbed); higher after the perturbation on "
            f"{k} of {len(g)} attacks")
    return ours, "", verdict_of(k, len(g))


@rule("fig2", "fig2_adversarial_labels")
def _fig2(ev: Evidence, df: pd.DataFrame):
    p = df[df["group"] == "poisoned"].groupby("attack", sort=False)["share_true_label"].first()
    listed, k = _above(p, 0.5, "a majority")
    return f"share of poisoned samples whose adversarial label is their true class {listed}", "", \
        verdict_of(k, len(p))


@rule("fig5", "fig5_filtering")
def _fig5(ev: Evidence, df: pd.DataFrame):
    top = df.set_index("attack")["top0.5pct_precision"]
    listed, k = _above(top, MOSTLY_POISON, "mostly poison")
    ours = f"AUROC {_span(df['auroc'], '.3f')}; poison in Burn's first selection (top 0.5%) {listed}"
    text, values = _per_attack(ev, df["attack"], "burn", "deepfool.top0.5pct_precision")
    k_all = sum(v > MOSTLY_POISON for _, v in values)
    seeds = (f"top 0.5% mostly poison in {k_all} of {len(values)} models; median [range]: "
             f"{text}") if text else ""
    return ours, seeds, verdict_of(k_all, len(values)) if values else verdict_of(k, len(top))


def burn_over_seeds(df: pd.DataFrame, attack: str, defense: str = "burn",
                    seeds=None) -> tuple[OverSeeds, OverSeeds]:
    """(ASR, ACC lost against the attacked model of the same seed) of ``defense`` on
    ``attack`` over the seeds of ``df`` (Fig. 4's columns; ``seeds``: only these)."""
    rows = df[(df["attack"] == attack)]
    base = rows[rows["defense"] == "none"].set_index("seed")["acc"]
    run = rows[rows["defense"] == defense]
    if seeds is not None:
        run = run[run["seed"].isin(list(seeds))]
    asr = over_seeds(zip(run["seed"], run["asr"]))
    lost = over_seeds((s, 100 * (base[s] - a)) for s, a in zip(run["seed"], run["acc"]) if s in base)
    return asr, lost


def removed_text(asr: OverSeeds) -> str:
    """``removed in 2 of 3 seeds (ASR 0.051, 0.216, 0.061; median 0.061 [0.051, 0.216])``."""
    if asr.n == 0:
        return "not run"
    if asr.n == 1:
        word = "removed" if asr.count() else "not removed"
        return f"{word} (ASR {asr.seeds_text()}, seed {next(iter(asr.values))} only)"
    return f"removed in {asr.k_of_n_text()}: ASR {asr.seeds_text()}, median {asr.median_text()}"


@rule("fig4", "fig4_defense_tradeoff")
def _fig4(ev: Evidence, df: pd.DataFrame):
    if not (df["defense"] == "burn").any():
        return None
    attacks = list(dict.fromkeys(df["attack"]))
    zero = df[(df["defense"] == "burn") & (df["seed"] == 0)].set_index("attack")
    removed0 = [a for a in attacks if a in zero.index and within(zero.loc[a, "asr"])]
    ours = (f"ASR <= {REMOVED_AT:.2f} on {len(removed0)} of {len(zero)} attacks ("
            + (", ".join(attack_label(a) for a in removed0) or "none") + ")")
    from .report import seed_records

    records, parts, most = seed_records(ev.res, attacks), [], 0  # the seeds as committed now
    for a in attacks:
        asr, lost = burn_over_seeds(records, a)
        most += 2 * asr.count() > asr.n
        parts.append(f"{attack_label(a)}: {removed_text(asr)}"
                     + (f", ACC lost {lost.median_text('.1f')} points" if lost.n else ""))
    seeds = "; ".join(parts)
    return ours, seeds, verdict_of(most, len(attacks))


@rule("baselines", "fig4_defense_tradeoff")
def _baselines(ev: Evidence, df: pd.DataFrame):
    wins, cases, lowest0 = 0, 0, []
    for (a, seed), g in df.groupby(["attack", "seed"], sort=False):
        asr = g.set_index("defense")["asr"]
        others = [d for d in BASELINES if d in asr]
        if "burn" not in asr or not others:
            continue
        win = asr["burn"] <= min(asr[d] for d in others)
        wins, cases = wins + win, cases + 1
        if seed == 0:
            lowest0.append((a, win))
    ours = (f"Burn's ASR the lowest of seven on {sum(w for _, w in lowest0)} of {len(lowest0)} "
            "attacks (" + (", ".join(attack_label(a) for a, w in lowest0 if w) or "none") + ")")
    seeds = (f"lowest in {wins} of {cases} (attack, seed) pairs where baselines ran on the same seed"
             if cases > len(lowest0) else "")
    return ours, seeds, verdict_of(wins, cases)


@rule("fig6", "fig6_unlearning_budget")
def _fig6(ev: Evidence, df: pd.DataFrame):
    parts, k = [], 0
    for a, g in df.groupby("attack", sort=False):
        ok = g[within(g["asr"]) & (g["n_poisoned"] > 0)]
        n = int(ok["n_poisoned"].min()) if len(ok) else None
        k += n is not None and n <= FEW_POISONS
        parts.append(f"{attack_label(a)}: ASR <= {REMOVED_AT:.2f} from N = {n}" if n is not None
                     else f"{attack_label(a)}: ASR above {REMOVED_AT:.2f} at every N")
    n_att = df["attack"].nunique()
    return "; ".join(parts) + f" (at most {FEW_POISONS} on {k} of {n_att})", "", verdict_of(k, n_att)


@rule("table2", "table2_ablation")
def _table2(ev: Evidence, df: pd.DataFrame):
    runs = df.drop_duplicates(["alpha", "beta"])
    k = int(within(runs["asr"]).sum())
    ours = (f"{attack_label(runs['attack'].iloc[0])}: removed at "
            + ", ".join(f"alpha {r.alpha:g} / beta {r.beta:g} ({r.asr:.3f})" for r in runs.itertuples()
                        if within(r.asr)) + f"; {k} of {len(runs)} settings") if k else \
        f"removed at none of {len(runs)} settings"
    return ours, "", verdict_of(k, len(runs))


# Rendering. A marker ``<!-- verdict CLAIM: WORD -->`` travels with every rendering, so a test
# can read the verdict each place states (tests/unit/test_verdicts.py).
def marker(v: Verdict) -> str:
    return f"<!-- verdict {v.claim}: {v.verdict} -->"


def verdict_markdown(v: Verdict, link_prefix: str = "", *, mechanism: bool = True) -> str:
    """A claim's closing section: the paper, ours at seed 0 and over seeds, the verdict and its
    mechanism (``link_prefix``: the way from the page to the repository root; without
    ``mechanism`` for the findings page, whose prose follows the block)."""
    why = f" {v.mechanism} ([findings]({link_prefix}{v.link}))" if mechanism else ""
    return "\n".join([
        f"### Paper vs ours: {v.verdict.upper()} {marker(v)}", "",
        f"- **Claim** ({v.title}): {v.paper}",
        f"- **Ours, seed 0:** {v.ours}.",
        f"- **Over seeds:** {v.seeds}.",
        f"- **Verdict: {v.verdict}.**{why}"])


def verdicts_table(vs: list[Verdict], link_prefix: str = "") -> str:
    """One row per claim: what the paper says, the verdict, ours (README, ``paper_vs_ours``)."""
    rows = ["| claim | verdict | ours (seed 0) |", "|---|---|---|"]
    rows += [f"| [{v.title}]({link_prefix}{v.link}) | **{v.verdict}** {marker(v)} | {v.ours} |"
             for v in vs]
    return "\n".join(rows)


def show(res, *claim_names: str) -> None:
    """The notebooks' closing cell: the verdicts of ``claim_names`` on the tables just saved in
    ``res`` (executed notebooks sit three folders below the repository root)."""
    from IPython.display import Markdown, display

    for claim in claim_names:
        display(Markdown(verdict_markdown(verdict(claim, Path(res)), link_prefix="../../../")))
