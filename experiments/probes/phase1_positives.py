"""Issue 29 probe: after Burn's phase 1 with the coverage selection (P_0 = the suspect class's
top 0.5% by distance, relabeled), rank the suspect class's samples by the fine-tuned model's
class-c margin; is the top of that ranking clean (a positive set for phase 2)?"""
import sys, copy, numpy as np, torch
from burn.config import load_preset
from burn.experiment import attacked_model
from burn.metrics import predict_logits
from burn.runtime import Runtime
from burn.defenses.burn import Burn, coverage_class, finetune, _normalize, _top
torch.set_num_threads(1)
rt = Runtime(threads=1, progress=False)
cfg = Burn(selection="coverage_class")
for attack in sys.argv[1:]:
    run = attacked_model(load_preset("cpu", {"attack": {"name": attack}}), rt)
    d = np.load(f"results/cpu/cifar10/{attack}/deepfool.npz")
    norms, yadv = torch.from_numpy(d["norms"]).float(), torch.from_numpy(d["adv_labels"]).long()
    p = run.poisoned; lab = p.labels.long(); pm = p.poison_mask
    c, top, _ = coverage_class(yadv, lab)
    elig = lab == c
    p_idx = _top(_normalize(norms).masked_fill(~elig, float("-inf")), 250, largest=True)
    ft = copy.deepcopy(run.model)
    for q in ft.parameters(): q.requires_grad_(True)
    finetune(ft, p.images[p_idx], yadv[p_idx], cfg, torch.Generator().manual_seed(0))
    idx = elig.nonzero().squeeze(1)
    l0 = predict_logits(run.model, p.images[idx]); lt = predict_logits(ft, p.images[idx])
    bad = pm[idx]
    print(f"== {attack}: suspect {c} (cover {top:.3f}); label-{c} samples {len(idx)}, poison {bad.float().mean():.3f}", flush=True)
    others = torch.cat([lt[:, :c], lt[:, c + 1:]], 1).max(1).values
    m_t = lt[:, c] - others                      # ft's margin for class c
    pt = torch.softmax(lt, 1)[:, c]; p0 = torch.softmax(l0, 1)[:, c]
    for name, s in [("ft margin", m_t), ("ft p(c)", pt), ("ft p(c) - f0 p(c) (least drop)", pt - p0)]:
        order = s.argsort(descending=True)
        print("  " + name + ": " + ", ".join(f"top {q:.2f} poison {bad[order[:int(q * len(idx))]].float().mean():.3f}"
                                             for q in (0.05, 0.1, 0.25, 0.5)), flush=True)
    print(f"  ft predicts c on {(lt.argmax(1) == c).float().mean():.3f} of them; on the clean ones {(lt.argmax(1)[~bad] == c).float().mean():.3f}", flush=True)
