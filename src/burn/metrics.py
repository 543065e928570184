"""ACC, ASR and RA, defined on predictions so they can be tested on hand-made inputs.

- ACC: fraction of the clean test set predicted as its label.
- ASR: fraction of the poisoned test set (non-target test images with the trigger) predicted
  as the target class.
- RA (robust accuracy): fraction of that same poisoned set predicted as its true label.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .models import to_model_format


def accuracy(preds: Tensor, labels: Tensor) -> float:
    assert preds.shape == labels.shape, (preds.shape, labels.shape)
    return float((preds == labels).float().mean()) if len(labels) else float("nan")


def attack_success_rate(preds: Tensor, target: int) -> float:
    return float((preds == target).float().mean()) if len(preds) else float("nan")


def robust_accuracy(preds: Tensor, true_labels: Tensor) -> float:
    return accuracy(preds, true_labels)


@torch.no_grad()
def predict_logits(model: nn.Module, images: Tensor, *, batch_size: int = 500,
                   amp_bf16: bool = False) -> Tensor:
    """Logits (float32) of ``images`` (uint8 or float in [0, 1]) in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outs = []
    try:
        for s in range(0, len(images), batch_size):
            x = images[s:s + batch_size]
            x = (x.float().div_(255.0) if x.dtype == torch.uint8 else x).to(device)
            x = to_model_format(model, x)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp_bf16):
                outs.append(model(x).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(outs) if outs else torch.zeros(0)


def predict(model, images, **kw) -> Tensor:
    return predict_logits(model, images, **kw).argmax(1)


def attack_metrics_by_class(preds: Tensor, true_labels: Tensor, target: int,
                            classes: list[str]) -> list[dict]:
    """ASR and RA of the poisoned test set split by the images' true class: where the trigger
    loses against clean evidence (e.g. confident vehicles), the per-class ASR shows it."""
    rows = []
    for c, name in enumerate(classes):
        m = true_labels == c
        if c == target or not m.any():
            continue
        rows.append({"true_label": c, "class": name, "n": int(m.sum()),
                     "asr": attack_success_rate(preds[m], target),
                     "ra": robust_accuracy(preds[m], true_labels[m])})
    return rows


def evaluate(model: nn.Module, test, poisoned_test, target: int, **kw) -> dict[str, float]:
    """``test``/``poisoned_test``: ImageDataset; returns ``{"acc", "asr", "ra"}``."""
    acc = accuracy(predict(model, test.images, **kw), test.labels)
    p = predict(model, poisoned_test.images, **kw)
    return {"acc": acc, "asr": attack_success_rate(p, target),
            "ra": robust_accuracy(p, poisoned_test.labels)}
