from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..data import ImageDataset
from .base import Attack, to_uint8

# Turner et al.'s "all-corners" trigger as BackdoorBench writes it (utils/bd_img_transform/lc.py):
# a 3x3 pattern of +1 / -1 in each corner, the left corners as below, the right corners mirrored
# left to right. Rows and columns count from the image's top-left.
LC_CORNER = torch.tensor([[1, -1, -1], [-1, 1, -1], [1, -1, 1]], dtype=torch.float32)


def corner_pattern(h: int, w: int) -> Tensor:
    """(H, W) float: +1 / -1 on the four corners' 3x3 patterns, 0 elsewhere."""
    if h < 6 or w < 6:
        raise ValueError(f"the all-corners trigger needs images of at least 6x6 px, got {h}x{w}")
    m = torch.zeros(h, w)
    for rows in (slice(0, 3), slice(h - 3, h)):
        m[rows, 0:3] = LC_CORNER
        m[rows, w - 3:w] = LC_CORNER.flip(1)
    return m


@dataclass(frozen=True)
class LabelConsistent(Attack):
    """Label-consistent backdoor (Turner, Tsipras and Madry, 2019) as BackdoorBench runs it
    (``attack/lc.py``, ``resource/label-consistent/craft_adv_dataset.py``,
    ``utils/bd_img_transform/lc.py``): clean-label; the poisoned samples are target-class
    training images (at rate 0.1 on CIFAR-10, every one of them), each first moved by an
    untargeted L-infinity PGD attack on its true label against an adversarially robust model
    (``eps`` 8/255, ``step`` 1.5/255, ``steps`` 100, no random start, as BackdoorBench's
    script), then given the all-corners trigger: ``x + amplitude * pattern``, clipped, on all
    channels (``amplitude`` 1 sets the corners to black and white). Test images get the
    trigger only.

    The robust model is the ``robust_model`` resource (``burn.adversarial.RobustModel``:
    fast adversarial training, ``robust_width`` and ``robust_epochs``), trained in the
    repository where BackdoorBench loads a ResNet-18 from its cloud folder. The PGD images are
    rounded to 8 bits (BackdoorBench truncates) and kept in the run cache under the robust
    model's key and the images' checksum."""

    eps: float = 8 / 255
    step: float = 1.5 / 255
    steps: int = 100
    amplitude: float = 1.0
    robust_width: int = 64
    robust_epochs: int = 15
    batch_size: int = 250  # of the PGD crafting; enters no key
    # the seed of the network it is built with, whatever the victim's training seed
    resource_seed: int = 0
    # set by fit(): target-class training indices and their PGD images (uint8), and a summary
    adv_index: Tensor | None = field(default=None, repr=False, compare=False)
    adv_images: Tensor | None = field(default=None, repr=False, compare=False)
    fitted: dict = field(default_factory=dict, compare=False)

    name = "lc"
    label = "LC"
    clean_label = True

    def resources(self) -> dict:
        from ..adversarial import RobustModel

        return {"robust_model": RobustModel(width=self.robust_width, epochs=self.robust_epochs)}

    def fit(self, train: ImageDataset, *, generator: torch.Generator, model=None,
            resources: dict | None = None, progress: bool = False, **context) -> "LabelConsistent":
        if self.adv_images is not None:
            return self
        robust = (resources or {}).get("robust_model")
        if robust is None:
            raise ValueError("Label-consistent crafts its poison on a robust model: fit it through "
                             "burn.experiment (burn attack --attack lc), which trains or loads it")
        index = (train.labels == self.target).nonzero().squeeze(1)
        crafted = craft(robust, train.images[index], train.labels[index], self, progress=progress)
        fitted = {"robust_model_key": robust.key,
                  **{f"robust_{k}": robust.record[k] for k in ("clean_acc", "pgd_acc")
                     if k in robust.record}, **crafted["summary"]}
        return dataclasses.replace(self, adv_index=index, adv_images=crafted["images"],
                                   fitted=fitted)

    def key_parts(self) -> tuple:
        return (self.fitted.get("robust_model_key"),)

    def poison_source(self, train: ImageDataset, idx: Tensor) -> Tensor:
        if self.adv_images is None:
            raise RuntimeError("LabelConsistent.poison_train before fit(): no PGD images")
        pos = torch.full((len(train),), -1, dtype=torch.long)
        pos[self.adv_index] = torch.arange(len(self.adv_index))
        if (pos[idx] < 0).any():
            raise ValueError("Label-consistent poisons target-class images only")
        return self.adv_images[pos[idx]]

    def apply_trigger(self, images: Tensor) -> Tensor:
        pattern = corner_pattern(*images.shape[-2:]).to(images.device)
        return (images + self.amplitude * pattern).clamp_(0.0, 1.0)

    def describe(self) -> dict:
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                      if f.name not in ("adv_index", "adv_images", "fitted",
                                                        "batch_size")}} | self.fitted


def craft(robust, images: Tensor, labels: Tensor, attack: LabelConsistent, *,
          progress: bool) -> dict:
    """PGD images (uint8) of ``images`` against ``robust`` (a ``StoredResource``), with a
    summary: the robust model's accuracy on the images before and after, and the
    perturbation's L-infinity norm on the 0-255 scale. Crafting takes about 45 minutes on a
    CPU, so they are stored beside the robust model, as the int8 perturbation in a compressed
    ``lc_pgd-<key>.npz`` (a resource given in memory, as in tests: in the run cache)."""
    from ..cache import config_hash, run_dir, tensors_sha256
    from ..stages import NpzStore, TorchStore, cached

    key = config_hash("lc-pgd", robust.key, attack.eps, attack.step, attack.steps,
                      tensors_sha256({"images": images, "labels": labels}))
    compute = lambda: _craft_now(robust.net, images, labels, attack, progress=progress)  # noqa: E731
    if robust.folder is None:
        return cached(TorchStore(run_dir("lc", key) / "pgd_images.pt"), key, compute)
    store = NpzStore(robust.folder / f"lc_pgd-{key}.npz",
                     redo="delete it to craft the PGD images again (about 45 min on a CPU)")
    return pgd_from_arrays(cached(store, key, lambda: pgd_arrays(compute(), images)), images)


def pgd_arrays(crafted: dict, images: Tensor) -> dict:
    """``craft``'s result as arrays: the perturbation as int8 (it lies within +-eps) and the
    summary as JSON."""
    import json

    import numpy as np

    delta = crafted["images"].to(torch.int16) - images.to(torch.int16)
    assert delta.abs().max() <= 127
    return {"delta": delta.to(torch.int8).numpy(), "summary": np.array(json.dumps(crafted["summary"]))}


def pgd_from_arrays(arrays: dict, images: Tensor) -> dict:
    import json

    delta = torch.from_numpy(arrays["delta"]).to(torch.int16)
    if delta.shape != images.shape:
        raise ValueError(f"stored PGD perturbation of shape {tuple(delta.shape)} for images of "
                         f"shape {tuple(images.shape)}")
    adv = (images.to(torch.int16) + delta).clamp_(0, 255).to(torch.uint8)
    return {"images": adv, "summary": json.loads(str(arrays["summary"]))}


def _craft_now(net, images: Tensor, labels: Tensor, attack: LabelConsistent, *,
               progress: bool) -> dict:
    from ..adversarial import pgd_linf
    from ..progress import tqdm

    device = next(net.parameters()).device
    out = torch.empty_like(images)
    before = after = 0
    starts = range(0, len(images), attack.batch_size)
    for s in tqdm(starts, desc=f"LC: PGD-{attack.steps} on {len(images)} target-class images",
                  disable=not progress):
        x = images[s:s + attack.batch_size].float().div(255.0).to(device)
        y = labels[s:s + attack.batch_size].to(device)
        adv = pgd_linf(net, x, y, eps=attack.eps, step=attack.step, steps=attack.steps)
        out[s:s + len(x)] = to_uint8(adv.cpu())
        with torch.no_grad():
            before += int((net(x).argmax(1) == y).sum())
            after += int((net(out[s:s + len(x)].float().div(255.0).to(device)).argmax(1) == y).sum())
    linf = (out.int() - images.int()).abs().amax(dim=(1, 2, 3)).float()
    summary = {"pgd_images": len(images), "robust_acc_before_pgd": before / max(len(images), 1),
               "robust_acc_after_pgd": after / max(len(images), 1),
               "pgd_linf_255_max": float(linf.max()) if len(linf) else 0.0,
               "pgd_linf_255_mean": float(linf.mean()) if len(linf) else 0.0}
    return {"images": out, "summary": summary}
