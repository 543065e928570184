"""How well the boundary distance separates poisoned from clean training samples, and why.

These are the measurements behind Table 1, Fig. 2, Fig. 5 and the regime study: they take
DeepFool outputs plus the ground-truth poison mask (available to the experimenter, never to
the defense) and return plain dicts / DataFrames.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .defenses.burn import class_coverage, suspect_class


def auroc(scores: Tensor, positives: Tensor) -> float:
    """Area under the ROC curve of ``scores`` as a detector of ``positives`` (ties count 1/2),
    via the Mann-Whitney U statistic."""
    scores, positives = scores.double(), positives.bool()
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    ranks = torch.empty_like(scores)
    sorted_scores = scores[order]
    # average ranks over ties (1-based)
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks[order] = avg[inverse]
    u = ranks[positives].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def roc_curve(scores: Tensor, positives: Tensor, points: int = 200) -> tuple[Tensor, Tensor]:
    """(false positive rate, true positive rate) at ``points`` thresholds from high to low."""
    order = torch.argsort(scores.double(), descending=True, stable=True)
    pos = positives.bool()[order].double()
    tpr = torch.cumsum(pos, 0) / max(float(pos.sum()), 1.0)
    fpr = torch.cumsum(1 - pos, 0) / max(float((1 - pos).sum()), 1.0)
    idx = torch.linspace(0, len(scores) - 1, points).round().long()
    return torch.cat([torch.zeros(1), fpr[idx].float()]), torch.cat([torch.zeros(1), tpr[idx].float()])


def top_fraction_stats(scores: Tensor, positives: Tensor, fraction: float) -> dict:
    """Precision and recall of the top ``fraction`` of samples by score."""
    n = round(fraction * len(scores))
    top = torch.argsort(scores, descending=True, stable=True)[:n]
    tp = int(positives[top].sum())
    return {"fraction": fraction, "n": n, "precision": tp / max(n, 1),
            "recall": tp / max(int(positives.sum()), 1)}


def tail_overlap(norms: Tensor, poison_mask: Tensor, quantile: float = 0.995) -> dict:
    """Whether the poisoned samples reach the clean samples' far tail, where Burn selects.

    ``poisoned_beyond_clean_q``: the share of poisoned samples farther than the clean samples'
    ``quantile`` (default 99.5%). Above the clean quantile lie ``(1 - quantile) * n_clean``
    clean samples, so the selection there is mostly poison only if this share times
    ``n_poisoned`` exceeds that number (4.5% of the poison at 10% poisoning and 99.5%); near 0,
    the top of the ranking is clean whatever the means say."""
    mask = poison_mask.bool()
    clean, pois = norms[~mask].double(), norms[mask].double()
    if not len(pois) or not len(clean):
        return {}
    cq = float(torch.quantile(clean, quantile))
    beyond = int((pois > cq).sum())
    return {"clean_q": quantile, "clean_at_q": cq, "poisoned_median": float(pois.median()),
            "poisoned_q95": float(torch.quantile(pois, 0.95)),
            "poisoned_beyond_clean_q": beyond / len(pois),
            # precision of the selection {distance > clean quantile}: poison over everything there
            "precision_beyond_clean_q": beyond / max(beyond + int((clean > cq).sum()), 1)}


def separation_summary(norms: Tensor, adv_labels: Tensor, poison_mask: Tensor,
                       original_labels: Tensor, target: int,
                       fractions=(0.005, 0.01), given_labels: Tensor | None = None) -> dict:
    """The numbers of the regime study for one model: distance statistics, AUROC, the top
    tails' precision/recall, label reversion, and what the top tail is made of."""
    mask = poison_mask.bool()
    clean, pois = norms[~mask].double(), norms[mask].double()
    out = {
        "n": len(norms), "n_poisoned": int(mask.sum()),
        "mean_clean": float(clean.mean()), "mean_poisoned": float(pois.mean()) if len(pois) else None,
        "median_clean": float(clean.median()), "median_poisoned": float(pois.median()) if len(pois) else None,
        "auroc": auroc(norms, mask),
        # Observation 2 of the paper: adversarial labels of poisoned samples fall back to the truth
        "revert_share_poisoned": float((adv_labels[mask] == original_labels[mask]).float().mean()) if len(pois) else None,
        "adv_label_is_target_clean": float((adv_labels[~mask] == target).float().mean()),
    }
    if len(pois):
        out["mean_ratio"] = out["mean_poisoned"] / out["mean_clean"]
        out["median_ratio"] = out["median_poisoned"] / out["median_clean"]
        out["tail_overlap"] = tail_overlap(norms, mask)
    for f in fractions:
        s = top_fraction_stats(norms, mask, f)
        top = torch.argsort(norms, descending=True, stable=True)[:s["n"]]
        clean_top = top[~mask[top]]
        key = f"top{f * 100:g}pct"
        out[f"{key}_precision"] = s["precision"]
        out[f"{key}_recall"] = s["recall"]
        # the failure mechanism measured earlier: clean samples whose nearest boundary is the target
        out[f"{key}_clean_adv_is_target"] = (float((adv_labels[clean_top] == target).float().mean())
                                            if len(clean_top) else None)
        out[f"{key}_clean_classes"] = {int(c): int(k) for c, k in
                                       zip(*torch.unique(original_labels[clean_top], return_counts=True))}
        if given_labels is not None:
            # only the mislabeled (dirty-label) poison is what relabeling repairs; with
            # BackdoorBench's pool, target-class images carry the trigger under their own label
            mislabeled = given_labels != original_labels
            out[f"{key}_mislabeled_precision"] = float(mislabeled[top].float().mean())
            # the opt-in repair (Burn.selection="suspect_class"): the same number of samples,
            # drawn from the given label with the largest median distance only
            sc = suspect_class(norms, given_labels)
            in_class = given_labels == sc
            st = top_fraction_stats(norms.masked_fill(~in_class, float("-inf")), mask, f)
            out["suspect_class"] = sc
            out[f"{key}_suspect_class_precision"] = st["precision"]
            st = top_fraction_stats(norms.masked_fill(~in_class, float("-inf")), mislabeled, f)
            out[f"{key}_suspect_class_mislabeled_precision"] = st["precision"]
    return out


def target_coverage(adv_labels: Tensor, given_labels: Tensor, original_labels: Tensor,
                    poison_mask: Tensor, target: int) -> dict:
    """Why the target label's coverage (``coverage_class``'s statistic) is what it is: for each
    other class c, its share among the adversarial labels of the samples labeled ``target``,
    how many of c's images were poisoned into the target and how many of those fall back to c.
    The coverage is the smallest share, so the class holding it (``held_by``) decides whether
    the guard acts: a class whose poisoned images fall to a neighbour instead of back to it
    pulls the coverage under the bar however well the other classes revert."""
    adv, given, orig = adv_labels.long(), given_labels.long(), original_labels.long()
    under = given == target
    mask = poison_mask.bool() & under
    k = int(max(adv.max(), given.max(), orig.max())) + 1
    share = torch.bincount(adv[under], minlength=k).double() / max(int(under.sum()), 1)
    by_class = {}
    for c in range(k):
        if c == target:
            continue
        from_c = mask & (orig == c)
        counts = torch.bincount(adv[from_c], minlength=k)
        counts[c] = -1  # the most common adversarial label other than the true class
        by_class[c] = {"share": float(share[c]), "poisoned": int(from_c.sum()),
                       "reverted": int((adv[from_c] == c).sum()),
                       "elsewhere": int(counts.argmax()), "elsewhere_n": max(int(counts.max()), 0)}
    held_by = min(by_class, key=lambda c: by_class[c]["share"])
    cover = class_coverage(adv, given)
    top = max(cover, key=cover.get)
    return {"target": target, "share": by_class[held_by]["share"], "held_by": held_by,
            "top_label": top, "top_share": cover[top], "by_class": by_class}
