"""One function per figure: a DataFrame in, a matplotlib Figure out. One style throughout."""

from __future__ import annotations

# No backend is forced: headless runs get Agg by matplotlib's own fallback, and notebooks keep
# the inline backend, so every executed notebook shows its figures.
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns


def set_style() -> None:
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.1)


# the regime figure's panels: (title, [(column, label, marker)], x-axis limits)
REGIME_PANELS = (
    ("fit to its own training set", [("train_acc_clean", "clean samples: accuracy", "o"),
                                     ("train_acc_poisoned", "poisoned samples: accuracy", "x")], (0, 1.05)),
    ("training loss (cross-entropy)", [("train_loss_clean", "clean samples", "o"),
                                       ("train_loss_poisoned", "poisoned samples", "x")], None),
    ("attacked model", [("acc", "ACC", "o"), ("asr", "ASR", "x")], (0, 1.05)),
    ("distance as a poison detector", [("auroc", "AUROC", "o"),
                                       ("top05_precision", "precision of top 0.5% (P_0)", "x")], (0, 1.05)),
    ("after Burn (paper's defaults)", [("burn_acc", "ACC", "o"), ("burn_asr", "ASR", "x")], (0, 1.05)),
)


def regime_figure(df: pd.DataFrame, dataset: str) -> plt.Figure:
    """Regime study as a dot plot: one row per regime, one panel per question (how well the
    model fits its training set, the attacked model, the distance as a detector, Burn's
    outcome); a missing value is left out, never drawn as zero."""
    set_style()
    rows = df[df["status"] != "not run"].reset_index(drop=True)
    n = max(len(rows), 1)
    fig, axes = plt.subplots(1, len(REGIME_PANELS), figsize=(3.1 * len(REGIME_PANELS), 1.2 + 0.42 * n),
                             sharey=True, squeeze=False)
    y = list(range(len(rows)))[::-1]
    for ax, (title, series, xlim) in zip(axes[0], REGIME_PANELS):
        for color, (col, label, marker) in zip(("tab:blue", "tab:red"), series):
            if col not in rows:
                continue
            v = pd.to_numeric(rows[col], errors="coerce")
            ok = v.notna().to_numpy()
            ax.scatter(v[ok], [y[i] for i in range(len(rows)) if ok[i]], marker=marker, color=color,
                       s=36, label=label, zorder=3)
        ax.grid(axis="y", color="0.9", zorder=0)
        ax.set(title=title, xlim=xlim)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.9 / n), frameon=False)
    axes[0][0].set_yticks(y, [f"{r.regime} (w{r.width}, {r.epochs} ep)" for r in rows.itertuples()])
    fig.suptitle(f"Training regimes of the BadNets model {_paren(dataset)}: does a better-fitting model "
                 "make the distance find the poison?", fontsize=10)
    fig.tight_layout()
    return fig


def _paren(label: str) -> str:
    """``label`` in parentheses, a parenthesised part of it joined by a comma instead, so a
    title never nests them: "CIFAR-10 (JPEG copy)" -> "(CIFAR-10, JPEG copy)"."""
    return "(" + re.sub(r"\s*\(([^()]*)\)", r", \1", label) + ")"


def _attack_label(a: str) -> str:
    from .artifacts import attack_label

    return attack_label(a)


def table1_figure(df: pd.DataFrame, dataset: str) -> plt.Figure:
    """Table 1 as a picture: mean distance of clean vs poisoned samples per attack (ours), and
    the poisoned/clean ratio beside the paper's ratio (absolute values depend on the model)."""
    set_style()
    d = df.assign(attack=df["attack"].map(_attack_label))
    if "model" in d:  # the clean model's row (Table 1's "Clean" column read as a clean model)
        d.loc[d["model"] == "clean model", "attack"] = "Clean model"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    long = d.melt(id_vars="attack", value_vars=["mean_clean", "mean_poisoned"], var_name="samples",
                  value_name="distance")
    long["samples"] = long["samples"].map({"mean_clean": "clean", "mean_poisoned": "poisoned"})
    sns.barplot(long, x="attack", y="distance", hue="samples", ax=axes[0])
    axes[0].set(ylabel="mean DeepFool L2 distance\n(pixel space, [0,1] images)", xlabel="attack",
                title=f"Boundary distance, ours {_paren(dataset)}")
    names = {"ratio_mean": "ours (means)", "ratio_median": "ours (medians)",
             "ratio_mean_vs_clean_model": "ours (means, vs clean model)", "paper_ratio": "paper (means)"}
    r = d.dropna(subset=["ratio_mean"]).melt(id_vars="attack", value_vars=[c for c in names if c in d],
                                             var_name="source", value_name="ratio")
    r["source"] = r["source"].map(names)
    sns.barplot(r, x="attack", y="ratio", hue="source", ax=axes[1])
    axes[1].axhline(1.0, color="grey", lw=1, ls="--")
    axes[1].set(ylabel="poisoned / clean distance", xlabel="attack", title="Ratio, ours vs the paper")
    for ax in axes:  # slanted attack names (eight groups overlap flat); legends below the names
        _slant_names(ax)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def _slant_names(ax) -> None:
    """The x tick labels slanted, each ending under its group."""
    ax.tick_params(axis="x", labelrotation=35)
    plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")


def fig1_figure(df: pd.DataFrame, example: dict | None, dataset: str) -> plt.Figure:
    """Fig. 1: the example (clean, poisoned, poisoned + DeepFool perturbation) with feature
    cosine similarities, and their distribution over many samples."""
    set_style()
    fig = plt.figure(figsize=(11, 3.4))
    gs = fig.add_gridspec(1, 5, width_ratios=[1, 1, 1, 0.2, 2.4])
    if example is not None:
        titles = ["clean x", f"poisoned T(x)\ncos = {example['cos_clean_poisoned']:.2f}",
                  f"T(x) + DeepFool\ncos = {example['cos_clean_perturbed']:.2f}"]
        for i, (key, title) in enumerate(zip(("clean", "poisoned", "perturbed"), titles)):
            ax = fig.add_subplot(gs[0, i])
            ax.imshow(example[key].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
    ax = fig.add_subplot(gs[0, 4])
    long = df.melt(id_vars="attack", value_vars=["cos_clean_poisoned", "cos_clean_perturbed"],
                   var_name="pair", value_name="cosine")
    long["pair"] = long["pair"].map({"cos_clean_poisoned": "x vs T(x)",
                                     "cos_clean_perturbed": "x vs T(x)+DeepFool"})
    long["attack"] = long["attack"].map(_attack_label)
    sns.boxplot(long, x="attack", y="cosine", hue="pair", ax=ax, fliersize=1)
    _slant_names(ax)  # seven names side by side overlap
    ax.set(ylabel="cosine similarity of\npenultimate features", xlabel="attack",
           title=f"{len(df) // max(df['attack'].nunique(), 1)} images per attack {_paren(dataset)}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig2_figure(df: pd.DataFrame, dataset: str) -> plt.Figure:
    """Fig. 2: adversarial-label distribution of clean vs poisoned samples, per attack."""
    set_style()
    attacks = list(dict.fromkeys(df["attack"]))
    fig, axes = plt.subplots(1, len(attacks), figsize=(5.5 * len(attacks), 3.6), squeeze=False)
    for ax, a in zip(axes[0], attacks):
        d = df[df["attack"] == a]
        sns.barplot(d, x="class", y="share", hue="group", ax=ax)
        summary = d.groupby("group")[["share_true_label", "share_target"]].first()
        text = "; ".join(f"{g}: {r.share_true_label:.0%} true label, {r.share_target:.0%} target"
                         for g, r in summary.iterrows())
        ax.set(title=f"{_attack_label(a)} {_paren(dataset)}\n{text}", xlabel="adversarial label",
               ylabel="share of samples")
        ax.title.set_fontsize(9)
        ax.tick_params(axis="x", rotation=60)
        ax.set_ylim(0, d["share"].max() * 1.3)  # headroom: the legend sits above the bars
        ax.legend(fontsize=8, loc="upper center", ncol=2)
    fig.tight_layout()
    return fig


def _defense_label(name: str) -> str:
    from .defenses import DEFENSES

    base, _, tag = name.partition(":")
    label = DEFENSES[base].label if base in DEFENSES else ("No defense" if base == "none" else base)
    return f"{label} ({tag})" if tag else label


# Fig. 4's marks: one colour per method (its base defense), one marker per tagged run of it
_METHOD_COLOUR = {"none": 7, "burn": 3, "fp": 0, "nad": 1, "anp": 2, "ibau": 4, "ftsam": 5, "sau": 9}
_TAG_MARKERS = ("X", "P", "D", "s", "^", "v", "<", ">", "p", "h", "*", "d")


def _fig4_marks(names) -> dict[str, tuple]:
    """(colour, marker) per defense name ``base`` or ``base:tag``, a method's runs together:
    the method's colour (No defense black, Burn red); its plain run a circle, each tag a
    marker of its own."""
    palette = sns.color_palette("colorblind", 10)
    names = list(dict.fromkeys(names))
    bases = list(dict.fromkeys(n.partition(":")[0] for n in names))
    marks, tagged = {}, {}  # tagged: how many tagged runs of each method have a marker
    for name in sorted(names, key=lambda n: bases.index(n.partition(":")[0])):  # a method's runs together
        base, _, tag = name.partition(":")
        colour = "black" if base == "none" else palette[_METHOD_COLOUR.get(base, 8)]
        marker = "o"
        if tag:
            marker = _TAG_MARKERS[tagged.get(base, 0) % len(_TAG_MARKERS)]
            tagged[base] = tagged.get(base, 0) + 1
        marks[name] = (colour, marker)
    return marks


def _fig4_grid(n: int):
    """A figure of ``n`` attack panels and one legend cell, four to a row."""
    ncols = min(4, n + 1)
    nrows = -(-(n + 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.1 * nrows), squeeze=False,
                             sharey=True)
    cells = list(axes.flat)
    for ax in cells[n + 1:]:
        fig.delaxes(ax)
    return fig, cells[:n], cells[n]


def fig4_figure(df: pd.DataFrame, missing: list[str], dataset: str) -> plt.Figure:
    """Fig. 4: ACC vs ASR after each defense, one panel per attack (as the paper's); the
    attacked model is "No defense"; a method keeps one colour, its tagged runs (opt-ins,
    longer schedules) get their own markers; other seeds are small points of the same mark;
    missing runs are named under the figure."""
    set_style()
    attacks = list(dict.fromkeys(df["attack"])) or ["-"]
    fig, panels, key = _fig4_grid(len(attacks))
    marks = _fig4_marks(df["defense"])
    seed0 = df["seed"] == 0 if "seed" in df else pd.Series(True, index=df.index)
    for ax, a in zip(panels, attacks):
        for name, (colour, marker) in marks.items():
            rows = df[(df["attack"] == a) & (df["defense"] == name)]
            main, others = rows[seed0[rows.index]], rows[~seed0[rows.index]]
            ax.scatter(main["asr"], main["acc"], s=70, color=colour, marker=marker,
                       edgecolors="white", linewidths=0.5, zorder=3)
            ax.scatter(others["asr"], others["acc"], s=16, color=colour, marker=marker,
                       alpha=0.6, linewidths=0, zorder=2)
            _seed_cross(ax, rows, colour)
        ax.set(xlim=(-0.04, 1.04), xlabel="ASR (lower is better)", ylabel="clean ACC",
               title=f"{_attack_label(a)} {_paren(dataset)}{_removed_note(df, a)}")
    handles = [plt.Line2D([], [], ls="", marker=m, ms=7, color=c) for c, m in marks.values()]
    labels = [_defense_label(n) for n in marks]
    if (~seed0).any():  # the small points, and the median with the range over seeds
        handles.append(plt.Line2D([], [], ls="", marker="o", ms=3.5, color="grey", alpha=0.6))
        labels.append("other seeds (small)")
        handles.append(plt.Line2D([], [], color="grey", lw=0.8, marker="+", ms=7))
        labels.append("median and range over seeds")
    key.axis("off")
    key.legend(handles, labels, fontsize=7.5, loc="upper left", frameon=False)
    if missing:
        shown = ", ".join(missing[:12]) + (f", ... ({len(missing)} in all)" if len(missing) > 12 else "")
        fig.text(0.01, -0.02, f"not run yet (no results): {shown}", fontsize=7, va="top", wrap=True)
    fig.tight_layout()
    return fig


def _seed_cross(ax, rows: pd.DataFrame, colour) -> None:
    """A run's median ASR and ACC over its seeds, with the range of each as thin lines (two or
    more seeds)."""
    if len(rows) < 2:
        return
    asr, acc = rows["asr"], rows["acc"]
    ax.plot([asr.min(), asr.max()], [acc.median()] * 2, color=colour, lw=0.8, alpha=0.8, zorder=1)
    ax.plot([asr.median()] * 2, [acc.min(), acc.max()], color=colour, lw=0.8, alpha=0.8, zorder=1)
    ax.scatter([asr.median()], [acc.median()], s=40, color=colour, marker="+", linewidths=1.0, zorder=2)


def _removed_note(df: pd.DataFrame, attack: str) -> str:
    """``\nBurn removed 2 of 3 seeds`` under a panel's title where Burn ran on several seeds."""
    from .overseeds import over_seeds

    rows = df[(df["attack"] == attack) & (df["defense"] == "burn")]
    s = over_seeds(zip(rows.get("seed", pd.Series(0, index=rows.index)), rows["asr"]))
    return f"\nBurn removed {s.count()} of {s.n} seeds" if s.n > 1 else ""


def _sig6(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to 6 significant digits: the last bits of a logarithm differ between CPUs
    (numpy's SIMD paths), and rounded numbers make the same figure, byte for byte, everywhere."""
    return np.array([float(f"{v:.6g}") for v in np.asarray(x, dtype=float)])


def grid_step(values: np.ndarray) -> float | None:
    """The step ``g`` when the positive ``values`` all lie on the grid ``k * g`` (distances
    stored rounded to a fixed decimal, or a method that moves in fixed steps); None when they
    lie on no such grid (float32 distances do not: their spacing is relative, about 1e-7 of the
    value)."""
    u = np.unique(values[values > 0])
    if len(u) < 3:
        return None
    g = float(np.diff(u).min())
    k = u / g
    return g if bool(np.all(np.abs(k - np.round(k)) < 1e-3)) else None


def log_bin_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """About ``bins + 1`` log-spaced edges over the positive ``values``, rounded (``_sig6``).

    If the values lie on a grid (``grid_step``), a log bin near the small end can be narrower
    than one grid step and hold no representable value, and its neighbours one or two: empty
    bins between spikes that a reader takes for data. So each edge moves to the midpoint between
    two grid values and bins that would hold no grid value merge with the next one: every bin
    then holds a whole number (>= 1) of representable values, and dividing its count by its
    width cannot alias."""
    v = values[values > 0]
    lo, hi = np.floor(np.log10(v.min()) * 20) / 20, np.ceil(np.log10(v.max()) * 20) / 20
    hi = max(hi, lo + 0.05)
    edges = np.power(10.0, lo + (hi - lo) * np.arange(bins + 1) / bins)
    g = grid_step(v)
    if g is not None:
        # the midpoint at or below each edge, at or above the last one: (k + 0.5) * g
        k = np.floor(edges / g - 0.5)
        k[-1] = np.ceil(edges[-1] / g - 0.5)
        edges = np.unique((k + 0.5) * g)
    return _sig6(edges)


def log_density(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Histogram of ``values`` as a density per decade (area 1 on a log axis), rounded.

    Not per unit of distance: on log-spaced bins that divides by a width that shrinks tenfold
    per decade, so the bins near 1e-4 (2e-5 wide) turn one sample in 5,000 into a spike ten
    times the bulk's peak, with empty bins between the few samples there: what Fig. 5 showed
    before. (The committed float32 distances lie on no grid: below 1e-3 every one is distinct,
    e.g. BadNets' 164 of 164; DeepFool's step_eps only puts a floor near 1e-4.)"""
    counts, _ = np.histogram(values, bins=edges)
    decades = _sig6(np.log10(edges[1:] / edges[:-1]))
    return np.round(counts / (max(counts.sum(), 1) * decades), 6)


def _fig5_grid(n: int):
    """A figure of ``n`` histogram panels and one ROC panel, four to a row."""
    ncols = min(4, n + 1)
    nrows = -(-(n + 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 2.5 * nrows), squeeze=False)
    cells = list(axes.flat)
    for ax in cells[n + 1:]:
        fig.delaxes(ax)
    return fig, axes, cells[:n], cells[n]


def fig5_figure(dist: pd.DataFrame, roc: pd.DataFrame, summary: pd.DataFrame, dataset: str) -> plt.Figure:
    """Fig. 5: distance distributions of clean vs poisoned samples (density per decade on a
    log axis, the same bins in every panel, dashed lines at the medians) and the ROC of the
    distance as a poison detector, per attack; four panels a row."""
    set_style()
    attacks = list(dict.fromkeys(summary["attack"]))
    fig, axes, panels, ax_roc = _fig5_grid(len(attacks))
    edges = log_bin_edges(dist["distance"].to_numpy(), 48)
    colours = {"clean": "tab:blue", "poisoned": "tab:orange"}
    auroc = dict(zip(summary["attack"], summary["auroc"]))
    for i, (ax, a) in enumerate(zip(panels, attacks)):
        d = dist[dist["attack"] == a]
        for group, g in d.groupby("group", sort=True):
            colour, density = colours.get(group, "tab:green"), log_density(g["distance"].to_numpy(), edges)
            ax.stairs(density, edges, fill=True, color=colour, alpha=0.25, lw=0)
            ax.stairs(density, edges, color=colour, lw=1.2, label=f"{group} ({len(g):,})")
            ax.axvline(float(np.median(g["distance"])), color=colour, ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_title(f"{_attack_label(a)}: AUROC {float(auroc[a]):.2f}", fontsize=10)
        ax.set_xlabel("DeepFool L2 distance" if i + axes.shape[1] >= len(attacks) else "")
        ax.set_ylabel("density per decade" if i % axes.shape[1] == 0 else "")
        if i == 0:
            handles, labels = ax.get_legend_handles_labels()
            handles.append(plt.Line2D([], [], color="grey", ls="--", lw=1))
            ax.legend(handles, labels + ["median"], fontsize=8, loc="upper left", frameon=False)
    for a in attacks:
        r = roc[roc["attack"] == a]
        ax_roc.plot(r["fpr"], r["tpr"], lw=1.2, label=_attack_label(a))
    ax_roc.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax_roc.set_title("ROC: distance flags poison", fontsize=10)
    ax_roc.legend(fontsize=7.5, loc="lower right", handlelength=1.2, framealpha=0.9)
    fig.suptitle(f"Boundary distance of clean vs poisoned training samples {_paren(dataset)}", fontsize=11)
    fig.tight_layout()
    return fig


def fig6_figure(df: pd.DataFrame, dataset: str) -> plt.Figure:
    """Fig. 6: ACC and ASR after one fine-tuning iteration on N relabeled poisoned samples."""
    set_style()
    long = df.melt(id_vars=["attack", "n_poisoned"], value_vars=["acc", "asr"], var_name="metric",
                   value_name="value")
    long["metric"] = long["metric"].str.upper()
    long["attack"] = long["attack"].map(_attack_label)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    sns.lineplot(long, x="n_poisoned", y="value", hue="attack", style="metric", marker="o", ax=ax)
    ax.set_xscale("symlog", linthresh=1)
    ax.set(xlim=(0, df["n_poisoned"].max() * 1.2), xlabel="relabeled poisoned samples N (symlog)",
           ylabel="fraction of test images", ylim=(-0.02, 1.02),
           title=f"Unlearning budget: N poisoned + {int(df['n_clean'].iloc[0])} clean samples {_paren(dataset)}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def table2_figure(df: pd.DataFrame, dataset: str) -> plt.Figure:
    """Table 2 as a picture: Burn's final ACC/ASR against alpha (fixed beta) and beta (fixed alpha)."""
    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, varied in zip(axes, ("alpha", "beta")):
        d = df[df["varied"] == varied].melt(id_vars=[varied], value_vars=["acc", "asr"], var_name="metric",
                                            value_name="value")
        d["metric"] = d["metric"].str.upper()
        sns.lineplot(d, x=varied, y="value", hue="metric", marker="o", ax=ax)
        fixed = "beta" if varied == "alpha" else "alpha"
        fv = df.loc[df["varied"] == varied, fixed]
        ax.set(xlabel=f"{varied} (poison fraction)" if varied == "alpha" else f"{varied} (clean fraction)",
               ylabel="fraction of test images", ylim=(-0.02, 1.02),
               title=f"{varied} varied, {fixed} = {fv.iloc[0] if len(fv) else '-'} {_paren(dataset)}")
    fig.tight_layout()
    return fig


def tail_figure(rows: pd.DataFrame, summary: pd.DataFrame, classes, target: int, dataset: str) -> plt.Figure:
    """Fig. 5's mechanism check: the clean samples in the attacked model's far tail (Burn's
    P_0), measured again under the clean model. Left: their adversarial labels under each
    model. Right: where their clean-model distance falls among random training samples."""
    set_style()
    attacks = list(dict.fromkeys(summary["attack"]))
    fig, axes = plt.subplots(len(attacks), 2, figsize=(11, 3.6 * len(attacks)), squeeze=False)
    for (ax_l, ax_r), a in zip(axes, attacks):
        s = summary[summary["attack"] == a].iloc[0]
        t = rows[(rows["attack"] == a) & (rows["group"] == "tail") & ~rows["poisoned"].astype(bool)]
        long = pd.concat([
            pd.DataFrame({"model": f"attacked ({_attack_label(a)})", "adv_label": t["adv_label_attacked"]}),
            pd.DataFrame({"model": "clean", "adv_label": t["adv_label_clean_model"]})])
        share = (long.groupby("model")["adv_label"].value_counts(normalize=True)
                 .rename("share").reset_index())
        share["class"] = share["adv_label"].map(lambda c: classes[int(c)])
        order = [c for c in classes if c in set(share["class"])]
        sns.barplot(share, x="class", y="share", hue="model", order=order, ax=ax_l)
        ax_l.set(xlabel="adversarial label", ylabel="share of the tail's clean samples",
                 title=f"{_attack_label(a)}: top {s['fraction']:.1%} by distance, {int(s['n_tail_clean'])} "
                       f"clean of {int(s['n_tail'])}\nadv. label = target ({classes[target]}): attacked "
                       f"{s['tail_clean_adv_is_target_attacked']:.0%}, clean model "
                       f"{s['tail_clean_adv_is_target_clean_model']:.0%}")
        ax_l.title.set_fontsize(9)
        ax_l.tick_params(axis="x", rotation=60)
        sns.histplot(t["clean_model_percentile"], bins=20, binrange=(0, 1), ax=ax_r)
        ax_r.set(xlabel="percentile of the clean-model distance among random training samples",
                 ylabel="clean tail samples",
                 title=f"Same images under the clean model {_paren(dataset)}: median percentile "
                       f"{s['tail_clean_median_percentile_clean_model']:.2f}")
        ax_r.title.set_fontsize(9)
    fig.tight_layout()
    return fig
