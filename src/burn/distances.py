"""The distances stage: DeepFool L2 distances of a frozen attacked model to its decision
boundary, on its whole training set (``deepfool.npz``) or on chosen samples
(``deepfool_<name>.npz``), stored beside the model under the key of the model, the DeepFool
config and the samples (``burn.stages``)."""

from __future__ import annotations

import time

import numpy as np
import torch

from .cache import config_hash
from .experiment import AttackRun
from .stages import NpzStore, cached


def _arrays(res, wall: float, **extra) -> dict:
    """A DeepFoolResult as compact numpy arrays, with its wall time."""
    return {"wall_s": np.array(wall), "norms": res.norms.float().numpy(),
            "adv_labels": res.adv_labels.numpy().astype(np.int16),
            "orig_labels": res.orig_labels.numpy().astype(np.int16),
            "iterations": res.iterations.numpy().astype(np.int16),
            "converged": res.converged.bool().numpy(), **{k: v.numpy() for k, v in extra.items()}}


def _tensors(arrays: dict) -> dict:
    """Stored arrays as tensors (labels as int64), plus ``key`` and ``wall_s``."""
    out = {k: torch.from_numpy(v) for k, v in arrays.items() if k not in ("key", "wall_s")}
    for k in ("adv_labels", "orig_labels", "iterations"):
        out[k] = out[k].long()
    return out | {"key": str(arrays["key"]), "wall_s": float(arrays["wall_s"])}


def distances_key(run: AttackRun) -> str:
    from .deepfool import DEEPFOOL_VERSION

    return config_hash("deepfool", DEEPFOOL_VERSION, run.key, run.cfg.deepfool)


def boundary_distances(run: AttackRun) -> dict:
    """DeepFool distances of the frozen attacked model on its whole (poisoned) training set.

    Committed beside the model as ``deepfool.npz`` (a few hundred KB) and reused when its key
    matches; otherwise computed through the resumable run cache. Returns a dict of tensors:
    norms, adv_labels, orig_labels (the model's prediction), iterations, converged, plus
    ``key`` and ``wall_s``."""
    from .deepfool import cached_deepfool

    def compute():
        rt = run.runtime
        rt.say(f"deepfool: L2 distance to the decision boundary of all {len(run.poisoned)} "
               f"training images ({rt.deepfool_batch_size()} a batch); parts are saved as they "
               "finish, so an interrupted run resumes; the bar shows the time left")
        t0 = time.perf_counter()
        res = cached_deepfool(run.model, run.poisoned.images, run.cfg.deepfool, key=run.key,
                              batch_size=rt.deepfool_batch_size(), progress=rt.progress)
        return _arrays(res, time.perf_counter() - t0)

    return _tensors(cached(NpzStore(run.results_dir / "deepfool.npz"), distances_key(run), compute))


def subset_distances(run: AttackRun, index: torch.Tensor, *, name: str) -> dict:
    """DeepFool distances of the frozen model of ``run`` on the training samples ``index``
    only (a few hundred or thousand: Table 1's clean-model reference, the far-tail check of
    Fig. 5), committed beside the model as ``deepfool_<name>.npz`` and reused while the model,
    the DeepFool config and the indices are the same. The arrays follow ``index``'s order and
    include it as ``index``."""
    from .deepfool import DEEPFOOL_VERSION, deepfool_dataset

    index = torch.as_tensor(index, dtype=torch.long)
    cfg = run.cfg.deepfool
    key = config_hash("deepfool-subset", DEEPFOOL_VERSION, run.key, cfg, index.tolist())

    def compute():
        t0 = time.perf_counter()
        res = deepfool_dataset(run.model, run.poisoned.images[index], cfg,
                               batch_size=run.runtime.deepfool_batch_size(),
                               progress=run.runtime.progress)
        return _arrays(res, time.perf_counter() - t0, index=index)

    return _tensors(cached(NpzStore(run.results_dir / f"deepfool_{name}.npz"), key, compute))


def stored_distances(path, key: str) -> dict | None:
    """The distances stored at ``path`` if made under ``key``, else None (never computes)."""
    store = NpzStore(path)
    return _tensors(store.load()) if store.stored_key() == key else None
