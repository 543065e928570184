"""The distances stage: DeepFool L2 distances of a frozen attacked model to its decision
boundary, on its whole training set (``deepfool.npz``) or on chosen samples
(``deepfool_<name>.npz``), stored beside the model under the key of the model, the DeepFool
config and the samples (``burn.stages``; the formulas are ``burn.keys``).

The whole training set takes about 17 minutes at one thread on this CPU, so its computation is resumable:
``deepfool_in_parts`` stores the distances of every ``CHUNK_BATCHES`` batches as they finish,
each part through the same ``cached`` under the hash of its images, in the run cache outside
the repository; an interrupted run computes only the parts missing, and once ``deepfool.npz``
is written the parts are deleted."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from . import keys
from .cache import run_dir, tensors_sha256
from .config import DeepFoolCfg
from .deepfool import DeepFoolResult, deepfool_dataset
from .experiment import AttackRun
from .progress import tqdm
from .stages import NpzStore, TorchStore, cached

CHUNK_BATCHES = 20  # deepfool_in_parts stores the distances of this many batches together


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
    return keys.distances_key(run.key, run.cfg.deepfool)


def _parts(images: Tensor, parts_dir: Path, batch_size: int) -> list[tuple]:
    """The parts of ``images``: (store, key of its images, start, stop) each."""
    chunk = CHUNK_BATCHES * batch_size
    return [(TorchStore(parts_dir / f"part_{s:08d}_{min(s + chunk, len(images)):08d}.pt"),
             tensors_sha256({"images": images[s:s + chunk]}), s, min(s + chunk, len(images)))
            for s in range(0, len(images), chunk)]


def _other_images(store):
    return lambda stored: ValueError(
        f"{store.path} holds the distances of other images than these: the model's key must "
        f"identify its data; delete {store.path.parent} to compute them again")


def deepfool_in_parts(model: nn.Module, images: Tensor, cfg: DeepFoolCfg, parts_dir: Path, *,
                      batch_size: int, progress: bool = True) -> DeepFoolResult:
    """``deepfool_dataset`` over ``images`` in parts of ``CHUNK_BATCHES`` batches, each stored
    in ``parts_dir`` (``part_<start>_<stop>.pt``) as it finishes, under the hash of its images,
    and read back when present: an interrupted run resumes at the parts missing. The batches
    are the ones ``deepfool_dataset`` makes, so the result is bit-identical to it.
    ``parts_dir`` must identify the model, the config and the batch size; a part stored there
    for other images is an error, not recomputed or reused."""
    n = len(images)
    parts = _parts(images, parts_dir, batch_size)
    done = sum(math.ceil((e - s) / batch_size) for store, key, s, e in parts
               if store.stored_key() == key)

    results = []
    with tqdm(total=math.ceil(n / batch_size), initial=done, desc="deepfool",
              disable=not progress, leave=False) as bar:
        for store, key, s, e in parts:
            def compute(s=s, e=e) -> dict:
                return deepfool_dataset(model, images[s:e], cfg, batch_size=batch_size,
                                        bar=bar).tensors()

            results.append(DeepFoolResult(**cached(store, key, compute,
                                                   conflict=_other_images(store))))
    return DeepFoolResult.cat(results)


def _parts_dir(run: AttackRun) -> Path:
    return run_dir("deepfool", keys.deepfool_parts_key(distances_key(run),
                                                       run.runtime.deepfool_batch_size()))


def deepfool_parts_from_end(run: AttackRun) -> int:
    """A second worker for ``boundary_distances`` of ``run``: computes its parts from the last
    one backwards and stops at the first part already stored (or being computed: it waits for
    that part's lock, then reads it). Beside a ``burn deepfool`` or ``burn defend`` of the same
    model, which fills the parts from the front, the two meet in the middle and that job reads
    this one's parts (the same batches, so bit-identical): on two cores, half the wall time.
    Writes no ``deepfool.npz``. Returns the number of parts it computed."""
    rt = run.runtime
    if NpzStore(run.results_dir / "deepfool.npz").stored_key() == distances_key(run):
        return 0
    bs, computed = rt.deepfool_batch_size(), []
    parts = _parts(run.poisoned.images, _parts_dir(run), bs)
    with tqdm(total=len(parts), desc="deepfool parts from the end", disable=not rt.progress,
              leave=False) as bar:
        for store, key, s, e in reversed(parts):
            def compute(s=s, e=e) -> dict:
                computed.append(s)
                return deepfool_dataset(run.model, run.poisoned.images[s:e], run.cfg.deepfool,
                                        batch_size=bs).tensors()

            cached(store, key, compute, conflict=_other_images(store))
            bar.update()
            if not computed or computed[-1] != s:  # the front job had it: we have met
                break
    return len(computed)


def boundary_distances(run: AttackRun) -> dict:
    """DeepFool distances of the frozen attacked model on its whole (poisoned) training set.

    Committed beside the model as ``deepfool.npz`` (a few hundred KB) and reused when its key
    matches; otherwise computed through the resumable run cache. Returns a dict of tensors:
    norms, adv_labels, orig_labels (the model's prediction), iterations, converged, plus
    ``key`` and ``wall_s``."""
    key = distances_key(run)
    rt = run.runtime
    computed = []

    def compute():
        parts_dir = _parts_dir(run)
        computed.append(parts_dir)
        rt.say(f"deepfool: L2 distance to the decision boundary of all {len(run.poisoned)} "
               f"training images ({rt.deepfool_batch_size()} a batch); parts are saved in "
               f"{parts_dir} as they finish, so an interrupted run resumes; the bar shows the "
               "time left")
        t0 = time.perf_counter()
        res = deepfool_in_parts(run.model, run.poisoned.images, run.cfg.deepfool, parts_dir,
                                batch_size=rt.deepfool_batch_size(), progress=rt.progress)
        return _arrays(res, time.perf_counter() - t0)

    out = _tensors(cached(NpzStore(run.results_dir / "deepfool.npz"), key, compute))
    for parts_dir in computed:  # stored in deepfool.npz: the parts are no longer needed
        for p in parts_dir.glob("part_*.pt"):
            p.unlink()
        if not any(parts_dir.iterdir()):
            parts_dir.rmdir()
    return out


def subset_distances(run: AttackRun, index: torch.Tensor, *, name: str) -> dict:
    """DeepFool distances of the frozen model of ``run`` on the training samples ``index``
    only (a few hundred or thousand: Table 1's clean-model reference, the far-tail check of
    Fig. 5), committed beside the model as ``deepfool_<name>.npz`` and reused while the model,
    the DeepFool config and the indices are the same. The arrays follow ``index``'s order and
    include it as ``index``."""
    index = torch.as_tensor(index, dtype=torch.long)
    cfg = run.cfg.deepfool
    key = keys.subset_distances_key(run.key, cfg, index.tolist())

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
