"""Issue 29 probe: after the full coverage-class run with C_t outside the suspect class c (the
preset's `coverage_class_outside`), the purified model classifies the other nine classes and
never predicts c. Among the samples labeled c, the dirty-label poison is an image of another
class, which the purified model should recognise confidently; a clean image of c fits no class
it still predicts. Is the least confident part of label c clean (positives for c, read from the
model alone)? And does one more fine-tuning step with them under label c, beside as many
samples of the other labels under their given labels, give c back without the backdoor?

Defender-side only: the ranking reads the given labels and the purified model; the ground
truth (poison mask) is read only to print the poison share of each candidate set.
usage: python experiments/probes/purified_positives.py ATTACK [ATTACK ...]  (~12 min each, 1 thread)
"""
import copy
import os
import sys

import torch

from burn.config import load_preset
from burn.defense_stage import defender_data, make_defense, tagged_cfg
from burn.defenses.burn import finetune
from burn.experiment import attacked_model
from burn.metrics import evaluate, predict_logits
from burn.runtime import Runtime

torch.set_num_threads(1)
rt = Runtime(threads=1, progress=False)
QUANTILES = (0.05, 0.1, 0.25, 0.5)


def per_class_acc(model, test) -> list[float]:
    pred = predict_logits(model, test.images).argmax(1)
    y = test.labels.long()
    return [round((pred[y == k] == k).float().mean().item(), 3) for k in range(int(y.max()) + 1)]


for attack in sys.argv[1:]:
    preset = os.environ.get("PRESET", "cpu")  # smoke: a check of the script in seconds
    over = {"attack": {"name": attack}}
    if preset == "smoke":  # smoke names no runs; its tiny poison may miss the coverage guard
        over["defenses"] = {"burn": {"selection": "coverage_class", "min_coverage": 0.0,
                                     "clean_set_outside_suspect": True}}
    cfg = tagged_cfg(preset, over, "burn", "coverage_class_outside")
    run = attacked_model(cfg, rt)
    burn = make_defense(cfg, "burn")
    data = defender_data(run, burn)

    def ev(m):
        return evaluate(m, run.test, run.poisoned_test, cfg.attack.target)

    purified, report = burn(run.model, data, evaluate=ev, progress=False)
    c = report["suspect_class"]
    p = run.poisoned
    lab, bad = p.labels.long(), p.poison_mask
    idx = (lab == c).nonzero().squeeze(1)
    prob = torch.softmax(predict_logits(purified, p.images[idx]), 1)
    conf = prob.max(1).values
    order = conf.argsort()  # least confident first
    print(f"== {attack}: suspect {c}; purified {ev(purified)}; label-{c} samples {len(idx)}, "
          f"poison {bad[idx].float().mean():.3f}", flush=True)
    print(f"  per-class test accuracy, attacked: {per_class_acc(run.model, run.test)}")
    print(f"  per-class test accuracy, purified: {per_class_acc(purified, run.test)}")
    print("  least confident: " + ", ".join(
        f"{q:.2f} poison {bad[idx[order[:int(q * len(idx))]]].float().mean():.3f}" for q in QUANTILES),
        flush=True)
    # one more step: the least confident 10% of label c under c, as many other-label samples
    k = int(0.1 * len(idx))
    pos = idx[order[:k]]
    others = (lab != c).nonzero().squeeze(1)
    keep = others[torch.randperm(len(others), generator=torch.Generator().manual_seed(0))[:k]]
    step = torch.cat([pos, keep])
    model = copy.deepcopy(purified)
    for q in model.parameters():
        q.requires_grad_(True)
    finetune(model, p.images[step], lab[step], burn, torch.Generator().manual_seed(0), flip=data.flip)
    print(f"  + {k} least-confident label-{c} samples (poison {bad[pos].float().mean():.3f}) and "
          f"{k} others, {burn.epochs} epochs: {ev(model)}", flush=True)
    print(f"  per-class test accuracy after it: {per_class_acc(model, run.test)}", flush=True)
