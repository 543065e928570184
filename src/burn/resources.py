"""Networks an attack is built with, trained in the repository as committed, keyed stages.

Label-consistent needs an adversarially robust model (its poisoned images are made hard to
learn with PGD on it) and SSBA a StegaStamp encoder (it hides a secret in every poisoned
image). BackdoorBench loads both as files from a cloud folder; here each is a frozen
dataclass of hyperparameters (a :class:`Resource`) that trains its network from the training
set, and ``resource_stage`` stores it once under its key:

``results/<preset>/<dataset>/resources/<name>-<key>.pt``: the network's weights in float16,
with a checksum, and ``<name>-<key>.json``: its record (what it measured on the float16
weights it stores, its wall time, config, versions, git commit). The key is the resource's
name, version, fields, the dataset's config and the seed, so every config keeps its own file.
A missing file is trained; a damaged one stops with one line that names it and the command that
rebuilds it. The attack receives the loaded network in ``fit(..., resources={name: net})`` and
adds the key to its own (``Attack.key_parts``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from .cache import DamagedFileError, config_hash, load_torch, read_json, save_torch, tensors_sha256, write_json
from .data import ImageDataset


@dataclass(frozen=True)
class Resource:
    """A network an attack needs, as the hyperparameters that train it. Subclasses set
    ``name`` and implement ``network``, ``train`` and ``measure``; they are registered in
    ``RESOURCES``."""

    name: ClassVar[str] = "resource"
    version: ClassVar[int] = 1  # bump when what ``train`` computes changes

    def network(self, num_classes: int, image_size: int, dataset: str) -> nn.Module:
        """The untrained network, to load stored weights into (``dataset``: the data config's
        name, for a classifier's normalization)."""
        raise NotImplementedError

    def train(self, train: ImageDataset, *, dataset: str, seed: int, device: torch.device,
              progress: bool) -> nn.Module:
        """The trained network (seeded by ``seed``; deterministic on a CPU)."""
        raise NotImplementedError

    def measure(self, net: nn.Module, train: ImageDataset, test: ImageDataset, *,
                device: torch.device) -> dict:
        """What the record says of the stored network (its accuracy, bit accuracy, ...)."""
        return {}


RESOURCES: dict[str, type[Resource]] = {}


def eval_subset(n_total: int, n: int, seed: int = 0):
    """``n`` of ``n_total`` indices drawn under ``seed``, sorted: the test images a record's
    measures use (the CIFAR-10 copy is ordered by class, so the first ``n`` would be one or
    two classes)."""
    if n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def register(cls: type[Resource]) -> type[Resource]:
    RESOURCES[cls.name] = cls
    return cls


def resource_key(res: Resource, data, seed: int) -> str:
    return config_hash("resource", res.name, res.version, res, data, seed)


@dataclass(frozen=True)
class StoredResource:
    net: nn.Module  # in eval mode, on the requested device
    key: str
    record: dict
    folder: Path | None = None  # where it is stored; what an attack derives from it goes beside


def _half(state: dict) -> dict:
    return {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}


def _loaded(res: Resource, state: dict, num_classes: int, size: int, dataset: str,
            device) -> nn.Module:
    net = res.network(num_classes, size, dataset)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return net.to(device).eval()


def resource_stage(res: Resource, train: ImageDataset, test: ImageDataset, *, data, seed: int,
                   folder: Path, runtime, rebuild: str) -> StoredResource:
    """The network of ``res``, read from ``folder`` when stored under its key, else trained,
    stored (float16) and measured. ``rebuild``: the command that trains it again, named in
    the error a damaged file raises."""
    from .lock import record_lock
    from .provenance import provenance

    key = resource_key(res, data, seed)
    pt, js = folder / f"{res.name}-{key}.pt", folder / f"{res.name}-{key}.json"
    hint = (f"restore it with `git checkout -- {pt}` if it is committed, or delete {pt.name} "
            f"and {js.name} and rebuild it with `{rebuild}`")
    size, device = train.images.shape[-1], runtime.torch_device()
    folder.mkdir(parents=True, exist_ok=True)
    with record_lock(pt):
        if not (pt.is_file() and js.is_file()):
            runtime.say(f"{res.name}: training the attack's {res.name} ({_fields(res)}); "
                        f"stored as {pt}")
            t0 = time.perf_counter()
            net = res.train(train, dataset=data.dataset, seed=seed, device=device,
                            progress=runtime.progress)
            wall = time.perf_counter() - t0
            state = _half(net.state_dict())
            net = _loaded(res, state, train.num_classes, size, data.dataset, device)
            record = {"resource": res.name, "config": dataclasses.asdict(res),
                      **res.measure(net, train, test, device=device), "wall_s": round(wall, 1),
                      "dataset": train.name, "seed": seed, "key": key, **provenance(runtime)}
            save_torch({"key": key, "state_dict": state, "sha256": tensors_sha256(state)}, pt)
            write_json(js, record)
    saved = load_torch(pt, hint=hint)
    record = read_json(js, hint=hint)
    if saved.get("key") != key or record.get("key") != key:
        raise DamagedFileError(pt, f"it holds key {saved.get('key')}, its name says {key}", hint)
    if tensors_sha256(saved["state_dict"]) != saved.get("sha256"):
        raise DamagedFileError(pt, "its weights do not match their checksum", hint)
    return StoredResource(_loaded(res, saved["state_dict"], train.num_classes, size, data.dataset,
                                  device), key, record, folder)


def _fields(res: Resource) -> str:
    return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(res).items())


def remeasure(res: Resource, train: ImageDataset, test: ImageDataset, *, data, seed: int,
              folder: Path, runtime, rebuild: str) -> dict:
    """Measure a stored resource again with the current ``measure`` and rewrite its record's
    measured fields, keeping its weights, wall time and training provenance; the record says
    when and at which commit (``remeasured``). For a record made by an earlier ``measure``."""
    from .provenance import provenance

    stored = resource_stage(res, train, test, data=data, seed=seed, folder=folder,
                            runtime=runtime, rebuild=rebuild)
    js = folder / f"{res.name}-{stored.key}.json"
    now = provenance(runtime)
    record = {**stored.record, **res.measure(stored.net, train, test, device=runtime.torch_device()),
              "remeasured": {k: now[k] for k in ("git", "time_utc") if k in now}}
    write_json(js, record)
    return read_json(js)
