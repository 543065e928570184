"""What every result carries: package versions, git commit (and whether the tree was dirty),
machine, time."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import sys

from .config import PROJECT_ROOT


def git_commit() -> dict:
    def run(*args):
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        commit = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {"commit": commit or None, "dirty": dirty}


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for mod in ("torch", "torchvision", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def machine() -> dict:
    import os

    import torch

    return {"platform": platform.platform(), "processor": platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def provenance() -> dict:
    return {"git": git_commit(), "versions": versions(), "machine": machine(),
            "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
