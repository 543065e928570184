"""Issue 29 probe: can phase 1 unlearn the trigger without erasing the suspect class, if it
changes fewer weights? Phase 1 of the coverage selection (P_0 = the suspect class's top 0.5%
by distance, relabeled with adversarial labels, 5 epochs of Adam) under each constraint; test
ACC, the suspect class's own test accuracy and ASR after it."""
import copy
import sys

import numpy as np
import torch

from burn.config import load_preset
from burn.defenses.burn import Burn, _normalize, _top, coverage_class, finetune
from burn.experiment import attacked_model
from burn.metrics import evaluate, predict
from burn.runtime import Runtime

torch.set_num_threads(1)
rt = Runtime(threads=1, progress=False)
CONSTRAINTS = {  # name -> (which parameters train, Adam's lr)
    "all weights (Burn)": (lambda n: True, 1e-4),
    "all weights, lr 1e-5": (lambda n: True, 1e-5),
    "head frozen": (lambda n: not n.startswith("linear"), 1e-4),
    "head only": (lambda n: n.startswith("linear"), 1e-4),
    "last stage + head": (lambda n: n.startswith(("layers.6.", "layers.7.", "linear")), 1e-4),
}
for attack in sys.argv[1:]:
    run = attacked_model(load_preset("cpu", {"attack": {"name": attack}}), rt)
    d = np.load(f"results/cpu/cifar10/{attack}/deepfool.npz")
    norms, yadv = torch.from_numpy(d["norms"]).float(), torch.from_numpy(d["adv_labels"]).long()
    p = run.poisoned
    c, _, _ = coverage_class(yadv, p.labels.long())
    p_idx = _top(_normalize(norms).masked_fill(p.labels != c, float("-inf")), 250, largest=True)
    own = run.test.labels == c

    def measure(model):
        r = evaluate(model, run.test, run.poisoned_test, run.cfg.attack.target)
        r["class_c"] = float((predict(model, run.test.images[own]) == c).float().mean())
        return r

    r = measure(run.model)
    print(f"== {attack}: suspect {c}; attacked model ACC {r['acc']:.3f} class {c} {r['class_c']:.3f} ASR {r['asr']:.3f}", flush=True)
    for name, (trains, lr) in CONSTRAINTS.items():
        ft = copy.deepcopy(run.model)
        for n, q in ft.named_parameters():
            q.requires_grad_(trains(n))
        finetune(ft, p.images[p_idx], yadv[p_idx], Burn(lr=lr), torch.Generator().manual_seed(0))
        r = measure(ft)
        print(f"  {name:22s} ACC {r['acc']:.3f} class {c} {r['class_c']:.3f} ASR {r['asr']:.3f} RA {r['ra']:.3f}", flush=True)
