"""`burn sweep --executor slurm` on a real one-node Slurm (conftest.py): the records match the
local executor's, a second sweep submits nothing, a cancelled model holds back only its own
defenses and resumes from its last epoch, a failed defense is listed with its log and sets the
exit status, and the paper spec's dry run shows the GPU request."""

import json
from pathlib import Path

import numpy as np
import yaml

from burn.cli import main

# smoke, smaller still: a model trains in about a second
TINY = {"data.limit_train": 160, "data.limit_test": 80, "train.epochs": 1,
        "deepfool.max_iter": 5, "burn.iterations": 1}
SLURM = {"cpus_per_task": 1, "gpus": 0, "time_min": 10}
VOLATILE = {"time_utc", "checksum", "git", "machine"}  # and every *_s(_*): what a run took


def _spec(tmp_path, name, **raw):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"preset": "smoke", "set": TINY, "threads": 1, "slurm": SLURM,
                                    **raw}))
    return str(path)


def _sweep(tmp_path, spec, *extra, executor="slurm", results="results"):
    """``burn sweep`` into tmp_path's ``results`` and ``logs-<results>``; its exit status."""
    return main(["sweep", spec, "--executor", executor, "--results-root", str(tmp_path / results),
                 "--data-root", str(tmp_path / "data"), "--log-dir", str(tmp_path / f"logs-{results}"),
                 *extra])


def _submitted(tmp_path, results="results") -> dict:
    """jobs.json: job name -> {job_id, log, ...} (without the file's checksum)."""
    state = json.loads((tmp_path / f"logs-{results}" / "jobs.json").read_text())
    return {name: v for name, v in state.items() if isinstance(v, dict)}


def _stable(value):
    """A record without what differs between two runs of one computation (times, host)."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE and not k.endswith("_s") and "_s_" not in k}
    return [_stable(v) for v in value] if isinstance(value, list) else value


def _records(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        name = p.relative_to(root).as_posix()
        if p.suffix == ".json":
            out[name] = _stable(json.loads(p.read_text()))
        elif p.suffix == ".npz":
            with np.load(p) as z:
                out[name] = _stable({k: z[k].tolist() for k in z.files})
    return out


def test_smoke_sweep_matches_the_local_executor_and_runs_once(slurm, tmp_path, monkeypatch, capsys):
    spec = _spec(tmp_path, "smoke", attacks=["badnets", "lf"], seeds=[0, 1], defenses=["burn", "fp"])
    assert _sweep(tmp_path, spec) == 0
    out = capsys.readouterr().out
    assert "submitted models: Slurm job" in out and ", aftercorr:" in out
    # the local executor meanwhile, with its own run cache (no checkpoint shared)
    monkeypatch.setenv("BURN_CACHE", str(tmp_path / "cache-local"))
    assert _sweep(tmp_path, spec, executor="local", results="local") == 0
    slurm.wait_idle()
    ids = {s["job_id"] for s in _submitted(tmp_path).values()}
    assert set(slurm.states(ids).values()) == {"COMPLETED"}
    ours, theirs = _records(tmp_path / "results"), _records(tmp_path / "local")
    assert len(ours) == 4 * 4  # none, deepfool, burn and fp of 4 models
    differ = {n: sorted(k for k in ours[n] if ours[n][k] != theirs.get(n, {}).get(k)) for n in ours}
    assert ours == theirs, {n: keys for n, keys in differ.items() if keys}

    assert _sweep(tmp_path, spec) == 0  # all stored: nothing submitted
    assert "nothing to run: all 12 jobs stored" in capsys.readouterr().out
    assert not slurm.jobs() and {s["job_id"] for s in _submitted(tmp_path).values()} == ids


def _await_checkpoint(slurm, log: Path, timeout: float = 120) -> Path:
    """The epoch checkpoint of the model job writing ``log``, once it holds an epoch."""
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        text = log.read_text() if log.is_file() else ""
        if "a checkpoint after every epoch in " in text:
            ckpt = Path(text.split("a checkpoint after every epoch in ")[1].split(" lets ")[0]) / "checkpoint.pt"
            if ckpt.is_file():
                return ckpt
        time.sleep(0.1)
    raise TimeoutError(f"no epoch checkpoint of {log} in {timeout} s")


def test_a_cancelled_model_holds_back_its_own_defenses_only_and_resumes(slurm, tmp_path, capsys):
    # lf trains 30 epochs (its first checkpoint comes seconds before its end); badnets one
    spec = _spec(tmp_path, "cancel", defenses=["fp", "nad"], grids=[
        {"attacks": ["badnets"]},
        {"attacks": ["lf"], "set": {**TINY, "data.limit_train": 400, "train.epochs": 30}}])
    assert _sweep(tmp_path, spec) == 0
    first = _submitted(tmp_path)
    lf = "smoke/synthetic/lf"
    ckpt = _await_checkpoint(slurm, Path(first[f"{lf}:model"]["log"]))
    slurm.run("scancel", first[f"{lf}:model"]["job_id"])
    slurm.wait_idle()
    states = slurm.states(s["job_id"] for s in first.values())
    by_job = {name: states[s["job_id"]] for name, s in first.items()}
    assert by_job == {f"{lf}:model": "CANCELLED", f"{lf}:fp": "CANCELLED", f"{lf}:nad": "CANCELLED",
                      "smoke/synthetic/badnets:model": "COMPLETED",
                      "smoke/synthetic/badnets:fp": "COMPLETED",
                      "smoke/synthetic/badnets:nad": "COMPLETED"}, by_job
    import torch

    epoch = torch.load(ckpt, weights_only=False)["epoch"]
    assert 1 <= epoch < 30

    capsys.readouterr()
    assert _sweep(tmp_path, spec) == 1  # the cancelled jobs are listed, and submitted again
    out = capsys.readouterr().out
    for stage in ("model", "fp", "nad"):
        assert f"failed before: {lf}:{stage} (CANCELLED); log " in out
    second = _submitted(tmp_path)
    again = sorted(n for n in second if second[n]["job_id"] != first[n]["job_id"])
    assert again == [f"{lf}:fp", f"{lf}:model", f"{lf}:nad"]
    slurm.wait_idle()
    assert set(slurm.states(second[n]["job_id"] for n in again).values()) == {"COMPLETED"}
    log = Path(second[f"{lf}:model"]["log"]).read_text()
    assert "lets an interrupted run resume (resuming now)" in log
    history = json.loads((tmp_path / "results" / lf / "none.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, 31))
    assert _sweep(tmp_path, spec) == 0 and "nothing to run: all 6 jobs stored" in capsys.readouterr().out


def test_a_failed_defense_is_listed_with_its_log_and_sets_the_exit_status(slurm, tmp_path, capsys):
    spec = _spec(tmp_path, "fail", attacks=["badnets"], seeds=[0], defenses=["fp"])
    record = tmp_path / "results" / "smoke" / "synthetic" / "badnets" / "fp.json"
    record.mkdir(parents=True)  # its record cannot be written: the job fails at its end
    assert _sweep(tmp_path, spec) == 0
    slurm.wait_idle()
    job = _submitted(tmp_path)["smoke/synthetic/badnets:fp"]
    assert slurm.states([job["job_id"]])[job["job_id"]] == "FAILED"
    capsys.readouterr()
    record.rmdir()
    assert _sweep(tmp_path, spec) == 1
    out = capsys.readouterr().out
    assert f"failed before: smoke/synthetic/badnets:fp (FAILED); log {job['log']}; submitted again" in out
    assert "IsADirectoryError" in Path(job["log"]).read_text()
    slurm.wait_idle()
    assert _sweep(tmp_path, spec) == 0 and record.is_file()


def test_paper_dry_run_shows_the_gpu_request(slurm, tmp_path, capsys):
    paper = Path(__file__).parents[2] / "experiments" / "sweeps" / "paper.yaml"
    assert _sweep(tmp_path, str(paper), "--dry-run") == 0
    out = capsys.readouterr().out
    flags = next(line for line in out.splitlines() if line.startswith("  sbatch ")).split()[1:]
    assert "--gpus-per-node=1" in flags and "--cpus-per-task=8" in flags
    # Slurm reads it as a GPU request: this node has none, so it refuses the job
    test = slurm.run("sbatch", "--test-only", *[f for f in flags if not f.startswith("--partition")],
                     "--wrap", "true", check=False)
    assert test.returncode != 0 and "gres" in test.stderr.lower(), test.stderr
    assert not slurm.jobs()
