"""burn sweep: a malformed spec is one `burn: error:` line saying what to fix, and the Slurm
arrays of a sweep make each defense task wait for its own model job only."""

import pytest
import yaml

from burn.cli import main
from burn.runtime import Runtime
from burn.sweep import SlurmCfg, load_sweep, plan, slurm_arrays, summary

GOOD = {"preset": "smoke", "attacks": ["badnets"], "seeds": [0], "defenses": ["fp"]}


@pytest.mark.parametrize("text, says", [
    ("preset: smoke\nattacks: [badnets\n", "not valid YAML at line 3, column 1"),
    ("- preset: smoke\n", "a sweep spec is a mapping"),
    (yaml.safe_dump({**GOOD, "seed": [1]}), "unknown key(s) ['seed']"),
    (yaml.safe_dump({**GOOD, "attacks": 5}), "`attacks` is a list of str, got 5"),
    (yaml.safe_dump({**GOOD, "seeds": ["0"]}), "`seeds` is a list of int"),
    (yaml.safe_dump({**GOOD, "defenses": 3}), "`defenses` is a list of str or dict, got 3"),
    (yaml.safe_dump({**GOOD, "grids": {"seeds": [1]}}), "`grids` is a list of mappings"),
    (yaml.safe_dump({**GOOD, "slurm": [1]}), "`slurm` is a mapping of sbatch settings"),
    (yaml.safe_dump({**GOOD, "slurm": {"gpus": "one"}}), "slurm.gpus"),
    (yaml.safe_dump({**GOOD, "threads": True}), "threads must be a positive integer"),
    (yaml.safe_dump({**GOOD, "preset": ["smoke"]}), "`preset` is a name"),
])
def test_a_malformed_spec_is_one_error_line_and_exit_2(tmp_path, capsys, text, says):
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    assert main(["sweep", str(spec), "--dry-run", "--log-dir", str(tmp_path / "logs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("burn: error: ") and says in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def _arrays(tmp_path, raw, states=None):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"preset": "smoke", **raw}))
    sweep = plan(load_sweep(spec), results_root=tmp_path / "r", log_dir=tmp_path / "l")
    return sweep, slurm_arrays(sweep, sweep.todo, states or {})


def test_defense_tasks_line_up_with_their_models_or_wait_for_their_own(tmp_path):
    sweep, arrays = _arrays(tmp_path, {"attacks": ["badnets", "lf"], "seeds": [0, 1],
                                       "defenses": ["fp", "nad"]})
    models = arrays[0].jobs
    assert [a.name for a in arrays] == ["models", "fp", "nad"]
    for a in arrays[1:]:  # task i of each defense array: model task i's defense
        assert a.after == "aftercorr:{models}" and [j.model_job for j in a.jobs] == [m.name for m in models]
    # a model without defenses goes last, so the others still line up
    sweep, arrays = _arrays(tmp_path, {"grids": [
        {"attacks": ["badnets"], "seeds": [0], "defenses": []},
        {"attacks": ["lf"], "seeds": [0, 1], "defenses": ["fp"]}]})
    assert [m.name.split("/", 2)[2] for m in arrays[0].jobs] == ["lf:model", "lf/seeds/1:model",
                                                                 "badnets:model"]
    assert arrays[1].after == "aftercorr:{models}" and len(arrays[1].jobs) == 2
    # not in line (fp on model tasks 0 and 2): one submission per task, each on its own model
    sweep, arrays = _arrays(tmp_path, {"grids": [
        {"attacks": ["badnets"], "seeds": [0, 1], "defenses": ["nad"]},
        {"attacks": ["badnets", "lf"], "seeds": [0], "defenses": ["fp"]}]})
    assert [(a.name, a.after) for a in arrays] == [
        ("models", ""), ("nad", "aftercorr:{models}"), ("fp", "afterok:{models}_0"),
        ("fp", "afterok:{models}_2")]
    # a model still running from an earlier sweep: its defenses wait for that job
    sweep.submitted["smoke/synthetic/badnets:model"] = {"executor": "slurm", "job_id": "7_0"}
    todo = [j for j in sweep.todo if j.name != "smoke/synthetic/badnets:model"]
    arrays = slurm_arrays(sweep, todo, {"smoke/synthetic/badnets:model": "RUNNING"})
    assert [(a.name, a.after, len(a.jobs)) for a in arrays] == [
        ("models", "", 2), ("nad", "afterok:{models}_0", 1), ("nad", "afterok:7_0", 1),
        ("fp", "afterok:{models}_1", 1), ("fp", "afterok:7_0", 1)]


def test_paper_dry_run_lists_the_gpu_request_slurm_receives(capsys):
    assert main(["sweep", "experiments/sweeps/paper.yaml", "--executor", "slurm", "--dry-run"]) == 0
    out = capsys.readouterr().out
    sbatch = next(line for line in out.splitlines() if line.startswith("  sbatch "))
    assert "--gpus-per-node=1" in sbatch.split() and "--partition=gpu" in sbatch.split()
    assert "aftercorr:models" in out and "afterok:models" not in out
    assert "--mem=16GB" in summary_flags(SlurmCfg(mem_gb=16))


def summary_flags(slurm: SlurmCfg) -> str:
    from burn.sweep import sbatch_flags

    return " ".join(sbatch_flags(slurm))
