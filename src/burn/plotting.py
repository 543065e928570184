"""One function per figure: a DataFrame in, a matplotlib Figure out. One style throughout."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


def set_style() -> None:
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.1)


def regime_figure(df: pd.DataFrame, dataset: str) -> plt.Figure:
    """Regime study: the detector quality of the distance (AUROC, top-tail precision) beside
    the attacked model's ACC/ASR and Burn's outcome, one group of bars per regime."""
    set_style()
    done = df[df["status"] == "done"].copy()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    if done.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "no regime has results yet", ha="center", va="center")
            ax.set_axis_off()
        return fig
    det = done.melt(id_vars="regime", value_vars=["auroc", "top05_precision", "top1_precision", "revert_share"],
                    var_name="measure", value_name="value")
    det["measure"] = det["measure"].map({"auroc": "AUROC (distance as detector)",
                                         "top05_precision": "precision of top 0.5%",
                                         "top1_precision": "precision of top 1%",
                                         "revert_share": "poisoned: adv. label = true label"})
    sns.barplot(det, x="regime", y="value", hue="measure", ax=axes[0])
    axes[0].set(ylim=(0, 1.05), ylabel="fraction", xlabel="training regime",
                title=f"Does boundary distance find the poison? ({dataset})")
    axes[0].legend(fontsize=8, loc="upper left")
    out = done.melt(id_vars="regime", value_vars=["acc", "asr", "burn_acc", "burn_asr"],
                    var_name="measure", value_name="value")
    out["measure"] = out["measure"].map({"acc": "ACC attacked", "asr": "ASR attacked",
                                         "burn_acc": "ACC after Burn", "burn_asr": "ASR after Burn"})
    sns.barplot(out, x="regime", y="value", hue="measure", ax=axes[1])
    axes[1].set(ylim=(0, 1.05), ylabel="fraction of test images", xlabel="training regime",
                title="Attacked model and Burn's outcome")
    axes[1].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig
