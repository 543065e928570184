"""Issue 29 probe: can the suspect class be kept by distillation instead of positives? Phase 1
of the coverage selection (P_0 = the suspect class's top 0.5% by distance, relabeled) plus a
keep set K of training samples whose given label is NOT the suspect class, trained either on
their given labels or on the frozen attacked model's soft predictions at temperature T (dark
knowledge: a clean ship's small airplane probability). No sample of K is labeled with the
suspect class, so K holds no dirty-label poison. Test ACC, the class's accuracy, ASR after it;
then with the class's logit raised by the smallest bias that makes the model predict the class
for as large a share of 5,000 training images as the median given label of the other classes
holds (a prior a defender can read off the given labels)."""
import copy
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from burn.config import load_preset
from burn.defenses.burn import _normalize, _top, coverage_class
from burn.experiment import attacked_model
from burn.metrics import evaluate, predict, predict_logits
from burn.models import to_model_format
from burn.runtime import Runtime
from burn.train import augment_batch

torch.set_num_threads(1)
rt = Runtime(threads=1, progress=False)
N_KEEP, EPOCHS, LR, BATCH = 2500, 5, 1e-4, 128
CONFIGS = [("P_0 + K, given labels", 1.0, False), ("P_0 + K, soft T=4", 4.0, True),
           ("P_0 + K, soft T=8", 8.0, True)]
if os.environ.get("PROBE_SOFT_ONLY"):  # PROBE_SOFT_ONLY=4: only the soft run at T=4
    CONFIGS = [c for c in CONFIGS if c[2] and c[1] == float(os.environ["PROBE_SOFT_ONLY"])]


def train(model, images, hard, soft, temp, gen):
    """Adam over (images): CE to ``hard`` where it is >= 0, else T^2 KL to ``soft`` at ``temp``."""
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(images), generator=gen).split(BATCH):
            x = augment_batch(images[idx].float() / 255, gen, 4, True)
            out = model(to_model_format(model, x))
            h, s = hard[idx], soft[idx]
            loss = F.cross_entropy(out[h >= 0], h[h >= 0], reduction="sum") if (h >= 0).any() else 0.0
            if (h < 0).any():
                kl = F.kl_div(F.log_softmax(out[h < 0] / temp, 1), s[h < 0], reduction="sum")
                loss = loss + temp ** 2 * kl
            opt.zero_grad()
            (loss / len(idx)).backward()
            opt.step()
    return model.eval()


def bias_adjusted(ft, run, p, labels, c) -> str:
    """The class's logit raised until the model predicts it for the median other label's share."""
    share = float(torch.tensor([(labels == k).float().mean() for k in labels.unique() if k != c]).median())
    sample = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))[:5000]
    lt = predict_logits(ft, p.images[sample])
    gap = lt.max(1).values - lt[:, c]  # how far each sample is from being predicted c
    bias = float(gap.quantile(share))
    out = []
    for name, x, y in [("test", run.test.images, run.test.labels), ("poisoned", run.poisoned_test.images, None)]:
        lx = predict_logits(ft, x)
        lx[:, c] += bias
        out.append((lx.argmax(1), y))
    (pred, y), (ppred, _) = out
    own = y == c
    return (f"bias {bias:.2f} (share {share:.3f}): ACC {(pred == y).float().mean():.3f} class {c} "
            f"{(pred[own] == c).float().mean():.3f} ASR {(ppred == run.cfg.attack.target).float().mean():.3f}")


for attack in sys.argv[1:]:
    run = attacked_model(load_preset("cpu", {"attack": {"name": attack}}), rt)
    d = np.load(f"results/cpu/cifar10/{attack}/deepfool.npz")
    norms, yadv = torch.from_numpy(d["norms"]).float(), torch.from_numpy(d["adv_labels"]).long()
    p = run.poisoned
    labels = p.labels.long()
    c, _, _ = coverage_class(yadv, labels)
    p_idx = _top(_normalize(norms).masked_fill(labels != c, float("-inf")), 250, largest=True)
    others = (labels != c).nonzero().squeeze(1)
    k_idx = others[torch.randperm(len(others), generator=torch.Generator().manual_seed(0))[:N_KEEP]]
    own = run.test.labels == c
    logits0 = predict_logits(run.model, p.images[k_idx])
    print(f"== {attack}: suspect {c}; K holds {int(p.poison_mask[k_idx].sum())} poisoned", flush=True)
    for name, temp, use_soft in CONFIGS:
        idx = torch.cat([p_idx, k_idx])
        hard = torch.cat([yadv[p_idx], torch.full((N_KEEP,), -1) if use_soft else labels[k_idx]])
        soft = torch.zeros(len(idx), logits0.shape[1])
        soft[len(p_idx):] = F.softmax(logits0 / temp, 1)
        ft = train(copy.deepcopy(run.model), p.images[idx], hard, soft, temp, torch.Generator().manual_seed(0))
        r = evaluate(ft, run.test, run.poisoned_test, run.cfg.attack.target)
        cls = float((predict(ft, run.test.images[own]) == c).float().mean())
        print(f"  {name:24s} ACC {r['acc']:.3f} class {c} {cls:.3f} ASR {r['asr']:.3f} RA {r['ra']:.3f}", flush=True)
        if use_soft:
            print("    " + bias_adjusted(ft, run, p, labels, c), flush=True)
