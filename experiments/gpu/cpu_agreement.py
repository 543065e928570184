"""Do a GPU run's DeepFool distances match a CPU recomputation? DeepFool on a GPU runs in exact
float32 (TF32 off) so that they should agree to rounding. This recomputes a seeded subset of a
preset's training samples on the CPU (``distances.subset_distances``, stored beside the model
as ``deepfool_cpu_check.npz``) and compares it with the stored ``deepfool.npz``.

    python experiments/gpu/cpu_agreement.py --preset paper --attack badnets --n 128

Writes ``cpu_agreement.json`` beside the model: relative differences of the norms, agreement
of the adversarial labels, and the samples that disagree most.
"""

from __future__ import annotations

import argparse

import torch

from burn.artifacts import load_runs
from burn.cache import write_json
from burn.distances import boundary_distances, subset_distances
from burn.provenance import provenance
from burn.runtime import Runtime


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--attack", default="badnets")
    ap.add_argument("--n", type=int, default=128, help="clean and as many poisoned samples")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    runtime = Runtime(device="cpu", threads=args.threads, progress=True).apply()
    run = load_runs(args.preset, "cifar10", [args.attack], runtime)[args.attack]
    stored = boundary_distances(run)  # never recomputed here: the GPU's, read from deepfool.npz
    g = torch.Generator().manual_seed(0)
    mask = run.poisoned.poison_mask.bool()
    pick = [torch.nonzero(m).flatten()[torch.randperm(int(m.sum()), generator=g)[:args.n]]
            for m in (~mask, mask)]
    index = torch.cat(pick).sort().values
    cpu = subset_distances(run, index, name="cpu_check")
    gpu_norms, cpu_norms = stored["norms"][index].double(), cpu["norms"].double()
    rel = (cpu_norms - gpu_norms).abs() / gpu_norms.clamp_min(1e-12)
    same = stored["adv_labels"][index] == cpu["adv_labels"]
    worst = torch.argsort(rel, descending=True)[:5]
    out = {"preset": args.preset, "attack": args.attack, "n": len(index),
           "index_seed": 0, "adv_label_agreement": float(same.float().mean()),
           "norm_rel_diff_median": float(rel.median()), "norm_rel_diff_max": float(rel.max()),
           "norm_rel_diff_q99": float(torch.quantile(rel, 0.99)),
           "worst": [{"index": int(index[i]), "gpu": float(gpu_norms[i]), "cpu": float(cpu_norms[i]),
                      "gpu_adv": int(stored["adv_labels"][index[i]]),
                      "cpu_adv": int(cpu["adv_labels"][i])} for i in worst],
           "gpu_deepfool_wall_s": float(stored["wall_s"]), "cpu_deepfool_wall_s": float(cpu["wall_s"]),
           **provenance(runtime)}
    write_json(run.results_dir / "cpu_agreement.json", out)
    print({k: out[k] for k in ("n", "adv_label_agreement", "norm_rel_diff_median", "norm_rel_diff_max")})
    return out


if __name__ == "__main__":
    main()
