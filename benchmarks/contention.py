"""Benchmark: one notebook's wall time alone and beside a one-core busy loop.

    python benchmarks/contention.py                            # fig2_adversarial_labels, burn's default threads
    python benchmarks/contention.py --threads 2                # torch's old default on 2 cores
    python benchmarks/contention.py --env OMP_WAIT_POLICY=PASSIVE --threads 2
    python benchmarks/contention.py --only table1_boundary_distance --timeout 600

Runs ``burn reproduce --only NAME`` once to warm the caches (``--no-warmup`` skips it), then
alone, then beside ``--busy`` busy loops (``while True: pass``, one core each) that it starts
and always stops; each loop also ends by itself after ``--timeout`` seconds, should this script
be killed. A run past ``--timeout`` is stopped with its kernel and counted as that long.
Prints both wall times and their ratio (target: at most 2x; the exit status is 1 above it)
and the output files the runs left changed (``git status``): ``burn reproduce`` writes the
executed notebook, figures and tables, and a rerun of a cached notebook should leave them as
committed. Needs a quiet machine for the alone run: it prints how many cores other processes
kept busy just before.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import subprocess
import sys
import time

from burn.config import PROJECT_ROOT
from burn.notebooks import NOTEBOOKS
from burn.runtime import busy_elsewhere, usable_cores

OUTPUTS = ("notebooks/executed", "figures", "results")
TARGET = 2.0


def changed_outputs() -> set[str]:
    """The output files ``git status`` lists as modified or new."""
    out = subprocess.run(["git", "status", "--porcelain", "--", *OUTPUTS], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, check=True).stdout
    return {line[3:] for line in out.splitlines()}


def reproduce(name: str, preset: str, threads: int | None, env: dict, timeout: float) -> tuple[float, bool, str]:
    """(wall seconds, finished, the line naming its threads) of one ``burn reproduce --only``;
    past ``timeout`` its process group (the kernel too) is killed."""
    cmd = [sys.executable, "-m", "burn.cli", "reproduce", "--only", name, "--preset", preset, "--quiet"]
    cmd += ["--threads", str(threads)] if threads else []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return time.perf_counter() - t0, False, ""
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out}")
    line = next((s.strip() for s in out.splitlines() if s.startswith("== ")), "")
    return seconds, True, line


def busy_loops(n: int, seconds: float) -> list[subprocess.Popen]:
    """``n`` one-core busy loops, each ending by itself after ``seconds``."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="fig2_adversarial_labels", choices=NOTEBOOKS)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--threads", type=int, help="passed to burn reproduce (default: its own)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment of the burn runs, e.g. OMP_WAIT_POLICY=PASSIVE (repeatable)")
    p.add_argument("--busy", type=int, default=1, help="busy loops beside the second run (default 1)")
    p.add_argument("--timeout", type=float, default=300, help="seconds a run may take (default 300)")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed first run")
    args = p.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    run = functools.partial(reproduce, args.only, args.preset, args.threads, env, args.timeout)

    before = changed_outputs()
    print(f"{args.only} ({args.preset}) on {usable_cores()} cores; threads "
          f"{args.threads or 'burn default'}; env {env or 'as is'}", flush=True)
    if not args.no_warmup:
        run()
    print(f"other processes keep {busy_elsewhere(1.0):.1f} cores busy before the alone run", flush=True)
    alone, ok, line = run()
    print(f"alone:       {alone:6.1f} s{'' if ok else ' (stopped: timeout)'}  {line}", flush=True)
    loops = busy_loops(args.busy, args.timeout + 30)
    try:
        time.sleep(1.0)  # the loops are running when the notebook measures the free cores
        beside, ok, line = run()
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    mark = "" if ok else " (stopped: timeout, so at least)"
    print(f"beside {args.busy} busy loop{'s' if args.busy != 1 else ''}: {beside:6.1f} s{mark}  {line}")
    ratio = beside / alone
    print(f"ratio {ratio:.2f}x (target <= {TARGET:g}x): {'ok' if ratio <= TARGET else 'too slow'}")
    new = sorted(changed_outputs() - before)
    print("outputs changed by the runs: " + (", ".join(new) if new else "none (as committed)"))
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
