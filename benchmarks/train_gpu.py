"""Benchmark: seconds per CIFAR-10 training epoch on a GPU by precision, through the training
loop the attack stage uses (``burn.train.run_epoch``: data on the device, crop + flip there, one
host read per epoch), so that the ``paper`` preset's precision is chosen from a measurement and
the rest of a GPU lease can be sized from it.

    python benchmarks/train_gpu.py --out /tmp/train_gpu.json            # on a GPU: width 64
    python benchmarks/train_gpu.py --device cpu --width 4 --n 512 --out /tmp/t.json   # a dry run

Each precision trains a fresh seeded PreAct-ResNet-18 for ``--epochs`` epochs over ``--n``
seeded random uint8 images (the cost does not depend on the pixels): ``float32`` (TF32 off,
exact), ``tf32`` (``train.tf32``: TF32 tensor cores for convolutions and matmuls, what
PyTorch's defaults give BackdoorBench's amp-off training on such GPUs) and ``bf16``
(``train.amp_bf16``: bf16 autocast). With ``--compile MODE``, each precision is measured again
with the model under ``torch.compile(mode=MODE)`` (``reduce-overhead`` adds CUDA graphs): at
batch 128 an eager step on an H200 is bound by the host, not the GPU (8.3 ms for about 1 ms
of arithmetic), which is what compiling could remove; the first epoch then includes the
compilation. The file is rewritten after every row, so a run that is cut off keeps what it
measured.
"""

from __future__ import annotations

import argparse
import time

import torch

from burn.cache import write_json
from burn.models import create_model
from burn.provenance import provenance
from burn.train import run_epoch, tf32_enabled

PRECISIONS = {"float32": (False, False), "tf32": (True, False), "bf16": (False, True)}


def epoch_times(precision: str, *, device: torch.device, width: int, n: int, batch: int,
                epochs: int, compile_mode: str | None = None, seed: int = 0) -> list[float]:
    """Seconds of each of ``epochs`` training epochs (the first includes cuDNN's warm-up)."""
    tf32, bf16 = PRECISIONS[precision]
    torch.manual_seed(seed)
    model = create_model("preactresnet18", 10, width, "cifar10").to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    if compile_mode is not None:
        model = torch.compile(model, mode=compile_mode)
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    labels = torch.randint(0, 10, (n,), generator=g).to(device)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        with tf32_enabled(device, tf32):
            run_epoch(model, opt, images, labels, batch_size=batch, generator=g, augment=True,
                      amp_bf16=bf16)  # returns after reading the loss: the GPU has finished
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--n", type=int, default=50_000, help="images per epoch")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    ap.add_argument("--compile", dest="compile_mode", metavar="MODE",
                    help="also measure each precision under torch.compile(mode=MODE)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    out = {"width": args.width, "n": args.n, "batch": args.batch, "epochs": args.epochs,
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "rows": [], **provenance()}
    modes = [None] + ([args.compile_mode] if args.compile_mode else [])
    for compile_mode in modes:
        for precision in args.precisions:
            t = epoch_times(precision, device=device, width=args.width, n=args.n,
                            batch=args.batch, epochs=args.epochs, compile_mode=compile_mode)
            row = {"precision": precision, "compile": compile_mode,
                   "epoch_s": [round(s, 2) for s in t], "images_per_s": round(args.n / min(t), 1)}
            out["rows"].append(row)
            write_json(args.out, out)
            print(f"{precision:8s} compile={compile_mode}  epochs {row['epoch_s']} s  "
                  f"({row['images_per_s']:.0f} img/s)", flush=True)
    return out


if __name__ == "__main__":
    main()
