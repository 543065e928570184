"""Benchmark: training-step throughput of the attacked models on this CPU, by precision and
memory layout, so that the ``cpu`` preset's choices (float32, channels-last) are measured on the
machine at hand rather than inherited from another one.

    python benchmarks/train_cpu.py                       # widths 16 and 32, fp32 / bf16, both layouts
    python benchmarks/train_cpu.py --widths 16 --steps 5 --out /tmp/train.json   # a dry run

Each variant runs ``--warmup`` then ``--steps`` full SGD steps (forward, backward, update) of
PreAct-ResNet-18 on a seeded random batch of CIFAR-sized images; the median step time gives
images/s. bf16 means ``torch.autocast(dtype=torch.bfloat16)`` as ``train.amp_bf16`` does: it is
fast only where the CPU has bf16 instructions (``avx512_bf16`` / ``amx_bf16``, listed under
``machine.cpu.flags`` in the output). Written to ``--out`` (JSON) with the machine and its load
average before and after, since another process on the CPU changes every number.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from burn.cache import write_json
from burn.config import PROJECT_ROOT
from burn.models import create_model, to_model_format
from burn.provenance import provenance

DEFAULT_OUT = PROJECT_ROOT / "results" / "benchmarks" / "train_cpu.json"


def step_times(width: int, *, bf16: bool, channels_last: bool, batch: int, warmup: int,
               steps: int, seed: int = 0) -> list[float]:
    """Seconds per training step (forward + backward + SGD update) for one variant."""
    torch.manual_seed(seed)
    model = create_model("preactresnet18", 10, width, "cifar10")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        xb = to_model_format(model, x)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(xb).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = []
    for width in args.widths:
        for bf16 in (False, True):
            for cl in (True, False):
                t = step_times(width, bf16=bf16, channels_last=cl, batch=args.batch,
                               warmup=args.warmup, steps=args.steps)
                med = statistics.median(t)
                row = {"width": width, "precision": "bf16 autocast" if bf16 else "float32",
                       "channels_last": cl, "median_step_s": round(med, 4),
                       "images_per_s": round(args.batch / med, 1),
                       "epoch_s_cifar10": round(50_000 / (args.batch / med), 1)}
                rows.append(row)
                print(f"width {width:3d}  {row['precision']:13s}  channels_last={cl!s:5s}  "
                      f"{row['images_per_s']:8.1f} img/s  ({row['epoch_s_cifar10']:.0f} s per CIFAR-10 epoch)",
                      flush=True)
    out = {"rows": rows, "batch": args.batch, "warmup": args.warmup, "steps": args.steps,
           "load_avg_before": load_before, "load_avg_after": os.getloadavg(), **provenance()}
    write_json(args.out, out)
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
