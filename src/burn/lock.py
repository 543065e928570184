"""One writer per record: ``record_lock(path)`` holds ``.<name>.lock`` beside ``path`` while a
stage computes and writes it (``burn.stages.cached``), so two jobs of a sweep never write one
file; the second waits, then reads back what the first wrote.

The lock file is created with ``O_CREAT | O_EXCL`` (atomic, on NFS too) and names its holder
(host, pid). The holder touches it every ``REFRESH_S`` seconds. A lock is stale when its holder
is a dead process of this host, or when it has not been touched for ``STALE_S`` seconds (a
holder on another node that was killed); a stale lock is broken, with the temporary files its
dead holder left beside the record, and the stage computes again. The lock is re-entrant
within a thread (a stage that reads another record of the same file).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

REFRESH_S = 30.0
STALE_S = 600.0
POLL_S = 1.0

_held: set[tuple[Path, int]] = set()  # (lock, thread) held by this process (re-entrance)


def lock_path(path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def record_lock(path, *, poll_s: float = POLL_S):
    """Hold the lock of the record ``path`` for the ``with`` block; waits while another live
    process holds it. Yields whether it had to wait (the record may have been written meanwhile)."""
    lock = lock_path(path).absolute()
    mine = (lock, threading.get_ident())
    if mine in _held:
        yield False
        return
    token, waited = _acquire(lock, poll_s)
    _held.add(mine)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(lock, stop), daemon=True)
    beat.start()
    try:
        yield waited
    finally:
        stop.set()
        beat.join()
        _held.discard(mine)
        if _read(lock).get("token") == token:
            lock.unlink(missing_ok=True)


def _acquire(lock: Path, poll_s: float) -> tuple[str, bool]:
    token = uuid.uuid4().hex
    me = {"host": socket.gethostname(), "pid": os.getpid(), "token": token,
          "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    lock.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(lock)
            if _stale(lock, holder):
                _break(lock, holder)
                continue
            if not waited and holder:
                print(f"waiting for {lock.name[1:-5]}: {holder.get('host')} pid {holder.get('pid')} "
                      f"computes it (since {holder.get('since')}; lock {lock})", file=sys.stderr,
                      flush=True)
            waited = True
            time.sleep(poll_s)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return token, waited


def _read(lock: Path) -> dict:
    """The holder named in ``lock``; {} when it is gone or not written yet."""
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _stale(lock: Path, holder: dict) -> bool:
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False  # released meanwhile: try again
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return not _alive(holder["pid"])
    return age > STALE_S  # another node's holder (or one not written yet) that stopped beating


def _break(lock: Path, holder: dict) -> None:
    """Remove the stale ``lock`` unless another process broke and re-took it meanwhile (then the
    lock moved aside is not the one judged stale, and it is put back)."""
    aside = lock.with_name(f"{lock.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    if _read(aside).get("token") != holder.get("token"):
        try:
            os.link(aside, lock)  # fails if a third process holds it now: then it is theirs
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)
        return
    aside.unlink(missing_ok=True)
    if holder.get("host") == socket.gethostname() and "pid" in holder:
        for suffix in ("", ".npz"):  # burn.atomic's temporary files of the dead holder
            for tmp in lock.parent.glob(f".*.tmp{holder['pid']}{suffix}"):
                tmp.unlink(missing_ok=True)


def _heartbeat(lock: Path, stop: threading.Event) -> None:
    while not stop.wait(REFRESH_S):
        try:
            os.utime(lock)
        except FileNotFoundError:
            return
