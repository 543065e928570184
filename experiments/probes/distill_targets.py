"""Issue 29 probe: what do K's soft targets say about the suspect class? K is drawn as
`coverage_class_distill` draws it (2,500 samples whose given label is not the suspect class,
Burn's seed); for each attack, the suspect class's share of the frozen attacked model's
softmax at T = 4 on K, against the clean model's share on the same images (the clean model
is trained on the same clean images and recipe, without poison). An excess is knowledge of
the class that only the attacked model holds. No defense reads the clean model."""
import sys

import numpy as np
import torch
import torch.nn.functional as F

from burn.config import artifact_cfg, load_preset
from burn.defenses.burn import Burn, coverage_class, distill_keep_set
from burn.experiment import attacked_model, results_dir
from burn.metrics import predict_logits
from burn.runtime import Runtime

torch.set_num_threads(1)
rt = Runtime(threads=1, progress=False)
TEMP = 4.0
clean = attacked_model(load_preset("cpu", {"attack": {"name": "clean"}}), rt).model
cfg = Burn(selection="coverage_class", clean_set_outside_suspect=True, distill_keep=2500)
print(f"{'attack':10s} suspect  share in K's targets at T=4: attacked / clean model (median)"
      "   rank of the class among the attacked model's outputs (mean)")
for attack in sys.argv[1:]:
    cfg_a = artifact_cfg("cpu", "cifar10", attack)  # TrojanNN: the variant trojannn-bb
    run = attacked_model(cfg_a, rt)
    d = np.load(results_dir(cfg_a) / "deepfool.npz")
    p = run.poisoned
    labels = p.labels.long()
    c, _, _ = coverage_class(torch.from_numpy(d["adv_labels"]).long(), labels)
    k_idx, targets = distill_keep_set(cfg, run.model, p.images, labels, c)
    share = targets[:, c]
    clean_share = F.softmax(predict_logits(clean, p.images[k_idx]) / TEMP, 1)[:, c]
    rank = (predict_logits(run.model, p.images[k_idx]).argsort(1, descending=True) == c)
    rank = rank.float().argmax(1).float() + 1
    print(f"{attack:10s} {c:7d}  {share.mean():.3f} / {clean_share.mean():.3f} "
          f"({share.median():.3f} / {clean_share.median():.3f})   {rank.mean():.2f}", flush=True)
