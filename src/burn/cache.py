"""Config hashing, the run cache outside the repository, and atomic writes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path, write_text
from .config import to_dict
from .data import cache_dir


def to_jsonable(obj, *, for_key: bool = False) -> Any:
    obj = to_dict(obj, for_key=for_key)
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def config_hash(*parts) -> str:
    blob = json.dumps([to_jsonable(p, for_key=True) for p in parts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run_dir(stage: str, key: str) -> Path:
    """``<cache>/runs/<stage>/<key>``: checkpoints and intermediate artifacts."""
    d = cache_dir() / "runs" / stage / key
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_json(path, data) -> None:
    """Write JSON atomically (temp file + rename): a crash never leaves half a file."""
    write_text(path, json.dumps(to_jsonable(data), indent=2, sort_keys=False) + "\n")


def save_torch(obj, path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path):
    return torch.load(path, map_location="cpu", weights_only=False)
