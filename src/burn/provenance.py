"""What every result carries: package versions, git commit (and whether the tree was dirty),
machine, time."""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from .atomic import write_if_changed
from .config import PROJECT_ROOT


GENERATED = ("results", "figures", "notebooks/executed", "README.md")


def git_commit() -> dict:
    def run(*args):
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        commit = run("rev-parse", "HEAD")
        # the code and configs against the commit; the outputs a run writes (results, figures,
        # executed notebooks, the README's tables) do not make the next output's tree dirty
        dirty = bool(run("status", "--porcelain", "--untracked-files=no", "--", ".",
                         *(f":!{p}" for p in GENERATED)))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    if os.environ.get("BURN_GIT_COMMIT"):
        # a copy of the tree sent to a GPU lease, whose .git (if any) may not match the files:
        # the commit the copy was made from, written by `make gpu-data` and passed in by
        # experiments/gpu/run.sh
        commit = os.environ["BURN_GIT_COMMIT"]
        dirty = os.environ.get("BURN_GIT_DIRTY", "0") == "1"
    return {"commit": commit or None, "dirty": dirty}


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for mod in ("torch", "torchvision", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def cpu_info() -> dict:
    """The CPU's model name and the vector extensions that decide CPU speed here (bf16
    autocast is fast only with ``avx512_bf16`` or ``amx_bf16``), read from /proc/cpuinfo
    where it exists."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or None, "flags": None}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"model": fields.get("model name"), "flags": [f for f in wanted if f in flags]}


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.machine(), "cpu": cpu_info(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def provenance(runtime=None) -> dict:
    """Commit, versions, machine and time; with ``runtime`` (a ``burn.runtime.Runtime``), the
    speed-only settings the run used (device, memory format, DeepFool batch), which no config
    hash contains."""
    out = {"git": git_commit(), "versions": versions(), "machine": machine(),
           "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if runtime is not None:
        out["runtime"] = {"device": str(runtime.torch_device()), "threads": runtime.threads,
                          "channels_last": runtime.channels_last,
                          "deepfool_batch": runtime.deepfool_batch_size(),
                          **({"compile": runtime.compile} if runtime.compile else {})}
    return out


def _relative(p: Path) -> str:
    return str(p.relative_to(PROJECT_ROOT) if p.is_absolute() and PROJECT_ROOT in p.parents else p)


def _sidecar(path, config, inputs, changed: bool) -> None:
    """The ``.json`` beside an output: its config, the hashes of its inputs and provenance.
    Rewritten only when the output, its config or its inputs changed, so rerunning a cached
    pipeline leaves every file (and ``git status``) as it was."""
    from .cache import read_json, write_json  # cache -> data -> config: imported late

    files = {_relative(Path(p)): hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16]
             for p in inputs or [] if Path(p).is_file()}
    content = json.loads(json.dumps({"output": Path(path).name, "config": config, "inputs": files},
                                    default=str))
    side = Path(str(path) + ".json")
    if not changed and side.is_file():
        try:
            old = read_json(side)
        except Exception:  # a damaged sidecar is rewritten
            old = {}
        if all(old.get(k) == v for k, v in content.items()):
            return
    write_json(side, {**content, **provenance()})


def save_table(df, path, config=None, inputs=None) -> None:
    """Write ``df`` as CSV atomically, with a ``.json`` sidecar (config, inputs, provenance);
    an unchanged table leaves both files untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    changed = write_if_changed(path, df.to_csv(index=False).encode())
    _sidecar(path, config, inputs, changed)


def save_figure(fig, path_stem, config=None, inputs=None) -> list:
    """Save ``fig`` as PNG and PDF (``path_stem`` without suffix), each written atomically
    (and only if its bytes changed; no creation date, so the same figure is the same file),
    with a sidecar."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out, changed = [], False
    for ext in ("png", "pdf"):
        p = stem.with_suffix(f".{ext}")
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150, bbox_inches="tight",
                    metadata=None if ext == "png" else {"CreationDate": None})
        changed |= write_if_changed(p, buf.getvalue())
        out.append(p)
    _sidecar(stem.with_suffix(".png"), config, inputs, changed)
    return out
