"""Sweeps: a YAML spec (presets, attacks, seeds, defenses with their options) expanded into jobs
along the stage graph and handed to an executor of submitit (``burn sweep SPEC``).

Jobs: one *model* job per (preset, variant, attack, seed) trains or loads the attacked model
(``experiment.attacked_model``) and computes its DeepFool distances when a defense of the spec
needs them (``distances.boundary_distances``); one *defense* job per (model, defense, tag) runs
``defense_stage.defense_run`` after its model job. Every stage is cached (``burn.stages``), so
a job whose stages are stored only reads them back, and a sweep run again submits only what is
not stored; the record lock of ``burn.lock`` keeps two jobs from writing one file.

Executors: ``local`` (subprocesses on this machine, at most cores / threads at once, each
defense once its model job succeeded), ``slurm`` (one job array for the model jobs and one per
defense stage whose task i waits for model task i only, ``aftercorr``, so a failed model holds
back its own defenses alone; the command returns once submitted)
and ``debug`` (in this process, one job after the other, with the traceback). What was
submitted is kept in ``<log-dir>/jobs.json``: the next sweep lists the failed jobs with their
logs and submits them again, and leaves jobs alone that Slurm still runs or holds.

The spec (``experiments/sweeps/*.yaml``)::

    preset: cpu                  # a preset of experiments/presets
    variant: w16-e20-fp32        # optional, with the model settings it names
    set: {train.amp_bf16: false} # overrides of the preset, as in --set (dotted keys or nested)
    attacks: [badnets, lf]       # or `all`: every attack of burn.attacks.ATTACKS but `clean`
    seeds: [0, 1, 2]
    defenses:                    # or `all`: every defense of burn.defenses.DEFENSES, as preset
      - burn                     # the preset's settings: burn.json
      - {name: burn, tag: suspect_class, set: {defenses.burn.selection: suspect_class}}
    threads: 1                   # torch threads of a job
    slurm: {partition: gpu, time_min: 240, gpus: 1, cpus_per_task: 8, array_parallelism: 32}
    grids:                       # optional: several grids, each overriding the keys above
      - {attacks: [lf], seeds: [0], defenses: [{name: sau, tag: e100, set: {defenses.sau.epochs: 100}}]}
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from .attacks import ATTACKS
from .cache import DamagedFileError, read_json, write_json
from .config import (NONNEG, POSITIVE, ConfigError, ExperimentCfg, _deep_merge, from_dict,
                     load_preset, moved)
from .defenses import DEFENSES
from .runtime import Runtime

EXECUTORS = ("local", "slurm", "debug")
GRID_KEYS = ("preset", "variant", "set", "attacks", "seeds", "defenses")
MODEL_SECTIONS = ("data", "model", "train", "attack")  # what the attacked model's key reads
# Slurm states of a job that is not over; others (FAILED, TIMEOUT, CANCELLED, ...) are over
IN_FLIGHT = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING",
             "SUSPENDED", "PREEMPTED", "READY"}
LOCAL_TIMEOUT_MIN = 14 * 24 * 60  # a local job is never cut short
POLL_S = 0.5


@dataclass(frozen=True)
class SlurmCfg:
    """The resources of every array of a sweep (``sbatch`` options)."""

    partition: str | None = None
    time_min: int = field(default=240, metadata=POSITIVE)
    gpus: int = field(default=1, metadata=NONNEG)
    cpus_per_task: int = field(default=8, metadata=POSITIVE)
    mem_gb: int | None = field(default=None, metadata=POSITIVE)
    array_parallelism: int = field(default=64, metadata=POSITIVE)
    account: str | None = None
    qos: str | None = None
    setup: tuple = ()  # shell lines run before each job (module load ..., source .venv/...)


@dataclass(frozen=True)
class DefenseEntry:
    """A defense of a sweep: ``name`` in ``DEFENSES`` with ``set`` (its options) under ``tag``."""

    name: str
    tag: str = ""
    set: dict = field(default_factory=dict)

    @property
    def stage(self) -> str:
        return f"{self.name}_{self.tag}" if self.tag else self.name


@dataclass(frozen=True)
class Grid:
    preset: str
    attacks: tuple[str, ...]
    seeds: tuple[int, ...]
    defenses: tuple[DefenseEntry, ...]
    variant: str = ""
    set: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    grids: tuple[Grid, ...]
    threads: int = 1
    slurm: SlurmCfg = SlurmCfg()


@dataclass(frozen=True)
class Job:
    """One job: the model job (``stage == "model"``; ``distances``: also its DeepFool
    distances) or a defense job (``defense``, ``tag``) of the run ``cfg``."""

    stage: str
    cfg: ExperimentCfg
    where: str  # the run's results folder under the results root (its identity)
    defense: str = ""
    tag: str = ""
    distances: bool = False

    @property
    def name(self) -> str:
        return f"{self.where}:{self.stage}"

    @property
    def model_job(self) -> str:
        return f"{self.where}:model"


# ------------------------------------------------------------------------------------ the spec
def _nested(overrides: dict | None, where: str) -> dict:
    """``{"defenses.burn.selection": "random"}`` -> ``{"defenses": {"burn": {"selection": "random"}}}`` (nested
    mappings are kept; both forms may mix)."""
    if not isinstance(overrides or {}, dict):
        raise ConfigError(f"{where}: `set` is a mapping of KEY: VALUE, got {overrides!r}")
    out: dict = {}
    for key, value in (overrides or {}).items():
        *parents, last = str(key).split(".")
        node = {last: _nested(value, where) if isinstance(value, dict) else value}
        for k in reversed(parents):
            node = {k: node}
        out = _deep_merge(out, node)
    return out


def _defense_entry(raw) -> DefenseEntry:
    raw = {"name": raw} if isinstance(raw, str) else dict(raw)
    unknown = sorted(set(raw) - {"name", "tag", "set"})
    if unknown or "name" not in raw:
        raise ConfigError(f"a defense of a sweep is NAME or {{name, tag, set}}, got {raw!r}")
    entry = DefenseEntry(raw["name"], str(raw.get("tag") or ""),
                         moved(_nested(raw.get("set"), raw["name"])))
    if entry.name not in DEFENSES:
        raise ConfigError(f"unknown defense {entry.name!r}; choose one of {sorted(DEFENSES)}")
    if set(entry.set) - {"defenses"} or set(entry.set.get("defenses", {})) - {entry.name}:
        raise ConfigError(f"defense {entry.name}: its `set` may change defenses.{entry.name}.* "
                          f"only (the model's settings go in the grid's `set`), got {entry.set}")
    if entry.set and not entry.tag:
        raise ConfigError(f"defense {entry.name} with `set` {entry.set} needs a `tag`: its record "
                          f"is {entry.name}_<tag>.json, beside the preset's {entry.name}.json")
    return entry


def _listed(raw: dict, key: str, where: str, kind) -> list:
    """``raw[key]`` as a list of ``kind`` (a single one is a list of one); a wrong type raises
    a ConfigError that names the key and what it takes."""
    value = raw[key]
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, kind) and not isinstance(v, bool) for v in items):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ConfigError(f"{where}: `{key}` is a list of {names}, got {value!r}")
    return items


def _grid(raw: dict, where: str) -> Grid:
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(GRID_KEYS)}")
    missing = [k for k in ("preset", "attacks", "defenses") if k not in raw]
    if missing:
        raise ConfigError(f"{where} lacks {missing}")
    for key in ("preset", "variant"):
        if not isinstance(raw.get(key) or "", str):
            raise ConfigError(f"{where}: `{key}` is a name, got {raw[key]!r}")
    attacks = ([a for a in ATTACKS if a != "clean"] if raw["attacks"] == "all"
               else _listed(raw, "attacks", where, str))
    bad = sorted(set(attacks) - set(ATTACKS))
    if bad:
        raise ConfigError(f"{where}: unknown attack(s) {bad}; choose from {sorted(ATTACKS)} or `all`")
    seeds = _listed({"seeds": 0, **raw}, "seeds", where, int)
    if not all(s >= 0 for s in seeds):
        raise ConfigError(f"{where}: seeds must be integers >= 0, got {seeds}")
    defenses = (list(DEFENSES) if raw["defenses"] == "all"
                else _listed(raw, "defenses", where, (str, dict)))
    entries = tuple(_defense_entry(d) for d in defenses)
    stages = [e.stage for e in entries]
    if len(set(stages)) < len(stages):
        raise ConfigError(f"{where}: a defense stage appears twice in {stages}")
    return Grid(raw["preset"], tuple(attacks), tuple(seeds), entries, str(raw.get("variant") or ""),
                moved(_nested(raw.get("set"), where)))


def _read_spec(path: Path) -> dict:
    """The YAML mapping of ``path``; bad YAML or another shape raises a one-line ConfigError."""
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep spec is a mapping (preset: ..., attacks: ..., "
                          f"defenses: ...), got a {type(raw).__name__}")
    return raw


def load_sweep(path) -> SweepSpec:
    """The sweep spec of ``path`` (YAML, see the module docstring); unknown keys and values of
    the wrong type raise a ConfigError that says what to fix."""
    path = Path(path)
    raw = _read_spec(path)
    allowed = GRID_KEYS + ("grids", "threads", "slurm")
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {path}; allowed: {sorted(allowed)}")
    top = {k: raw[k] for k in GRID_KEYS if k in raw}
    grids = raw.get("grids") or [{}]
    if not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        raise ConfigError(f"{path}: `grids` is a list of mappings (each with keys of "
                          f"{sorted(GRID_KEYS)}), got {grids!r}")
    threads = raw.get("threads", 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"{path}: threads must be a positive integer, got {threads!r}")
    if not isinstance(raw.get("slurm") or {}, dict):
        raise ConfigError(f"{path}: `slurm` is a mapping of sbatch settings "
                          f"({[f.name for f in dataclasses.fields(SlurmCfg)]}), got {raw['slurm']!r}")
    return SweepSpec(path.stem, tuple(_grid({**top, **g}, f"{path.name} grid {i}")
                                      for i, g in enumerate(grids)),
                     threads, from_dict(SlurmCfg, raw.get("slurm"), where="slurm"))


def expand(spec: SweepSpec) -> list[Job]:
    """The jobs of ``spec``: model jobs first, then defense jobs; one job per results folder
    and record, however many grids name it."""
    from .defense_stage import make_defense, tagged_cfg
    from .experiment import results_dir

    models: dict[str, Job] = {}
    defenses: dict[str, Job] = {}
    for grid in spec.grids:
        for attack in grid.attacks:
            for seed in grid.seeds:
                over = _deep_merge(grid.set, {"attack": {"name": attack}, "variant": grid.variant,
                                              "seed": seed})
                cfg = load_preset(grid.preset, over)
                where = results_dir(cfg, Path(".")).as_posix()
                needs = any(DEFENSES[d.name].needs_distances for d in grid.defenses)
                job = Job("model", cfg, where, distances=needs)
                old = models.get(job.name)
                if old and any(getattr(old.cfg, s) != getattr(cfg, s) for s in MODEL_SECTIONS):
                    raise ConfigError(f"two grids train different models into {where}: give one "
                                      "of them a variant")
                models[job.name] = dataclasses.replace(job, distances=needs or bool(old and old.distances))
                for d in grid.defenses:
                    dcfg = tagged_cfg(grid.preset, _deep_merge(over, d.set), d.name, d.tag)
                    make_defense(dcfg, d.name)  # its options are checked here, before any job
                    djob = Job(d.stage, dcfg, where, defense=d.name, tag=d.tag)
                    if djob.name in defenses and defenses[djob.name].cfg != dcfg:
                        raise ConfigError(f"two grids write {djob.name} with different settings")
                    defenses[djob.name] = djob
    return [*models.values(), *defenses.values()]


# ---------------------------------------------------------------------------- what is stored
@dataclass(frozen=True)
class _Keyed:
    """What the key functions (``distances_key``, ``defense_key``) read of an AttackRun."""

    key: str
    cfg: ExperimentCfg


def stored_model_key(cfg: ExperimentCfg, root=None) -> str | None:
    """The key of the model stored for ``cfg`` when its record was made with ``cfg``'s data,
    model, training, attack and the attack's known key parts (a job still checks the full
    key); else None."""
    from .experiment import results_dir

    out = results_dir(cfg, root)
    if not ((out / "model.pt").is_file() and (out / "none.json").is_file()):
        return None
    try:
        rec = read_json(out / "none.json")
        stored = from_dict(ExperimentCfg, {k: rec["config"][k] for k in MODEL_SECTIONS
                                           if k in rec["config"]})
    except (DamagedFileError, ConfigError, KeyError):
        return None
    same = all(_keyed(stored, s) == _keyed(cfg, s) for s in MODEL_SECTIONS)
    return rec.get("config_hash") if same and _same_key_parts(cfg, rec) else None


def _same_key_parts(cfg: ExperimentCfg, rec: dict) -> bool:
    """Whether the stored record's ``key_parts`` are the attack's, where they are known before
    fitting (Input-aware's generators' precision); parts known only after fitting (the clean
    model TrojanNN's trigger was optimized on) are left to the job, which checks the full key."""
    from .attacks import make_attack

    parts = make_attack(cfg.attack).key_parts()
    return None in parts or list(parts) == rec.get("key_parts", [])


def _keyed(cfg: ExperimentCfg, section: str):
    """A model section as the model's key sees it (an attack's params at their defaults left out)."""
    from .keys import without_default_params

    value = getattr(cfg, section)
    return without_default_params(value) if section == "attack" else value


def stages_done(job: Job, root=None) -> dict[str, bool]:
    """Which stages of ``job`` are stored: ``model`` (and ``distances``) for a model job, its
    defense stage for a defense job (False while its model is not stored)."""
    from .defense_stage import defense_key, make_defense
    from .distances import distances_key
    from .experiment import results_dir
    from .stages import JsonStore, NpzStore

    key = stored_model_key(job.cfg, root)
    out = results_dir(job.cfg, root)
    try:
        if job.stage == "model":
            done = {"model": key is not None}
            if job.distances:
                done["distances"] = key is not None and NpzStore(
                    out / "deepfool.npz").stored_key() == distances_key(_Keyed(key, job.cfg))
            return done
        want = key and defense_key(_Keyed(key, job.cfg), make_defense(job.cfg, job.defense))
        return {job.stage: bool(want) and JsonStore(out / f"{job.stage}.json").stored_key() == want}
    except DamagedFileError:  # the job reports it
        return {"model": False} if job.stage == "model" else {job.stage: False}


def run_job(job: Job, runtime: Runtime) -> dict:
    """Run ``job`` in this process (what an executor's worker calls): its stages, each read
    back when stored. Returns the model's or the defense's ACC / ASR."""
    from .defense_stage import defense_run, make_defense
    from .distances import boundary_distances
    from .experiment import attacked_model

    run = attacked_model(job.cfg, runtime)
    if job.defense:
        rec = defense_run(run, job.defense, defense=make_defense(job.cfg, job.defense), tag=job.tag)
        return {"acc": rec["acc"], "asr": rec["asr"]}
    if job.distances:
        boundary_distances(run)
    return {"acc": run.record["acc"], "asr": run.record["asr"]}


# --------------------------------------------------------------------------------- the sweep
@dataclass
class Sweep:
    """A spec's jobs, what is stored, and what earlier sweeps submitted (``jobs.json``)."""

    spec: SweepSpec
    jobs: list[Job]
    done: dict[str, dict[str, bool]]  # job name -> its stages -> stored
    log_dir: Path
    submitted: dict[str, dict]  # job name -> {"executor", "job_id", "log", "state"}

    @property
    def todo(self) -> list[Job]:
        return [j for j in self.jobs if not all(self.done[j.name].values())]

    def stage_counts(self) -> dict[str, list[int]]:
        """stage -> [jobs, stored]."""
        counts: dict[str, list[int]] = {}
        for j in self.jobs:
            for stage, ok in self.done[j.name].items():
                c = counts.setdefault(stage, [0, 0])
                c[0] += 1
                c[1] += ok
        return counts


def default_log_dir(spec: SweepSpec) -> Path:
    from .data import cache_dir

    return cache_dir() / "sweeps" / spec.name


def plan(spec: SweepSpec, *, results_root=None, log_dir=None) -> Sweep:
    jobs = expand(spec)
    log_dir = Path(log_dir or default_log_dir(spec)).absolute()
    state = log_dir / "jobs.json"
    submitted = read_json(state) if state.is_file() else {}
    return Sweep(spec, jobs, {j.name: stages_done(j, results_root) for j in jobs}, log_dir, submitted)


def slurm_states(sweep: Sweep) -> dict[str, str]:
    """The Slurm state (``sacct``) of every job not stored that an earlier sweep submitted
    to Slurm; UNKNOWN where sacct does not know it."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    ids = {j.name: sweep.submitted[j.name]["job_id"] for j in sweep.todo
           if sweep.submitted.get(j.name, {}).get("executor") == "slurm"}
    if not ids:
        return {}
    watcher = SlurmInfoWatcher()
    for jid in ids.values():
        watcher.register_job(jid)
    watcher.update()
    return {name: (watcher.get_state(jid, mode="cache").split() or ["UNKNOWN"])[0]
            for name, jid in ids.items()}


def failed_before(sweep: Sweep, states: dict[str, str]) -> list[tuple[Job, str, str]]:
    """(job, state, log) of each job not stored whose earlier submission is over."""
    out = []
    for j in sweep.todo:
        sub = sweep.submitted.get(j.name)
        if sub is None:
            continue
        if sub["executor"] == "slurm":
            state = states.get(j.name, "UNKNOWN")
        else:  # a local job is over when its sweep is: one left RUNNING was interrupted
            state = {"RUNNING": "INTERRUPTED"}.get(sub.get("state"), sub.get("state", "UNKNOWN"))
        if state not in IN_FLIGHT:
            out.append((j, state, sub["log"]))
    return out


def summary(sweep: Sweep, executor: str, states: dict[str, str], runtime: Runtime,
            slurm: SlurmCfg) -> str:
    """The jobs and what is stored: one line a job, then counts per stage and per array."""
    grids = len(sweep.spec.grids)
    lines = [f"sweep {sweep.spec.name}: {len(sweep.jobs)} jobs ({grids} grid{'s' if grids > 1 else ''}); "
             f"logs in {sweep.log_dir}"]
    for j in sweep.jobs:
        todo = [s for s, ok in sweep.done[j.name].items() if not ok]
        status = "in flight" if states.get(j.name) in IN_FLIGHT else ("to run" if todo else "done")
        lines.append(f"  {status:9} {j.name}" + (f" ({', '.join(todo)})" if j.stage == "model" and todo else ""))
    lines.append(f"\n{'stage':24} {'jobs':>5} {'stored':>7} {'to run':>7}")
    for stage, (n, ok) in sweep.stage_counts().items():
        lines.append(f"{stage:24} {n:>5} {ok:>7} {n - ok:>7}")
    todo = [j for j in sweep.todo if states.get(j.name) not in IN_FLIGHT]
    inflight = len(sweep.todo) - len(todo)
    lines.append(f"{'all jobs':24} {len(sweep.jobs):>5} {len(sweep.jobs) - len(sweep.todo):>7} "
                 f"{len(sweep.todo):>7}" + (f" ({inflight} in flight, not submitted again)"
                                            if inflight else ""))
    if executor == "slurm":
        arrays = slurm_arrays(sweep, todo, states)
        lines.append(f"\nslurm: {len(arrays)} arrays, {len(todo)} tasks (partition "
                     f"{slurm.partition or 'default'}, {slurm.time_min} min, {slurm.gpus} GPU, "
                     f"{slurm.cpus_per_task} CPUs, at most {slurm.array_parallelism} at once each)")
        lines.append(f"  sbatch {' '.join(sbatch_flags(slurm))}")
        for a in arrays:
            lines.append(f"  {a.name:22} {len(a.jobs):>4} task{'s' if len(a.jobs) > 1 else ''}"
                         + (f", {a.after.format(models='models')}" if a.after else ""))
    else:
        lines.append(f"\n{executor}: {len(todo)} jobs, at most {_capacity(executor, runtime)} at "
                     f"once ({runtime.threads} thread{'s' if runtime.threads != 1 else ''} each); "
                     "each defense after its model job")
    return "\n".join(lines)


@dataclass(frozen=True)
class Array:
    """One ``sbatch`` of a sweep: ``jobs`` (a job array when more than one) and what its tasks
    wait for: ``after`` is empty, ``aftercorr:{models}`` (task i after task i of this
    submission's models array) or ``afterok:<id>`` (the one model job of every task), with
    ``{models}`` standing for the models array's id until it is submitted."""

    name: str  # "models" or the defense stage
    jobs: tuple[Job, ...]
    after: str = ""


def slurm_arrays(sweep: Sweep, todo: list[Job], states: dict[str, str]) -> list[Array]:
    """The submissions of ``todo``: the models array (the models with the most defense jobs
    first, so that a defense stage's tasks line up with theirs), then per defense stage, in the
    spec's order, the tasks whose model is in it (``aftercorr``: a failed model holds back only
    its own defenses), those whose model an earlier sweep submitted and Slurm still runs
    (``afterok`` on it), and those whose model is stored (no dependency)."""
    count = {m.name: sum(j.model_job == m.name for j in todo) for m in todo if m.stage == "model"}
    models = sorted((j for j in todo if j.stage == "model"), key=lambda m: -count[m.name])
    index = {m.name: i for i, m in enumerate(models)}
    task = (lambda i: f"{{models}}_{i}") if len(models) > 1 else (lambda i: "{models}")
    arrays = [Array("models", tuple(models))] if models else []
    for stage in dict.fromkeys(j.stage for j in sweep.jobs if j.defense):
        jobs = [j for j in todo if j.stage == stage]
        ours = sorted((j for j in jobs if j.model_job in index), key=lambda j: index[j.model_job])
        if len(ours) > 1 and [index[j.model_job] for j in ours] == list(range(len(ours))):
            arrays.append(Array(stage, tuple(ours), "aftercorr:{models}"))
        else:  # one task, or not in line with the models array: one submission per task
            arrays += [Array(stage, (j,), f"afterok:{task(index[j.model_job])}") for j in ours]
        earlier: dict[str, list[Job]] = {}
        for j in jobs:
            if j.model_job not in index and states.get(j.model_job) in IN_FLIGHT:
                earlier.setdefault(sweep.submitted[j.model_job]["job_id"], []).append(j)
        arrays += [Array(stage, tuple(js), f"afterok:{jid}") for jid, js in earlier.items()]
        free = [j for j in jobs if j.model_job not in index and states.get(j.model_job) not in IN_FLIGHT]
        arrays += [Array(stage, tuple(free))] if free else []
    return arrays


def _capacity(executor: str, runtime: Runtime) -> int:
    if executor == "debug":
        return 1
    return max(1, len(os.sched_getaffinity(0)) // (runtime.threads or 1))


def _save_state(sweep: Sweep) -> None:
    write_json(sweep.log_dir / "jobs.json", sweep.submitted)


def run_sweep(sweep: Sweep, executor: str, runtime: Runtime, *, slurm: SlurmCfg | None = None,
              say: Callable[[str], None] = print) -> int:
    """Submit the jobs not stored (and not in flight on Slurm): locally or in-process, wait for
    them; on Slurm, submit the arrays and return. Returns the number of jobs that failed: here,
    those that failed now; on Slurm, whose jobs run later, those of earlier submissions that
    failed (listed with their logs and submitted again)."""
    if executor not in EXECUTORS:
        raise ValueError(f"--executor must be one of {list(EXECUTORS)}, got {executor!r}")
    states = slurm_states(sweep)
    failed = failed_before(sweep, states)
    for job, state, log in failed:
        say(f"failed before: {job.name} ({state}); log {log}; submitted again")
    failed_on_slurm = sum(sweep.submitted[j.name]["executor"] == "slurm" for j, _, _ in failed)
    todo = [j for j in sweep.todo if states.get(j.name) not in IN_FLIGHT]
    if len(todo) < len(sweep.todo):
        say(f"{len(sweep.todo) - len(todo)} jobs still queued or running on Slurm: left alone")
    if not todo:
        say(f"nothing to run: all {len(sweep.jobs)} jobs stored" if not sweep.todo else "nothing to submit")
        return failed_on_slurm
    sweep.log_dir.mkdir(parents=True, exist_ok=True)
    if executor == "slurm":
        _submit_slurm(sweep, todo, states, runtime, slurm or sweep.spec.slurm, say)
        return failed_on_slurm
    return _run_here(sweep, todo, executor, runtime, say)


def run_order(todo: list[Job]) -> list[Job]:
    """``todo`` with the defense jobs of stored models first (minutes each, and they complete
    runs already begun), then depth first: each model job followed by its defense jobs, so
    that a model's results land complete before the next model trains."""
    models = [j for j in todo if j.stage == "model"]
    of = {m.name: [j for j in todo if j.defense and j.model_job == m.name] for m in models}
    ordered = [j for m in models for j in (m, *of[m.name])]
    return [j for j in todo if j.defense and j.model_job not in of] + ordered


def _run_here(sweep: Sweep, todo: list[Job], executor: str, runtime: Runtime, say) -> int:
    """Run ``todo`` with the local or debug executor, in ``run_order``: at most ``_capacity``
    jobs at once, each defense job once its model job (if in ``todo``) completed."""
    import submitit
    import torch

    if executor == "debug":
        ex = submitit.DebugExecutor(folder=sweep.log_dir / "%j")
    else:
        ex = submitit.LocalExecutor(folder=sweep.log_dir / "%j")
        gpus = torch.cuda.device_count() if runtime.device != "cpu" else 0
        ex.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, gpus_per_node=gpus)
    capacity = _capacity(executor, runtime)
    waiting = {j.name for j in todo if j.stage == "model"}
    pending, running, outcome = run_order(todo), {}, {}
    while pending or running:
        for name, sj in list(running.items()):
            if sj.done():
                del running[name]
                outcome[name] = _finish(sweep, name, sj, say)
        for job in list(pending):
            if len(running) >= capacity:
                break
            dep = job.model_job if job.defense and job.model_job in waiting else None
            if dep and dep not in outcome:
                continue
            pending.remove(job)
            if dep and outcome[dep] != "COMPLETED":
                outcome[job.name] = "BLOCKED"
                say(f"skipped {job.name}: its model job failed")
                continue
            sj = ex.submit(run_job, job, runtime)
            running[job.name] = sj
            sweep.submitted[job.name] = {"executor": executor, "job_id": str(sj.job_id),
                                         "log": str(sj.paths.stderr), "state": "RUNNING"}
            _save_state(sweep)
        if running and executor != "debug":  # a debug job runs inside done()
            time.sleep(POLL_S)
    failed = [n for n, o in outcome.items() if o != "COMPLETED"]
    say(f"{len(outcome) - len(failed)} jobs completed, {len(failed)} failed or skipped"
        + ("; `burn sweep` again runs them (after a fix)" if failed else ""))
    return len(failed)


def _finish(sweep: Sweep, name: str, sj, say) -> str:
    """The outcome of a finished job (COMPLETED, FAILED, KILLED), said and kept in jobs.json."""
    from submitit.core.utils import pickle_load
    from submitit.local.debug import DebugJob

    log = sweep.submitted[name]["log"]
    if isinstance(sj, DebugJob):  # it raised in done() if it failed
        outcome, value = "success", sj.result()
    elif sj.paths.result_pickle.exists():
        outcome, value = pickle_load(sj.paths.result_pickle)  # ("error", traceback) on failure
    else:
        outcome, value = "killed", None
    if outcome == "success":
        state, text = "COMPLETED", f"ACC {value['acc']:.4f} ASR {value['asr']:.4f}"
    elif outcome == "error":
        state, text = "FAILED", str(value).strip().splitlines()[-1]
    else:
        state, text = "KILLED", "no result"
    say(f"{'done' if state == 'COMPLETED' else state.lower()}: {name}: {text}"
        + ("" if state == "COMPLETED" else f"; log {log}"))
    sweep.submitted[name]["state"] = state
    _save_state(sweep)
    return state


def _slurm_params(slurm: SlurmCfg) -> dict:
    """The SlurmExecutor parameters (sbatch options) of every array of a sweep."""
    return {"time": slurm.time_min, "cpus_per_task": slurm.cpus_per_task,
            "array_parallelism": slurm.array_parallelism, "setup": list(slurm.setup),
            **({"partition": slurm.partition} if slurm.partition else {}),
            **({"gpus_per_node": slurm.gpus} if slurm.gpus else {}),
            **({"mem": f"{slurm.mem_gb}GB"} if slurm.mem_gb else {}),
            **({"account": slurm.account} if slurm.account else {}),
            **({"qos": slurm.qos} if slurm.qos else {})}


def sbatch_flags(slurm: SlurmCfg) -> list[str]:
    """The resource options of ``slurm`` as submitit writes them into every array's sbatch
    script (``--gpus-per-node=1``, ...); the per-array ones (``--array``, ``--dependency``,
    ``--job-name``, the logs) are left out."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = {k: v for k, v in _slurm_params(slurm).items() if k not in ("setup", "array_parallelism")}
    text = _make_sbatch_string(command="", folder="/", **params)
    skip = ("--output", "--error", "--open-mode", "--job-name", "--wckey", "--signal")
    return [line.removeprefix("#SBATCH ") for line in text.splitlines()
            if line.startswith("#SBATCH ") and not line.removeprefix("#SBATCH ").startswith(skip)]


def _submit_slurm(sweep: Sweep, todo: list[Job], states: dict[str, str], runtime: Runtime,
                  slurm: SlurmCfg, say) -> None:
    """Submit the arrays of ``slurm_arrays``, the models array first: each defense task waits
    for its own model job only."""
    import submitit

    ex = submitit.SlurmExecutor(folder=sweep.log_dir / "%j")
    params = _slurm_params(slurm)
    models_id = ""
    for a in slurm_arrays(sweep, todo, states):
        after = a.after.format(models=models_id)
        ex.update_parameters(**params, job_name=f"burn-{sweep.spec.name}-{a.name}",
                             dependency=after or None,
                             additional_parameters={"kill-on-invalid-dep": "yes"} if after else None)
        with ex.batch():
            submitted = [ex.submit(run_job, j, runtime) for j in a.jobs]
        array_id = submitted[0].job_id.split("_")[0]
        models_id = array_id if a.name == "models" else models_id
        for j, sj in zip(a.jobs, submitted):
            sweep.submitted[j.name] = {"executor": "slurm", "job_id": sj.job_id,
                                       "log": str(sj.paths.stderr), "array": a.name}
        _save_state(sweep)
        say(f"submitted {a.name}: Slurm job {array_id}, {len(a.jobs)} task{'s' if len(a.jobs) > 1 else ''}"
            + (f", {after}" if after else "") + f"; logs {sweep.log_dir}/{array_id}_*/")
