"""The ``burn`` command line. Each subcommand turns its options into config dataclasses at
once and calls the library; nothing below this module sees an argparse namespace."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .atomic import NotWritableError
from .attacks import ATTACKS
from .cache import DamagedFileError
from .config import PROJECT_ROOT, ConfigError, available_presets, load_preset, moved, yaml_value
from .data import DatasetNotFoundError
from .defenses import DEFENSES
from .experiment import ResultsConflictError
from .notebooks import NOTEBOOKS as NOTEBOOK_NAMES
from .runtime import COMPILE_MODES, Runtime

EPILOG = """examples:
  burn attack --attack badnets --dataset cifar10 --preset cpu
      train (or load the committed) BadNets model and print ACC / ASR / RA
  burn attack --attack blended --preset cpu --set train.epochs=30 --retrain
      override any preset value with --set section.key=value
  burn defend --attack badnets --dataset cifar10 --preset cpu
      DeepFool distances + Burn on that model; writes burn.json with the per-iteration report
  burn defend --attack badnets --set defenses.burn.lr=1e-3 --set defenses.burn.divergence=js --tag lr1e-3-js
      any Burn parameter (docs/method.md) can be changed the same way, under a --tag name
      (burn.KEY=VALUE, the former spelling, is read as defenses.burn.KEY=VALUE)
  burn defend --attack badnets --tag coverage_class_outside
      a named run (experiments/defense_runs.yaml: the random control, Burn's opt-ins; a
      preset's defense_runs: the cpu preset's 100-epoch FT-SAM and SAU);
      writes burn_coverage_class_outside.json
  burn defend --attack badnets --defense nad
      a baseline (fp, nad, anp, ibau, ftsam, sau) with 5% clean training data; writes nad.json
  burn defend --attack badnets --defense fp --set defenses.fp.selection=test_set --tag test_set
      a baseline's settings (docs/defenses.md), under a --tag name
  burn presets
      list the presets and what they set

data: CIFAR-10 is looked for under the data root (--data-root, else $BURN_DATA, else
../shared/data beside the repository): torchvision's cifar-10-batches-py, or the JPEG copy
cifar10-jpeg.tar.gz. Results go to results/<preset>/<dataset>/<attack>/.
"""


def _parse_set(items: list[str]) -> dict:
    """``["train.epochs=3", "attack.params.alpha=0.1"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items or []:
        path, _, value = item.partition("=")
        keys = path.strip().split(".")
        if "=" not in item or not all(keys):
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        node = out
        for i, k in enumerate(keys[:-1]):
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: {'.'.join(keys[:i + 1])} is set to a value "
                                  f"({node!r}) by another --set, so it has no keys")
        if isinstance(node.get(keys[-1]), dict):
            raise ConfigError(f"--set {item}: {path} is a section that another --set gives keys")
        node[keys[-1]] = yaml_value(value, f"the value of --set {item}")
    return out


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu",
                   help=f"settings regime: one of {available_presets()} (default: cpu)")
    p.add_argument("--dataset", help="cifar10 | cifar100 | tiny | synthetic (default: the preset's)")
    p.add_argument("--attack", help=f"{' | '.join(ATTACKS)} (default: the preset's)")
    p.add_argument("--data-root", help="folder holding the datasets (default: $BURN_DATA or ../shared/data)")
    p.add_argument("--download", action="store_true", help="download missing datasets with torchvision (needs internet)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset value, e.g. train.epochs=30 (repeatable)")
    p.add_argument("--variant", help="name for a modified preset (with --set); results go to <attack>/variants/<name>/")
    p.add_argument("--seed", type=int, help="the run's one seed (default 0, the committed results); "
                                            "results go to <attack>/[variants/<name>/]seeds/<n>/")
    p.add_argument("--results-root", help="where results/ lives (default: the repository's results/)")
    _runtime_args(p)


THREADS_HELP = ("CPU threads for torch (default: $OMP_NUM_THREADS if set, else the cores that "
                "other processes leave free, at least 1: one per core beside a busy process "
                "thrashes)")


def _runtime_args(p: argparse.ArgumentParser) -> None:
    """Options of how a run executes; none of them changes a result's key."""
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    p.add_argument("--compile", choices=COMPILE_MODES, metavar="MODE",
                   help="train through torch.compile(mode=MODE): default | reduce-overhead "
                        "(CUDA graphs) | max-autotune (default: eager)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")


def _runtime(args) -> Runtime:
    return Runtime(device=args.device, threads=args.threads,
                   compile=getattr(args, "compile", None), data_root=getattr(args, "data_root", None),
                   results_root=getattr(args, "results_root", None),
                   download=getattr(args, "download", False), progress=not args.quiet,
                   debug=args.debug)


def _overrides(args, drop: str = "") -> dict:
    """The --set / --dataset / --attack / --variant overrides; ``drop``: a dotted section to
    leave out (e.g. ``defenses.fp``), for the preset's own settings of that section."""
    overrides = moved(_parse_set(args.set))
    if drop:
        *parents, last = drop.split(".")
        node = overrides
        for k in parents:
            node = node.get(k, {})
        node.pop(last, None)
    if args.dataset:
        overrides.setdefault("data", {})["dataset"] = args.dataset
    if args.attack:
        overrides.setdefault("attack", {})["name"] = args.attack
    if args.variant:
        overrides["variant"] = args.variant
    if getattr(args, "seed", None) is not None:
        overrides["seed"] = args.seed
    return overrides


def _config(args):
    return load_preset(args.preset, _overrides(args))


def _stored_at(record: dict) -> str:
    """Where and when a stored number was measured, for labelling it as stored."""
    cpu = (record.get("machine") or {}).get("cpu") or {}
    return f"stored, measured {record.get('time_utc', '?')[:10]} on {cpu.get('model') or 'an unknown CPU'}"


def cmd_attack(args) -> int:
    from .experiment import attack_by_class, attacked_model, measure_stored

    cfg = _config(args)
    run = attacked_model(cfg, _runtime(args), retrain=args.retrain)
    r = run.record
    print(f"{r['dataset']} | {cfg.model.arch} width {cfg.model.width} | {cfg.train.epochs} epochs")
    if run.trained_now:
        print(f"ACC {r['acc']:.4f}  ASR {r['asr']:.4f}  RA {r['ra']:.4f}  "
              f"(trained now: {r['wall_s_this_session']:.0f} s; results in {run.results_dir})")
    else:
        m = measure_stored(run)
        now = m["measured"]
        print(f"ACC {now['acc']:.4f}  ASR {now['asr']:.4f}  RA {now['ra']:.4f}  (measured now on "
              f"the stored model {run.results_dir / 'model.pt'})")
        print(f"    stored in none.json: ACC {r['acc']:.4f}  ASR {r['asr']:.4f}  RA {r['ra']:.4f}; "
              f"training took {r['wall_s']:.0f} s ({_stored_at(r)})")
        if not m["agree"]:
            raise DamagedFileError(run.results_dir / "model.pt", "it does not reproduce the numbers "
                                   "of none.json beside it", "retrain it with --retrain, or restore "
                                   "both files with `git checkout`")
    if len(run.poisoned_test):
        by_class = attack_by_class(run)
        print("ASR by true class: " + ", ".join(f"{row['class']} {row['asr']:.3f}"
                                                 for row in by_class.to_dict("records")))
    return 0


def cmd_defend(args) -> int:
    from .defense_stage import defense_run, make_defense, tagged_cfg
    from .experiment import attacked_model

    name = args.defense
    cfg = tagged_cfg(args.preset, _overrides(args), name, args.tag or "")
    section = f"defenses.{name}"
    base = load_preset(args.preset, _overrides(args, drop=section))
    defense = make_defense(cfg, name)  # unknown names and fields fail here, before any data loads
    if defense != make_defense(base, name) and not args.tag:
        raise ConfigError(f"--set {section}.* makes a {name} config other than the preset's; name "
                          f"the run with --tag NAME (it writes {name}_NAME.json beside the default "
                          f"{name}.json, which is never overwritten by another config)")
    run = attacked_model(cfg, _runtime(args))
    r = defense_run(run, name, defense=defense, tag=args.tag or "", rerun=args.rerun)
    b = r["before"]
    print(f"{r['dataset']} | {cfg.attack.name} | {defense!r}")
    print(f"before: ACC {b['acc']:.4f}  ASR {b['asr']:.4f}  RA {b['ra']:.4f}")
    for line in defense.summary_lines(r["report"]):
        print("  " + line)
    print(f"after:  ACC {r['acc']:.4f}  ASR {r['asr']:.4f}  RA {r['ra']:.4f}")
    when = "computed now" if r.get("_computed_now") else _stored_at(r)
    distances = f"DeepFool {r['deepfool']['wall_s']:.0f} s, " if "deepfool" in r else ""
    print(f"    {distances}{name} {r['wall_s']:.0f} s ({when}); record: "
          f"{run.results_dir / ((f'{name}_{args.tag}' if args.tag else name) + '.json')}")
    return 0


def cmd_deepfool(args) -> int:
    from .defense_stage import distances_summary
    from .distances import boundary_distances, deepfool_parts_from_end
    from .experiment import attacked_model

    run = attacked_model(_config(args), _runtime(args))
    if args.from_end:
        n = deepfool_parts_from_end(run)
        print(f"{n} DeepFool part(s) computed from the end; the job filling them from the front "
              f"writes {run.results_dir / 'deepfool.npz'}")
        return 0
    d = distances_summary(run, boundary_distances(run))
    ratio = f", ratio {d['mean_ratio']:.2f}, AUROC {d['auroc']:.3f}" if d["n_poisoned"] else ""
    poisoned = f"{d['mean_poisoned']:.4f}" if d["n_poisoned"] else "-"
    print(f"deepfool: {d['n']} training images; mean L2 distance clean {d['mean_clean']:.4f}, "
          f"poisoned {poisoned}{ratio}; computed in {d['wall_s']:.0f} s; "
          f"{run.results_dir / 'deepfool.npz'}")
    print(_coverage_line(d["target_coverage"], run.poisoned.classes))
    return 0


def _coverage_line(tc: dict, classes: list[str]) -> str:
    """What holds the target label's coverage, the statistic the coverage_class guard reads."""
    from .defenses.burn import Burn

    bar = Burn.__dataclass_fields__["min_coverage"].default
    c, row = tc["held_by"], tc["by_class"][tc["held_by"]]
    how = (f"{row['reverted']} of its {row['poisoned']} poisoned images fall back to it, "
           f"most of the others to {classes[row['elsewhere']]} ({row['elsewhere_n']})"
           if row["poisoned"] else "none of its images is poisoned")
    top = (f"; the label of largest coverage is {classes[tc['top_label']]} ({tc['top_share']:.4f})"
           if tc["top_label"] != tc["target"] else "")
    return (f"coverage of the target label {classes[tc['target']]}: {tc['share']:.4f} (the "
            f"guard's default bar {bar}), held by {classes[c]}: {how}{top}")


def cmd_regime(args) -> int:
    from . import plotting
    from .provenance import save_figure, save_table
    from .studies import regime_csv_path, regime_study

    df = regime_study(args.spec, _runtime(args), run=args.run, include_gpu=args.include_gpu,
                      only=args.only)
    csv = regime_csv_path(args.spec, args.results_root)
    save_table(df, csv, config={"spec": str(args.spec)}, inputs=[args.spec])
    preset, dataset, attack = csv.parts[-4:-1]
    fig_root = Path(args.results_root) / "figures" if args.results_root else PROJECT_ROOT / "figures"
    # the data's full name (e.g. "CIFAR-10 (JPEG copy)") as the trained models recorded it
    label = next((d for d in df["data"].dropna()), dataset) if "data" in df else dataset
    save_figure(plotting.regime_figure(df, label), fig_root / preset / f"regime_{attack}",
                config={"spec": str(args.spec)}, inputs=[csv])
    cols = [c for c in ("regime", "status", "train_acc_clean", "train_loss_clean", "acc", "asr",
                        "median_ratio", "auroc", "top05_precision", "top1_precision", "revert_share", "burn_acc", "burn_asr", "burn_sc_acc",
                        "burn_sc_asr") if c in df]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {csv}")
    return 0


def cmd_report(args) -> int:
    from .report import write_pages

    for line in write_pages(args.preset, args.dataset, results_root=args.results_root):
        print(line)
    return 0


def cmd_reproduce(args) -> int:
    import time

    from .notebooks import NOTEBOOKS, reproduce

    t0 = time.perf_counter()
    rows = reproduce(args.preset, args.only or NOTEBOOKS, progress=not args.quiet,
                     threads=args.threads)
    cmd_report(argparse.Namespace(preset=args.preset, dataset=args.dataset, results_root=None))
    changed = [r["notebook"] for r in rows if r["changed"]]
    print(f"reproduce ({args.preset}): {time.perf_counter() - t0:.0f} s in all; executed notebooks "
          f"changed: {', '.join(changed) if changed else 'none'}")
    return 0


def cmd_presets(args) -> int:
    for name in available_presets():
        cfg = load_preset(name)
        print(f"{name}: dataset {cfg.data.dataset}, {cfg.model.arch} width {cfg.model.width}, "
              f"{cfg.train.epochs} epochs, bf16 {cfg.train.amp_bf16}")
    return 0


def cmd_config(args) -> int:
    from .config import to_dict

    print(json.dumps(to_dict(_config(args)), indent=2))
    return 0


def cmd_sweep(args) -> int:
    import dataclasses

    from .sweep import load_sweep, plan, run_sweep, slurm_states, summary

    spec = load_sweep(args.spec)
    absolute = {k: str(Path(v).absolute()) for k in ("results_root", "data_root")
                if (v := getattr(args, k)) is not None}  # a job may run in another folder
    runtime = dataclasses.replace(_runtime(args), threads=args.threads or spec.threads, **absolute)
    slurm = dataclasses.replace(spec.slurm, **{k: v for k in ("partition", "time_min", "gpus",
                                                               "cpus_per_task", "array_parallelism")
                                               if (v := getattr(args, k)) is not None})
    sweep = plan(spec, results_root=args.results_root, log_dir=args.log_dir)
    if args.dry_run:
        print(summary(sweep, args.executor, slurm_states(sweep), runtime, slurm))
        return 0
    return 1 if run_sweep(sweep, args.executor, runtime, slurm=slurm) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="burn", description="Backdoor attacks, DeepFool boundary analysis and the Burn defense.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("attack", help="train a backdoored (or clean) model and report ACC/ASR/RA",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--retrain", action="store_true", help="train even if a matching model is committed")
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("defend", help="run a defense on an attacked model and report before/after",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--defense", default="burn", choices=sorted(DEFENSES),
                   help="defense to run (default: burn; the baselines get 5%% of the training set "
                        "as clean data)")
    p.add_argument("--tag", help="name for a run with non-default options of the defense "
                                 "(--set defenses.NAME.*): writes NAME_<tag>.json "
                                 "beside NAME.json; a named tag (experiments/defense_runs.yaml, "
                                 "a preset's defense_runs) "
                                 "(e.g. burn's random, suspect_class, coverage_class_outside) "
                                 "brings its settings, no --set needed")
    p.add_argument("--rerun", action="store_true",
                   help="run the defense even if a record of this model and config is stored")
    p.set_defaults(func=cmd_defend)

    p = sub.add_parser("deepfool", help="the DeepFool distances of an attacked model's training "
                       "set (deepfool.npz), without a defense", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--from-end", action="store_true",
                   help="a second worker: compute the parts from the last backwards until they "
                        "meet those of a `burn deepfool` or `burn defend` of the same model "
                        "running beside it (half the wall time on two cores); writes no deepfool.npz")
    p.set_defaults(func=cmd_deepfool)

    p = sub.add_parser("regime", help="the regime study: which training regime makes Burn's selection work",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="experiments/regime_badnets.yaml", help="regime list (YAML)")
    p.add_argument("--run", action="store_true", help="train/DeepFool/Burn the regimes lacking results (resumable)")
    p.add_argument("--only", action="append", help="run only this regime (repeatable)")
    p.add_argument("--include-gpu", action="store_true", help="also run regimes marked `needs: gpu`")
    p.add_argument("--data-root")
    p.add_argument("--results-root")
    _runtime_args(p)
    p.set_defaults(func=cmd_regime)

    p = sub.add_parser("sweep", help="run a sweep spec (attacks x defenses x seeds) locally or on Slurm",
                       description="Expand SPEC (experiments/sweeps/*.yaml) into jobs: a model job "
                       "(attacked model + DeepFool distances) per attack and seed, a defense job per "
                       "defense after it. Stored stages are read back, so running it again submits "
                       "only what is missing, and failed jobs again (docs/cluster.md).")
    p.add_argument("spec", help="sweep spec (YAML), e.g. experiments/sweeps/cpu.yaml")
    p.add_argument("--executor", default="local", choices=("local", "slurm", "debug"),
                   help="local: subprocesses here, cores / threads at once (default); slurm: job "
                        "arrays, afterok on the models' array; debug: in this process, with the traceback")
    p.add_argument("--dry-run", action="store_true", help="print the jobs, what is stored and the "
                                                          "arrays; submit nothing")
    p.add_argument("--log-dir", help="jobs' logs and jobs.json (default: $BURN_CACHE/sweeps/<spec "
                                     "name>; on Slurm a folder every node sees)")
    p.add_argument("--partition", help="Slurm partition (default: the spec's)")
    p.add_argument("--time-min", type=int, help="Slurm time limit of a job, minutes")
    p.add_argument("--gpus", type=int, help="GPUs per job on Slurm")
    p.add_argument("--cpus-per-task", type=int, help="CPUs per job on Slurm")
    p.add_argument("--array-parallelism", type=int, help="at most this many tasks of an array at once")
    p.add_argument("--data-root")
    p.add_argument("--results-root")
    p.add_argument("--download", action="store_true")
    _runtime_args(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("config", help="print the resolved config of a preset with overrides")
    _common(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("report", help="write results/<preset>/paper_vs_ours.md from the saved tables")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--results-root")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("reproduce", help="run every notebook into notebooks/executed/<preset>/ "
                       "(each stage reuses the committed results) and write paper_vs_ours.md")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--only", action="append", choices=NOTEBOOK_NAMES, metavar="NOTEBOOK",
                   help=f"run only this notebook (repeatable): {' | '.join(NOTEBOOK_NAMES)}")
    p.add_argument("--threads", type=int, help="CPU threads of each notebook's kernel (default: "
                   "$OMP_NUM_THREADS if set, else the cores that other processes leave free as "
                   "the notebook starts, at least 1)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("presets", help="list the presets")
    p.set_defaults(func=cmd_presets)
    return parser


USER_ERRORS = (DatasetNotFoundError, ConfigError, FileNotFoundError, ValueError,
               ResultsConflictError, DamagedFileError, NotWritableError)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:  # what a user can cause: one line; the traceback with --debug
        if getattr(args, "debug", False):
            raise
        print(f"burn: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`burn attack | head`): stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
