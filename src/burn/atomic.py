"""Atomic file writes: write to a temporary sibling, then rename over the target, so a crash
or an interrupted run never leaves half a file where a result used to be."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is
    removed and ``path`` is untouched. ``suffix`` is for writers that append an extension
    themselves (``np.savez`` adds ``.npz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_if_changed(path, data: bytes | str) -> bool:
    """Write ``data`` atomically unless ``path`` already holds exactly it; True if written.
    Outputs that are regenerated from cached results keep their bytes and their mtime."""
    path = Path(path)
    data = data.encode() if isinstance(data, str) else data
    if path.is_file() and path.read_bytes() == data:
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return True


class NotWritableError(OSError):
    """A results folder cannot be written; raised before any long computation starts."""


def ensure_writable(folder) -> Path:
    """Create ``folder`` if needed and check that a file can be written in it, so a run that
    would end by writing there fails at its start, not after an hour of training."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # per process and thread: two writers in one process must not remove each other's probe
        probe = folder / f".write-probe-{os.getpid()}-{threading.get_ident()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise NotWritableError(f"cannot write results to {folder} ({e.strerror or e}); fix its "
                               "permissions or pass --results-root DIR") from None
    return folder
