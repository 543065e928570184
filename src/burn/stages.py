"""One mechanism for every cached stage: ``cached(store, key, compute)``.

A stage's result lives in a *store* (a file of a known format beside the results, or an entry
of one) under the key of everything it depends on. ``cached`` returns the stored result when
its key matches, and otherwise computes it and writes it atomically under the key. A damaged
file is reported, never trusted or silently replaced; a result of another key is recomputed,
or refused where replacing it would lose work (the attacked model: ``conflict``).

Stores:
- ``JsonStore``: a dict in a JSON file, its key in ``config_hash`` (records: none.json,
  burn.json, <defense>.json).
- ``NpzStore``: arrays in an ``.npz``, the key in the array ``key`` (DeepFool distances).
- ``TableStore``: a CSV with its provenance sidecar, the key in the sidecar's config.
- ``EntryStore``: one entry of a JSON dict of keyed entries (one row of a sweep, written as
  soon as it is measured, so an interrupted sweep resumes).
- ``TorchStore``: a ``torch.save`` file with a ``key`` entry (run-cache results).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .atomic import ensure_writable
from .cache import load_npz, load_torch, read_json, save_npz, save_torch, write_json
from .lock import record_lock


def _restore_hint(path: Path, how: str) -> str:
    return f"restore it with `git checkout -- {path}` if it is committed, or {how}"


@dataclass(frozen=True)
class JsonStore:
    path: Path
    redo: str = "delete it to compute it again"  # the recovery a damaged file's error names

    def stored_key(self):
        if not self.path.is_file():
            return None
        return self.load().get("config_hash")

    def load(self) -> dict:
        return read_json(self.path, hint=_restore_hint(self.path, self.redo))

    def save(self, value: dict, key: str) -> dict:
        write_json(self.path, {**value, "config_hash": key})
        return self.load()  # the record as stored (JSON types): fresh and reused runs agree


@dataclass(frozen=True)
class NpzStore:
    path: Path
    redo: str = "delete it to compute the distances again"

    def stored_key(self):
        return str(self.load()["key"]) if self.path.is_file() else None

    def load(self) -> dict:
        return load_npz(self.path, hint=_restore_hint(self.path, self.redo))

    def save(self, value: dict, key: str) -> dict:
        save_npz(self.path, key=np.array(key), **value)
        return self.load()


@dataclass(frozen=True)
class TableStore:
    path: Path
    key_field: str = "key"

    @property
    def sidecar(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    def stored_key(self):
        if not (self.path.is_file() and self.sidecar.is_file()):
            return None
        return read_json(self.sidecar)["config"].get(self.key_field)

    def load(self):
        import pandas as pd

        return pd.read_csv(self.path)

    def save(self, value, key: str):
        from .provenance import save_table

        save_table(value, self.path, config={self.key_field: key})
        return value


@dataclass(frozen=True)
class EntryStore:
    path: Path
    entry: str

    def _all(self) -> dict:
        return read_json(self.path) if self.path.is_file() else {}

    def stored_key(self):
        return self.entry if self.entry in self._all() else None

    def load(self):
        return self._all()[self.entry]

    def save(self, value, key: str):
        write_json(self.path, {**self._all(), self.entry: value})
        return self.load()


@dataclass(frozen=True)
class TorchStore:
    path: Path

    def stored_key(self):  # mapped: the key without reading the value's tensors
        return load_torch(self.path, mmap=True).get("key") if self.path.is_file() else None

    def load(self):
        return load_torch(self.path)["value"]

    def save(self, value, key: str):
        save_torch({"key": key, "value": value}, self.path)
        return value


_MISSING = object()


def _stored(store, key: str, conflict) -> Any:
    """The stored result under ``key``, else ``_MISSING`` (or ``conflict``'s error)."""
    stored = store.stored_key()
    if stored == key:
        return store.load()
    if stored is not None and conflict is not None:
        raise conflict(stored)
    return _MISSING


def cached(store, key: str, compute: Callable[[], Any], *, rerun: bool = False,
           conflict: Callable[[str], Exception] | None = None) -> Any:
    """The result of ``store`` under ``key``: read back when stored under that key (and not
    ``rerun``), else ``compute()``d and written. ``conflict(stored_key)``: the error to raise
    when the store holds a result of another key, instead of replacing it. While it computes,
    the record's lock (``burn.lock``) keeps other writers out; one that waited for it reads
    back what the holder wrote."""
    found = _MISSING if rerun else _stored(store, key, conflict)
    if found is not _MISSING:
        return found
    ensure_writable(Path(store.path).parent)
    with record_lock(store.path):
        found = _MISSING if rerun else _stored(store, key, conflict)  # written while we waited?
        return store.save(compute(), key) if found is _MISSING else found
