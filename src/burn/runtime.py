"""How and where a run executes, never what it computes.

A :class:`Runtime` is passed to every stage beside the science config. None of its fields
enters a config hash: a run on a GPU and a run on a CPU of the same config share one key and
one results folder (their numbers agree to float32 rounding; results/README.md).

Threads: torch's default, one per core, thrashes beside any other busy process. Its OpenMP
threads spin at the barrier that ends each parallel region (libgomp spins about 3 ms before it
sleeps), and a region ends only when its slowest thread has run; a thread that shares its core
with another process waits out a scheduler slice, so every small operation costs milliseconds.
Measured here (2 cores): Fig. 2's notebook takes 12 s alone and over 150 s beside a one-core
busy loop at two threads, 14 s at one (benchmarks/contention.py). The default is therefore the
cores other processes leave free (``default_threads``).
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import time
from dataclasses import dataclass

import torch

DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def cpu_has_bf16() -> bool | None:
    """Whether this CPU has bf16 instructions (``avx512_bf16`` or ``amx_bf16``), without which
    bf16 autocast runs about 12x slower than float32 (experiments/README.md). On x86, read
    from /proc/cpuinfo, else torch's own check; None: unknown (another architecture)."""
    from .provenance import cpu_info

    if platform.machine().lower() not in ("x86_64", "amd64", "x86", "i686"):
        return None
    flags = cpu_info()["flags"]
    if flags is not None:
        return bool({"avx512_bf16", "amx_bf16"} & set(flags))
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported",
                                                    "_is_amx_tile_supported")]
    return any(c() for c in checks) if all(checks) else None


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _proc_stat() -> tuple[int, int]:
    """(busy, all) clock ticks of every core since boot, from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def busy_elsewhere(window: float = 0.3) -> float:
    """How many cores other processes keep busy: the machine's busy time over ``window``
    seconds (/proc/stat) less this process's own, in cores; where /proc/stat is missing, the
    1-minute load average (which lags a change by a minute)."""
    try:
        busy0, all0 = _proc_stat()
        own0, t0 = time.process_time(), time.monotonic()
        time.sleep(window)
        busy1, all1 = _proc_stat()
        own1, t1 = time.process_time(), time.monotonic()
    except (OSError, ValueError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cores = os.cpu_count() or 1
    busy = cores * (busy1 - busy0) / max(all1 - all0, 1)
    return max(0.0, busy - (own1 - own0) / max(t1 - t0, 1e-9))


def free_cores(window: float = 0.3) -> int:
    """The usable cores that other processes leave idle (``busy_elsewhere`` rounded half up),
    at least 1."""
    others = busy_elsewhere(window)
    return max(1, min(usable_cores(), int((os.cpu_count() or 1) - others + 0.5)))


def env_threads() -> int | None:
    """``$OMP_NUM_THREADS`` where it is a positive integer (torch, MKL and OpenBLAS read it)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def threads_now() -> int:
    """``$OMP_NUM_THREADS`` if set, else the cores free now (``free_cores``, 0.3 s)."""
    return env_threads() or free_cores()


@functools.lru_cache(maxsize=1)
def default_threads() -> int:
    """The thread count of a run without ``--threads``: ``threads_now`` when the process
    first asks (measured once)."""
    return threads_now()


@dataclass(frozen=True)
class Runtime:
    """``device``: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    ``threads``: CPU threads for torch (None: ``default_threads()``, the cores that other
    processes leave free, or ``$OMP_NUM_THREADS``).
    ``channels_last``: memory layout of the model (None: on for width >= 16, where it is
    1.3-1.9x faster on the CPU; at width 4 it is slower). ``deepfool_batch``: images per
    DeepFool batch (None: 256 on the CPU, 2048 on a GPU). ``compile``: train the attacked
    model through ``torch.compile(mode=compile)`` (None: eager); ``reduce-overhead`` adds CUDA
    graphs, for a GPU step bound by the host. ``data_root`` / ``results_root``:
    where datasets are read and results written (None: the defaults of ``burn.data`` and
    the repository's ``results/``)."""

    device: str = "auto"
    threads: int | None = None
    channels_last: bool | None = None
    deepfool_batch: int | None = None
    compile: str | None = None
    data_root: str | None = None
    results_root: str | None = None
    download: bool = False
    progress: bool = True
    debug: bool = False

    def __post_init__(self):
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(f"--device must be one of {list(DEVICES)} or cuda:N, got {self.device!r}")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ValueError(f"--compile must be one of {list(COMPILE_MODES)}, got {self.compile!r}")
        for name in ("threads", "deepfool_batch"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device}: this machine has no CUDA device "
                             "(use --device cpu or auto)")
        return torch.device(self.device)

    def use_channels_last(self, width: int) -> bool:
        return width >= 16 if self.channels_last is None else self.channels_last

    def deepfool_batch_size(self) -> int:
        if self.deepfool_batch is not None:
            return self.deepfool_batch
        return 2048 if self.torch_device().type == "cuda" else 256

    def say(self, message: str) -> None:
        """A line on stderr about what a long stage computes (silent with ``progress=False``,
        which also skips measuring the training speed it would report)."""
        if self.progress:
            print(message, file=sys.stderr, flush=True)

    def cpu_threads(self) -> int:
        """The threads torch runs on: ``threads``, else ``default_threads()``."""
        return self.threads or default_threads()

    def apply(self) -> "Runtime":
        """Set torch's thread count (``cpu_threads``) and, on a GPU, exact float32 matmuls and
        convolutions (TF32 off: DeepFool's distances must match a CPU recomputation);
        process-wide."""
        torch.set_num_threads(self.cpu_threads())
        if self.torch_device().type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        return self
