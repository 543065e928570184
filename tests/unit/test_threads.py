"""Thread counts: a run without --threads takes the cores other processes leave free (one
per core beside a busy process thrashes: burn.runtime), and the notebooks' kernels get theirs
through $OMP_NUM_THREADS."""

import os
import shutil

import pytest
import torch

import burn.notebooks
import burn.runtime
from burn.cli import main
from burn.config import PROJECT_ROOT
from burn.notebooks import kernel_threads, reproduce, run_notebook
from burn.runtime import Runtime, default_threads, free_cores


def _machine(monkeypatch, cores: int, busy_share: float):
    """A machine of ``cores`` cores whose /proc/stat counts ``busy_share`` of its time busy
    between two reads (this process sleeps in between, so none of it is its own)."""
    reads = iter([(0, 0), (round(1000 * busy_share), 1000)])
    monkeypatch.setattr(burn.runtime, "_proc_stat", lambda: next(reads))
    monkeypatch.setattr(burn.runtime.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(burn.runtime, "usable_cores", lambda: cores)


@pytest.mark.parametrize("cores, busy_share, free", [
    (2, 0.0, 2),    # a quiet machine: one thread per core
    (2, 0.5, 1),    # one busy loop on two cores
    (2, 1.0, 1),    # both cores busy: still one thread
    (4, 0.3, 3),    # 1.2 cores busy elsewhere
    (4, 0.15, 3),   # 0.6 of a core busy counts as one
    (4, 0.1, 4),    # 0.4 of a core does not
])
def test_free_cores_leaves_the_cores_others_keep_busy(monkeypatch, cores, busy_share, free):
    _machine(monkeypatch, cores, busy_share)
    assert free_cores(window=0.01) == free


def test_free_cores_on_this_machine_is_a_usable_count():
    assert 1 <= free_cores(window=0.05) <= burn.runtime.usable_cores()


def test_omp_num_threads_is_the_default_where_set(monkeypatch):
    default_threads.cache_clear()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    try:
        assert default_threads() == 3 and Runtime().cpu_threads() == 3
        assert Runtime(threads=2).cpu_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "zero")  # not a count: the free cores
        default_threads.cache_clear()
        _machine(monkeypatch, 2, 0.5)
        assert default_threads() == 1
    finally:
        default_threads.cache_clear()


def test_apply_sets_torchs_threads():
    before = torch.get_num_threads()
    try:
        Runtime(threads=1).apply()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_notebooks_kernel_starts_with_its_threads(tmp_path, monkeypatch):
    seen = []

    executed = PROJECT_ROOT / "notebooks" / "executed" / "cpu" / "fig2_adversarial_labels.ipynb"

    def execute(src, out, **kwargs):  # papermill's, as far as the kernel's environment goes
        seen.append(os.environ.get("OMP_NUM_THREADS"))
        shutil.copyfile(executed, out)

    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    run_notebook("fig2_adversarial_labels", "smoke", out_dir=tmp_path, threads=1)
    assert seen == ["1"] and os.environ["OMP_NUM_THREADS"] == "5"  # as it was after
    monkeypatch.delenv("OMP_NUM_THREADS")
    run_notebook("fig2_adversarial_labels", "smoke", out_dir=tmp_path, threads=2)
    assert seen == ["1", "2"] and "OMP_NUM_THREADS" not in os.environ
    assert (tmp_path / "fig2_adversarial_labels.ipynb").is_file()
    assert not (PROJECT_ROOT / "notebooks" / "executed" / "smoke").exists()


def test_reproduce_passes_threads_and_measures_them_per_notebook(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(burn.notebooks, "run_notebook",
                        lambda name, preset, **kw: calls.append((name, kw["threads"])) or False)
    rows = reproduce("smoke", ["a", "b"], threads=3)
    assert calls == [("a", 3), ("b", 3)] and [r["threads"] for r in rows] == [3, 3]
    assert "== a (smoke, 3 threads of" in capsys.readouterr().out
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    free = iter([2, 1])
    monkeypatch.setattr(burn.runtime, "free_cores", lambda: next(free))
    reproduce("smoke", ["c", "d"])
    assert calls[2:] == [("c", 2), ("d", 1)]


@pytest.mark.parametrize("threads", [0, -1, True, 1.5])
def test_kernel_threads_must_be_a_positive_count(threads):
    with pytest.raises(ValueError, match="--threads must be a positive integer"):
        kernel_threads(threads)


def test_reproduce_refuses_bad_threads_and_notebooks_before_running(capsys):
    assert main(["reproduce", "--preset", "smoke", "--threads", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "burn: error: --threads must be a positive integer, got 0"
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "--only", "fig3"])
    assert e.value.code == 2 and "invalid choice: 'fig3'" in capsys.readouterr().err
