"""Supervised training with BackdoorBench's recipe (SGD with a cosine or constant learning
rate, random crop + flip), seeded, deterministic on the CPU, with per-epoch checkpoints so an
interrupted run resumes."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cache import epoch_checkpoint, load_torch, restore_checkpoint, save_torch
from .config import TrainCfg
from .models import to_model_format
from .progress import tqdm


def augment_batch(x: Tensor, generator: torch.Generator, padding: int = 4,
                  flip: bool = True) -> Tensor:
    """Random crop (zero padding ``padding``) and, with ``flip``, a random horizontal flip, per
    sample, vectorized, on ``x``'s device. ``x``: (B, C, H, W) float. The random draws come
    from ``generator`` (a CPU generator), so a run on a GPU draws the same crops and flips."""
    b, c, h, w = x.shape
    dev = x.device
    if padding > 0:
        padded = F.pad(x, (padding,) * 4)
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev, non_blocking=True)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev, non_blocking=True)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        x = padded[torch.arange(b, device=dev)[:, None, None, None],
                   torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    if not flip:
        return x
    flipped = (torch.rand(b, generator=generator) < 0.5).to(dev, non_blocking=True)
    return torch.where(flipped[:, None, None, None], x.flip(-1), x)


def iterate_batches(n: int, batch_size: int, generator: torch.Generator):
    perm = torch.randperm(n, generator=generator)
    for s in range(0, n, batch_size):
        yield perm[s:s + batch_size]


def run_epoch(model: nn.Module, optimizer, images: Tensor, labels: Tensor, *, batch_size: int,
              generator: torch.Generator, augment: bool, crop_padding: int = 4,
              flip: bool = True, amp_bf16: bool = False, progress: bool = False,
              desc: str = "", hook=None, loss_fn=None) -> float:
    """One pass of cross-entropy training over ``images`` (uint8 or float in [0, 1], on the
    CPU or already on the model's device); ``loss_fn(logits, labels)`` replaces the
    cross-entropy where given (soft targets). Returns the mean training loss. The loss is summed
    on the device and read once at the end (the bar reads it every 50 steps), so a GPU step
    never waits for the host. ``hook`` (an attack's ``training_hook``) rewrites each augmented
    batch and adds its loss, and steps its own optimizer after the model's."""
    model.train()
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    batches = iterate_batches(len(labels), batch_size, generator)
    bar = tqdm(batches, total=math.ceil(len(labels) / batch_size), desc=desc, leave=False,
               disable=not progress)
    for step, idx in enumerate(bar):
        idx = idx.to(images.device, non_blocking=True)
        x = images[idx]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
        if augment:
            x = augment_batch(x, generator, crop_padding, flip)
        x = to_model_format(model, x.to(device, non_blocking=True))
        y = labels[idx.to(labels.device)].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp_bf16):
            extra = None
            if hook is not None:
                x, y, extra = hook.batch(x, y, generator)
            loss = (loss_fn or F.cross_entropy)(model(x).float(), y)
            if extra is not None:
                loss = loss + extra.float()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if hook is not None:
            hook.after_step()
        total += loss.detach().double() * len(idx)
        count += len(idx)
        if progress and step % 50 == 0:
            bar.set_postfix(loss=f"{float(total) / count:.3f}")
    return float(total) / max(count, 1)


@contextlib.contextmanager
def tf32_enabled(device: torch.device, enabled: bool):
    """TF32 for CUDA convolutions and matmuls inside the block, the previous setting after it
    (``Runtime.apply`` turns it off so that DeepFool runs in exact float32)."""
    if device.type != "cuda":
        yield
        return
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def measure_rate(model: nn.Module, images: Tensor, labels: Tensor, cfg: TrainCfg, *,
                 amp_bf16: bool | None = None, flip: bool = True, hook=None, steps: int = 5,
                 warmup: int = 1) -> float | None:
    """Training images per second: ``warmup`` then ``steps`` timed steps of ``cfg``'s recipe
    on the first batches of ``images``, in ``amp_bf16`` (None: ``cfg.amp_bf16``). It trains
    copies of ``model`` and ``hook`` with its own optimizer and generator, so the training
    that follows is unchanged. None when ``images`` hold no timed batch."""
    bs = cfg.batch_size
    timed = slice(warmup * bs, min(len(labels), (warmup + steps) * bs))
    if timed.stop <= timed.start:
        return None
    net, hook = copy.deepcopy(model), copy.deepcopy(hook)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    kw = dict(batch_size=bs, generator=gen, augment=cfg.augment, crop_padding=cfg.crop_padding,
              flip=flip, amp_bf16=cfg.amp_bf16 if amp_bf16 is None else amp_bf16, hook=hook)
    with torch.random.fork_rng(devices=[]), tf32_enabled(next(net.parameters()).device, cfg.tf32):
        if warmup:
            run_epoch(net, opt, images[:timed.start], labels[:timed.start], **kw)
        t0 = time.perf_counter()
        run_epoch(net, opt, images[timed], labels[timed], **kw)  # reads the loss: synchronized
        return (timed.stop - timed.start) / (time.perf_counter() - t0)


def train_model(model: nn.Module, images: Tensor, labels: Tensor, cfg: TrainCfg, *,
                flip: bool = True, checkpoint: Path | None = None, progress: bool = True,
                on_epoch_end: Callable[[int, nn.Module], dict] | None = None,
                stop_after: int | None = None, hook=None,
                compile_mode: str | None = None) -> list[dict]:
    """Train ``model`` in place. With ``checkpoint``, state is saved after every epoch and a
    run interrupted at any point resumes from the last finished epoch. ``stop_after`` ends the
    call after that many epochs (it simulates an interruption in tests). ``flip``: whether
    augmentation flips (the dataset's setting, ``burn.data.DatasetSpec``). ``hook``: an
    attack's training hook (see ``run_epoch``), checkpointed with the model. ``compile_mode``:
    the steps run through ``torch.compile(model, mode=compile_mode)``, which shares ``model``'s
    parameters (what is checkpointed and returned is ``model``). Returns the per-epoch
    history."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
             if cfg.lr_schedule == "cosine" else torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0))
    gen = torch.Generator().manual_seed(cfg.seed)
    start, history = 0, []
    parts = {"model": model, "optimizer": opt, "scheduler": sched,
             **({"hook": hook} if hook is not None else {})}
    if checkpoint is not None and Path(checkpoint).is_file():
        state = load_torch(checkpoint)
        start, history = restore_checkpoint(state, parts, gen), state["history"]
    net = model if compile_mode is None else torch.compile(model, mode=compile_mode)
    epochs = tqdm(range(start, cfg.epochs), initial=start, total=cfg.epochs, desc="train",
                  disable=not progress)
    for epoch in epochs:
        if stop_after is not None and epoch - start >= stop_after:
            break
        t0 = time.perf_counter()
        with tf32_enabled(next(model.parameters()).device, cfg.tf32):
            loss = run_epoch(net, opt, images, labels, batch_size=cfg.batch_size,
                             generator=gen, augment=cfg.augment, crop_padding=cfg.crop_padding,
                             flip=flip, amp_bf16=cfg.amp_bf16, progress=progress,
                             desc=f"epoch {epoch + 1}", hook=hook)
        sched.step()
        if not math.isfinite(loss):  # never checkpoint (or commit) a diverged model
            raise FloatingPointError(f"training diverged: the mean loss of epoch {epoch + 1} is "
                                     f"{loss}; the last finite epoch's checkpoint is kept")
        row = {"epoch": epoch + 1, "loss": loss, "lr": opt.param_groups[0]["lr"],
               "epoch_s": time.perf_counter() - t0}
        if on_epoch_end is not None:
            row.update(on_epoch_end(epoch + 1, model))
        history.append(row)
        epochs.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k != "epoch"})
        if checkpoint is not None:
            save_torch(epoch_checkpoint(parts, gen, epoch + 1, history=history), checkpoint)
    return history
