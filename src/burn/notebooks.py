"""Run the paper's notebooks with papermill into ``notebooks/executed/<preset>/``.

An executed notebook is written only when its content changed: papermill's timestamps and
durations are removed first, so rerunning a cached pipeline leaves every executed notebook
(and ``git status``) as it was, while a changed number or figure shows up as a diff.

Each kernel runs ``threads`` CPU threads (``$OMP_NUM_THREADS``, which torch, MKL and OpenBLAS
read at start); without ``--threads``, the cores other processes leave free as the notebook
starts (``burn.runtime.free_cores``): one per core beside a busy process thrashes
(``burn.runtime``'s docstring).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from .atomic import write_if_changed
from .config import PROJECT_ROOT

# In the paper's order; Fig. 4 last, since it reads the records the others write.
NOTEBOOKS = ("table1_boundary_distance", "fig1_feature_similarity", "fig2_adversarial_labels",
             "fig5_filtering", "fig6_unlearning_budget", "table2_ablation", "fig4_defense_tradeoff")
VOLATILE = ("start_time", "end_time", "duration")


def normalize(nb: dict) -> dict:
    """``nb`` without run-specific content: papermill's start/end/duration (notebook and cells),
    Jupyter's per-cell execution timestamps, the random id papermill gives the cell of
    injected parameters, and progress bars (their timings, and whether a stage was computed
    or read from its cache, differ from run to run; warnings on stderr are kept)."""
    for meta in [nb.get("metadata", {})] + [c.get("metadata", {}) for c in nb.get("cells", [])]:
        for key in VOLATILE:
            meta.get("papermill", {}).pop(key, None)
        meta.pop("execution", None)
    for cell in nb.get("cells", []):
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            cell["id"] = "injected-parameters"
        if "outputs" in cell:
            cell["outputs"] = [o for o in cell["outputs"] if not _progress_bar(o)]
    return nb


def with_cell_ids(nb: dict) -> dict:
    """``nb`` (a notebook's JSON) where each cell without an ``id`` has one made from its
    position and source: nbformat would give it a random one, so every run would change the
    executed notebook."""
    for i, cell in enumerate(nb.get("cells", [])):
        if not cell.get("id"):
            text = "".join(cell.get("source", ""))
            cell["id"] = hashlib.sha256(f"{i}\n{text}".encode()).hexdigest()[:8]
    return nb


def _progress_bar(output: dict) -> bool:
    """A tqdm update: a stderr stream whose text starts with a carriage return."""
    text = output.get("text", "")
    text = "".join(text) if isinstance(text, list) else text
    return output.get("output_type") == "stream" and output.get("name") == "stderr" \
        and text.startswith("\r")


@contextlib.contextmanager
def _environment(**values: str):
    """``os.environ`` with ``values`` set inside the block (a kernel started there inherits
    them), as it was after."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def kernel_threads(threads: int | None = None) -> int:
    """``threads``, checked; None: ``$OMP_NUM_THREADS`` if set, else the cores free now."""
    from .runtime import threads_now

    if threads is None:
        return threads_now()
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {threads!r}")
    return threads


def run_notebook(name: str, preset: str, *, parameters: dict | None = None,
                 out_dir: Path | None = None, progress: bool = True,
                 threads: int | None = None) -> bool:
    """Execute ``notebooks/<name>.ipynb`` for ``preset`` in a kernel of ``threads`` CPU
    threads (``kernel_threads``); True if the executed copy changed."""
    import nbformat
    import papermill

    src = PROJECT_ROOT / "notebooks" / f"{name}.ipynb"
    if not src.is_file():
        raise FileNotFoundError(f"no notebook {src}; the notebooks are {list(NOTEBOOKS)}")
    out = Path(out_dir or PROJECT_ROOT / "notebooks" / "executed" / preset) / f"{name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    threads = kernel_threads(threads)
    with tempfile.TemporaryDirectory(prefix="burn-nb-") as tmpdir, \
            _environment(OMP_NUM_THREADS=str(threads)):
        tmp, source = Path(tmpdir) / out.name, Path(tmpdir) / f"source-{out.name}"
        source.write_text(json.dumps(with_cell_ids(json.loads(src.read_text())), indent=1))
        papermill.execute_notebook(str(source), str(tmp), parameters={"preset": preset, **(parameters or {})},
                                   progress_bar=progress, kernel_name="python3", cwd=str(PROJECT_ROOT))
        nb = normalize(nbformat.read(str(tmp), as_version=4))
        # the paths as a reader of the repository sees them (not this machine's, not the temp file)
        nb.metadata.papermill.update(input_path=_relative(src), output_path=_relative(out))
        text = nbformat.writes(nb)
    return write_if_changed(out, text)


def _relative(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(PROJECT_ROOT)) if PROJECT_ROOT in path.parents else str(path)


def reproduce(preset: str, names=NOTEBOOKS, *, progress: bool = True,
              threads: int | None = None) -> list[dict]:
    """Run ``names`` in order, printing each one's time and threads; returns one row per
    notebook. ``threads``: of every kernel (None: ``$OMP_NUM_THREADS`` if set, else the cores
    free as each notebook starts)."""
    from .runtime import usable_cores

    rows = []
    for name in names:
        n = kernel_threads(threads)
        t0 = time.perf_counter()
        print(f"== {name} ({preset}, {n} thread{'s' if n != 1 else ''} of {usable_cores()} cores)",
              flush=True)
        changed = run_notebook(name, preset, progress=progress, threads=n)
        rows.append({"notebook": name, "seconds": round(time.perf_counter() - t0, 1),
                     "threads": n, "changed": changed})
        print(f"   {name}: {rows[-1]['seconds']:.0f} s, {'changed' if changed else 'unchanged'}", flush=True)
    return rows


class Setup(NamedTuple):
    """What every notebook starts from: its output folders, the runtime, the attacked models,
    the data's name and the metadata written beside each table and figure."""

    res: Path
    figs: Path
    runtime: object
    runs: dict
    data_name: str
    meta: dict


def setup(preset: str, dataset: str, attacks, *, results_root=None, figures_root=None,
          progress: bool = True) -> Setup:
    """The first cell of every notebook: load (or train) the attacked models of ``attacks``
    and print their ACC / ASR."""
    from .artifacts import load_runs
    from .runtime import Runtime

    res = Path(results_root or PROJECT_ROOT / "results") / preset / dataset
    figs = Path(figures_root or PROJECT_ROOT / "figures") / preset
    runtime = Runtime(results_root=results_root, progress=progress)
    runs = load_runs(preset, dataset, attacks, runtime)
    data_name = next(iter(runs.values())).poisoned.name.split(",")[0]
    meta = {"preset": preset, "dataset": data_name, "attacks": list(attacks),
            "attack_config_hashes": {a: r.key for a, r in runs.items()},
            "attack_variants": {a: r.cfg.variant for a, r in runs.items() if r.cfg.variant}}
    print(data_name, "|", {a: f"ACC {r.record['acc']:.3f} ASR {r.record['asr']:.3f}"
                           + (f" (variant {r.cfg.variant})" if r.cfg.variant else "") for a, r in runs.items()})
    return Setup(res, figs, runtime, runs, data_name, meta)
