"""Issue 29 probe: which samples under the suspect label could phase 1 keep as positives of
that class without feeding poison back? Defender-side statistics only; ground truth for the
measurement. Per attack: poison share among candidate positive sets of class 0."""
import numpy as np, torch
from burn.config import load_preset
from burn.experiment import attacked_model
from burn.models import to_model_format
from burn.runtime import Runtime
torch.set_num_threads(1)
rt = Runtime(threads=1, progress=False)
for attack in ["badnets", "blended", "inputaware", "lf", "trojannn"]:
    run = attacked_model(load_preset("cpu", {"attack": {"name": attack}}), rt)
    d = np.load(f"results/cpu/cifar10/{attack}/deepfool.npz")
    norms, yadv = torch.from_numpy(d["norms"]).float(), torch.from_numpy(d["adv_labels"]).long()
    p = run.poisoned; lab = p.labels; pm = p.poison_mask; c = 0
    m = lab == c; idx = m.nonzero().squeeze(1)
    bad = pm[idx]  # poison under label c
    print(f"== {attack}: label {c}: {len(idx)} samples, {int(bad.sum())} poisoned ({bad.float().mean():.3f})")
    nm, ya = norms[idx], yadv[idx]
    for q in (0.1, 0.25, 0.5):
        k = int(q * len(idx)); lo = nm.argsort()[:k]
        print(f"  lowest {q:.2f} distance: poison {bad[lo].float().mean():.3f}")
    counts = torch.bincount(ya, minlength=10)
    top2 = counts.argsort(descending=True)[:2]
    sel = (ya == top2[0]) | (ya == top2[1])
    print(f"  adv label in its 2 most common {top2.tolist()} (n={int(sel.sum())}): poison {bad[sel].float().mean():.3f}")
    with torch.no_grad():
        model = run.model.eval()
        feats = torch.cat([model.features(to_model_format(model, p.images[idx[i:i+500]])) for i in range(0, len(idx), 500)])
        logits = torch.cat([model(to_model_format(model, p.images[idx[i:i+500]])) for i in range(0, len(idx), 500)])
    # 2-means on normalized features (activation clustering), deterministic init: farthest pair
    f = torch.nn.functional.normalize(feats - feats.mean(0), dim=1)
    g = torch.Generator().manual_seed(0)
    cent = f[torch.randperm(len(f), generator=g)[:2]]
    for _ in range(50):
        a = (f @ cent.T).argmax(1)
        cent = torch.stack([f[a == j].mean(0) for j in range(2)])
    for j in range(2):
        s = a == j
        cover = torch.bincount(ya[s], minlength=10).double(); cover = cover / cover.sum()
        print(f"  cluster {j}: n={int(s.sum())} poison {bad[s].float().mean():.3f} min-other-share {float(torch.cat([cover[:c], cover[c+1:]]).min()):.3f} median dist {float(nm[s].median()):.3f}")
    # margin: second-best logit close = less confident
    top = logits.topk(2, 1).values; margin = top[:, 0] - top[:, 1]
    for q in (0.25, 0.5):
        k = int(q * len(idx)); lo = margin.argsort()[:k]
        print(f"  lowest {q:.2f} logit margin: poison {bad[lo].float().mean():.3f}")
