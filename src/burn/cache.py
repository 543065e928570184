"""Config hashing, the run cache outside the repository, and verified files.

Every file a stage writes is written atomically and carries a checksum of its content: JSON
records a ``checksum`` field, ``model.pt`` a ``sha256`` of its tensors, DeepFool ``.npz`` files
a ``checksum`` array. Reading checks it, so a damaged or truncated file stops the run with one
line that names the file and says how to get it back (:class:`DamagedFileError`) instead of
being trusted or ending in a traceback.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
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


class DamagedFileError(RuntimeError):
    """A stored file cannot be read or does not match its checksum."""

    def __init__(self, path, problem: str, hint: str = ""):
        hint = hint or ("if it is a committed file, restore it with `git checkout -- "
                        f"{_shown(path)}`; otherwise delete it and run the command again")
        super().__init__(f"{_shown(path)} is damaged ({problem}): {hint}")


def _shown(path) -> str:
    from .config import PROJECT_ROOT

    p = Path(path).resolve()
    return str(p.relative_to(PROJECT_ROOT)) if PROJECT_ROOT in p.parents else str(p)


def _json_checksum(data: dict) -> str:
    blob = json.dumps({k: v for k, v in data.items() if k != "checksum"}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_json(path, data) -> None:
    """Write JSON atomically (temp file + rename): a crash never leaves half a file. A dict
    gets a ``checksum`` field over the rest of its content, which ``read_json`` verifies."""
    data = to_jsonable(data)
    if isinstance(data, dict):
        data = json.loads(json.dumps(data))  # the form read back (tuples -> lists, str keys)
        data = {**{k: v for k, v in data.items() if k != "checksum"}, "checksum": _json_checksum(data)}
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path, *, hint: str = "") -> Any:
    """The content of a JSON file written by ``write_json``, its checksum verified and removed
    (files without one, written before checksums existed, are read as they are)."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedFileError(path, f"not valid JSON: {e}", hint) from None
    if isinstance(data, dict) and "checksum" in data:
        if data["checksum"] != _json_checksum(data):
            raise DamagedFileError(path, "its content does not match its checksum", hint)
        data = {k: v for k, v in data.items() if k != "checksum"}
    return data


def tensors_sha256(tensors: dict) -> str:
    """A hash of named tensors (names, dtypes, shapes, bytes), independent of dict order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def save_torch(obj, path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path, *, hint: str = "", mmap: bool = False):
    """``torch.load`` of a file written by ``save_torch``; a file that cannot be read, or a
    dict whose ``state_dict`` does not match its ``sha256``, is a DamagedFileError. ``mmap``:
    tensors are mapped, not read, so reading a small entry of a large file is cheap."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise DamagedFileError(path, f"cannot be loaded: {type(e).__name__}: {e}"[:300], hint) from None
    if isinstance(obj, dict) and "sha256" in obj and "state_dict" in obj:
        if tensors_sha256(obj["state_dict"]) != obj["sha256"]:
            raise DamagedFileError(path, "its weights do not match their checksum", hint)
    return obj


def epoch_checkpoint(parts: dict, generator: torch.Generator, epoch: int, **extra) -> dict:
    """What a training loop saves after ``epoch`` epochs to resume from: the state of each of
    ``parts`` (modules, optimizers, schedulers, hooks; anything with ``state_dict``), the data
    generator's state, and ``extra``."""
    return {**{k: v.state_dict() for k, v in parts.items()}, "generator": generator.get_state(),
            "epoch": epoch, **extra}


def restore_checkpoint(state: dict, parts: dict, generator: torch.Generator) -> int:
    """Load an ``epoch_checkpoint`` into ``parts`` and ``generator``; returns its epoch."""
    for k, v in parts.items():
        v.load_state_dict(state[k])
    generator.set_state(state["generator"])
    return int(state["epoch"])


def _arrays_checksum(arrays: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(k for k in arrays if k != "checksum"):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def save_npz(path, **arrays) -> None:
    """``np.savez_compressed`` atomically, with a ``checksum`` array that ``load_npz`` verifies."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays, checksum=np.array(_arrays_checksum(arrays)))


def load_npz(path, *, hint: str = "") -> dict:
    """All arrays of an ``.npz`` file, read and checked against its checksum (files without
    one are read as they are); a truncated or altered file is a DamagedFileError."""
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except Exception as e:  # BadZipFile, zlib / CRC errors, EOFError, ValueError
        raise DamagedFileError(path, f"cannot be read: {type(e).__name__}: {e}"[:300], hint) from None
    if "checksum" in arrays:
        stored = str(arrays.pop("checksum"))
        if stored != _arrays_checksum(arrays):
            raise DamagedFileError(path, "its arrays do not match their checksum", hint)
    return arrays
