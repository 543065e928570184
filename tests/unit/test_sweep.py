"""burn sweep: a spec expanded into model and defense jobs, run by the debug and local
executors and submitted to a stand-in Slurm; stored stages are never run again, failed and
killed jobs are, and two jobs never write one record (burn.lock)."""

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from burn.cli import main
from burn.config import ConfigError
from burn.lock import lock_path
from burn.runtime import Runtime
from burn.stages import JsonStore, cached
from burn.sweep import SlurmCfg, expand, load_sweep, plan, run_sweep, summary

# smoke, smaller still: a model trains in about a second
TINY = {"data.limit_train": 160, "data.limit_test": 80, "train.epochs": 1,
        "deepfool.max_iter": 5, "burn.iterations": 1}


def _spec(tmp_path, name="sweep", **over):
    raw = {"preset": "smoke", "set": TINY, "attacks": ["badnets", "lf"], "seeds": [0, 1],
           "defenses": ["burn", "fp"], "threads": 1, **over}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _sweep(tmp_path, executor, spec, said=None):
    """Plan and run ``spec`` under tmp_path; returns (failed, the lines said, the plan)."""
    said = [] if said is None else said
    sweep = plan(load_sweep(spec), results_root=tmp_path / "results", log_dir=tmp_path / "logs")
    failed = run_sweep(sweep, executor, Runtime(results_root=str(tmp_path / "results"),
                                                progress=False, threads=1), say=said.append)
    return failed, said, sweep


def _records(root):
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns
            for p in root.rglob("*") if p.is_file()}


def test_spec_expands_along_the_stage_graph_and_refuses_what_it_cannot_run(tmp_path):
    sweep = plan(load_sweep(_spec(tmp_path)), results_root=tmp_path / "r", log_dir=tmp_path / "l")
    assert len(sweep.jobs) == 4 + 8 and len(sweep.todo) == 12
    model = sweep.jobs[0]
    assert model.name == "smoke/synthetic/badnets:model" and model.distances  # Burn needs them
    assert [j.stage for j in sweep.jobs] == ["model"] * 4 + ["burn", "fp"] * 4
    assert {j.cfg.seed for j in sweep.jobs} == {0, 1} and sweep.jobs[1].cfg.train.seed == 1
    assert sweep.stage_counts() == {"model": [4, 0], "distances": [4, 0], "burn": [4, 0],
                                    "fp": [4, 0]}
    tagged = plan(load_sweep(_spec(tmp_path, defenses=[
        {"name": "burn", "tag": "rand", "set": {"burn.selection": "random"}}])),  # the former section
        results_root=tmp_path / "r", log_dir=tmp_path / "l")
    assert tagged.jobs[-1].stage == "burn_rand" and tagged.jobs[-1].cfg.defenses["burn"]["selection"] == "random"
    # a named tag (experiments/defense_runs.yaml) with other defenses.burn.* settings (TINY's
    # burn.iterations) would be a second setting under one name: refused
    with pytest.raises(ConfigError, match="drop the other defenses.burn"):
        plan(load_sweep(_spec(tmp_path, defenses=[{"name": "burn", "tag": "random"}])),
             results_root=tmp_path / "r", log_dir=tmp_path / "l")
    with pytest.raises(ConfigError, match="needs a `tag`"):
        load_sweep(_spec(tmp_path, defenses=[{"name": "fp", "set": {"defenses.fp.epochs": 1}}]))
    with pytest.raises(ConfigError, match="may change defenses.burn"):
        load_sweep(_spec(tmp_path, defenses=[{"name": "burn", "tag": "x",
                                              "set": {"train.epochs": 9}}]))
    with pytest.raises(ConfigError, match="unknown key"):
        load_sweep(_spec(tmp_path, seed=[1]))
    with pytest.raises(ConfigError, match="unknown attack"):
        load_sweep(_spec(tmp_path, attacks=["badnet"]))


@pytest.mark.parametrize("name", ["cpu", "cpu-fp32", "paper"])
def test_committed_specs_expand(name):
    """Each spec of experiments/sweeps loads and expands: its presets, variants and defense
    options exist, and no two grids write one record differently."""
    spec = load_sweep(Path(__file__).parents[2] / "experiments" / "sweeps" / f"{name}.yaml")
    jobs = expand(spec)
    models = [j for j in jobs if j.stage == "model"]
    assert models and len(jobs) > len(models)
    assert all(j.cfg.preset == ("paper" if name == "paper" else "cpu") for j in jobs)
    if name != "paper":  # cpu trains in the preset's bf16, cpu-fp32 in fp32 only
        assert {j.cfg.train.amp_bf16 for j in models} == {name == "cpu"}


def test_debug_sweep_runs_every_job_once_and_redoes_only_a_killed_one(tmp_path, capsys):
    spec = _spec(tmp_path)
    failed, said, _ = _sweep(tmp_path, "debug", spec)
    assert failed == 0 and sum(s.startswith("done: ") for s in said) == 12
    # depth first: each model's defenses run before the next model trains
    order = [s.split()[1].rstrip(":").removeprefix("smoke/synthetic/") for s in said if s.startswith("done: ")]
    assert order[:4] == ["badnets:model", "badnets:burn", "badnets:fp", "badnets/seeds/1:model"]
    root = tmp_path / "results" / "smoke" / "synthetic"
    assert (root / "lf" / "seeds" / "1" / "burn.json").is_file()
    assert (root / "badnets" / "deepfool.npz").is_file()
    before = _records(root)

    failed, said, again = _sweep(tmp_path, "debug", spec)  # everything stored: nothing runs
    assert failed == 0 and said == ["nothing to run: all 12 jobs stored"] and not again.todo
    assert _records(root) == before

    # a job killed while writing lf seed 1's burn.json: its lock and temporary file are left
    record = root / "lf" / "seeds" / "1" / "burn.json"
    record.unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(record).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                             "token": "t", "since": "then"}))
    half = record.with_name(f".burn.json.tmp{dead.pid}")
    half.write_text('{"acc": 0.')
    assert main(["sweep", str(spec), "--executor", "debug", "--dry-run", "--results-root",
                 str(tmp_path / "results"), "--log-dir", str(tmp_path / "logs")]) == 0
    out = capsys.readouterr().out
    assert "to run    smoke/synthetic/lf/seeds/1:burn" in out
    assert "burn                         4       3       1" in out
    failed, said, _ = _sweep(tmp_path, "debug", spec)
    assert failed == 0 and [s for s in said if s.startswith("done: ")] == [
        s for s in said if s.startswith("done: smoke/synthetic/lf/seeds/1:burn")]
    assert record.is_file() and not half.exists() and not lock_path(record).exists()
    after = _records(root)
    assert {k: v for k, v in after.items() if v != before.get(k)} == {
        "lf/seeds/1/burn.json": after["lf/seeds/1/burn.json"]}


def test_local_sweep_lists_a_failed_job_with_its_log_and_redoes_it_alone(tmp_path):
    # the model in this process first (the debug executor), so the local executor's
    # subprocesses run the defense job only
    models = _spec(tmp_path, "models", attacks=["badnets"], seeds=[0], defenses=[])
    assert _sweep(tmp_path, "debug", models)[0] == 0
    spec = _spec(tmp_path, "fp", attacks=["badnets"], seeds=[0], defenses=["fp"])
    record = tmp_path / "results" / "smoke" / "synthetic" / "badnets" / "fp.json"
    record.mkdir()  # its record cannot be written: the job fails after computing it
    failed, said, _ = _sweep(tmp_path, "local", spec)
    assert failed == 1
    line = next(s for s in said if s.startswith("failed: smoke/synthetic/badnets:fp"))
    log = line.split("; log ")[1]
    assert "IsADirectoryError" in line and "IsADirectoryError" in open(log).read()
    assert not lock_path(record).exists()  # released by the failed job

    record.rmdir()
    model = record.with_name("model.pt").stat().st_mtime_ns
    failed, said, _ = _sweep(tmp_path, "local", spec)
    assert failed == 0 and f"failed before: smoke/synthetic/badnets:fp (FAILED); log {log}; " \
                           "submitted again" in said
    assert [s.split(":")[0] for s in said if s.startswith(("done", "failed:"))] == ["done"]
    assert record.is_file() and record.with_name("model.pt").stat().st_mtime_ns == model
    assert _sweep(tmp_path, "local", spec)[1] == ["nothing to run: all 2 jobs stored"]


STAND_INS = {
    "sbatch": """#!/bin/sh
d="$(dirname "$0")"; n=$(cat "$d/next_id" 2>/dev/null || echo 100); echo $((n+1)) > "$d/next_id"
cp "$1" "$d/sbatch_$n.sh"; echo "Submitted batch job $n"
""",
    "sacct": """#!/bin/sh
d="$(dirname "$0")"; echo "$@" >> "$d/sacct_calls"; echo "JobID|State|NodeList"; cat "$d/sacct_out" 2>/dev/null
""",
    "srun": "#!/bin/sh\nexit 0\n",
}


def test_slurm_arrays_depend_on_the_models_and_failed_tasks_are_resubmitted(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in STAND_INS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    spec = _spec(tmp_path)
    slurm = SlurmCfg(partition="gpu", time_min=30, gpus=1, array_parallelism=3)

    def sweep(sacct="", failed=0):
        (bin_dir / "sacct_out").write_text(sacct)
        said = []
        s = plan(load_sweep(spec), results_root=tmp_path / "results", log_dir=tmp_path / "logs")
        assert run_sweep(s, "slurm", Runtime(progress=False), slurm=slurm, say=said.append) == failed
        return said, s

    def submitted():
        return sorted(p.name for p in bin_dir.glob("sbatch_*.sh"))

    dry = plan(load_sweep(spec), results_root=tmp_path / "results", log_dir=tmp_path / "logs")
    text = summary(dry, "slurm", {}, Runtime(threads=1), slurm)
    assert "  models                    4 tasks\n  burn                      4 tasks, aftercorr:models" in text
    assert "  sbatch --cpus-per-task=8 --gpus-per-node=1 --nodes=1 --partition=gpu --time=30\n" in text

    sweep()
    assert submitted() == ["sbatch_100.sh", "sbatch_101.sh", "sbatch_102.sh"]
    models, burn, fp = ((bin_dir / f"sbatch_{n}.sh").read_text() for n in (100, 101, 102))
    for flag in ("--array=0-3%3", "--partition=gpu", "--time=30", "--gpus-per-node=1",
                 "--job-name=burn-sweep-models"):
        assert f"#SBATCH {flag}" in models
    assert "dependency" not in models
    for text, stage in ((burn, "burn"), (fp, "fp")):
        assert f"#SBATCH --job-name=burn-sweep-{stage}" in text and "#SBATCH --array=0-3%3" in text
        # task i of a defense array waits for model task i only
        assert "#SBATCH --dependency=aftercorr:100" in text and "--kill-on-invalid-dep=yes" in text
    state = json.loads((tmp_path / "logs" / "jobs.json").read_text())
    assert state["smoke/synthetic/badnets:model"]["job_id"] == "100_0"
    assert state["smoke/synthetic/lf/seeds/1:fp"]["job_id"] == "102_3"

    # all queued or running: nothing is submitted twice
    said, _ = sweep("100_[0-3]|RUNNING|n1\n101_[0-3]|PENDING|\n102_[0-3]|PENDING|\n")
    assert submitted() == ["sbatch_100.sh", "sbatch_101.sh", "sbatch_102.sh"]
    assert said[-1] == "nothing to submit"

    # model task 0 failed: it alone is listed with its log and resubmitted (the exit status
    # says so); its defenses wait
    said, _ = sweep("100_0|FAILED|n1\n100_[1-3]|RUNNING|n1\n101_[0-3]|PENDING|\n102_[0-3]|PENDING|\n",
                    failed=1)
    log = tmp_path / "logs" / "100_0" / "100_0_0_log.err"
    assert f"failed before: smoke/synthetic/badnets:model (FAILED); log {log}; submitted again" in said
    assert submitted()[-1] == "sbatch_103.sh"
    redo = (bin_dir / "sbatch_103.sh").read_text()
    assert "--array" not in redo and "dependency" not in redo

    # its defenses were cancelled (dependency never satisfied): resubmitted after job 103
    said, _ = sweep("100_0|FAILED|\n100_[1-3]|RUNNING|\n103|RUNNING|\n101_0|CANCELLED by 0|\n"
                    "101_[1-3]|PENDING|\n102_0|CANCELLED by 0|\n102_[1-3]|PENDING|\n", failed=2)
    assert submitted()[-2:] == ["sbatch_104.sh", "sbatch_105.sh"]
    for n in (104, 105):
        text = (bin_dir / f"sbatch_{n}.sh").read_text()
        assert "#SBATCH --dependency=afterok:103" in text and "--array" not in text


def test_two_writers_of_one_record_compute_it_once(tmp_path):
    calls, results = [], []

    def compute():
        calls.append(1)
        time.sleep(0.3)
        return {"value": len(calls)}

    def job():
        results.append(cached(JsonStore(tmp_path / "r.json"), "k", compute))

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and results[0] == results[1] == {"value": 1, "config_hash": "k"}
    assert not lock_path(tmp_path / "r.json").exists()


def test_local_order_finishes_stored_models_first_then_goes_depth_first():
    from burn.sweep import Job, run_order

    jobs = [Job("model", None, "a"), Job("burn", None, "a", defense="burn"),
            Job("model", None, "b"), Job("burn", None, "c", defense="burn"),
            Job("ftsam", None, "b", defense="ftsam"), Job("sau", None, "c", defense="sau")]
    assert [j.name for j in run_order(jobs)] == ["c:burn", "c:sau", "a:model", "a:burn",
                                                 "b:model", "b:ftsam"]


def test_a_stored_model_of_other_known_key_parts_is_not_counted_as_stored(tmp_path):
    # Input-aware's record names its generators' precision; one stored before (float16, no
    # key_parts) is another model, which the dry run lists as to run
    from burn.config import PROJECT_ROOT, artifact_cfg
    from burn.sweep import stored_model_key

    cfg = artifact_cfg("cpu", "cifar10", "inputaware")
    rec = json.loads((PROJECT_ROOT / "results" / "cpu" / "cifar10" / "inputaware" / "none.json").read_text())
    out = tmp_path / "cpu" / "cifar10" / "inputaware"
    out.mkdir(parents=True)
    (out / "model.pt").write_bytes(b"")
    (out / "none.json").write_text(json.dumps(rec))
    assert stored_model_key(cfg, tmp_path) == rec["config_hash"]
    (out / "none.json").write_text(json.dumps({k: v for k, v in rec.items() if k != "key_parts"}))
    assert stored_model_key(cfg, tmp_path) is None
