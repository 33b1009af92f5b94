"""`experiments.condense` (and its per-dataset aliases), `experiments.experts` and `experiments.launch`. The
condense flags are generated from the Config's fields; nothing here knows a method, a preset or a default."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from sm_jax.cli.common import add_config_flags, add_process_flags, guard, processes_from_flags
from sm_jax.cli.parser import Parser
from sm_jax.config import Config, default_workdir, make_config

REQUIRED = ("method", "ipc")  # fields the condense command asks for (--dataset too, for experiments.condense)


def condense_parser(dataset: str | None = None) -> argparse.ArgumentParser:
    """The flags of `experiments.condense`; with `dataset` given (experiments.cifar10), no --dataset flag."""
    if dataset is None:
        p = Parser(prog="python -m experiments.condense",
                    description="Condense a dataset with a method (+ subset matching), then evaluate. Defaults come "
                    "from the method's preset (--preset paper: the papers' budgets; cpu: minutes on a CPU).")
        required = (*REQUIRED, "dataset")
    else:
        p = Parser(prog=f"python -m experiments.{dataset}",
                    description=f"Condense {dataset} with a method (+ subset matching), then evaluate "
                    f"(= python -m experiments.condense --dataset {dataset}).")
        p.set_defaults(dataset=dataset)
        required = REQUIRED
    names = [f.name for f in dataclasses.fields(Config)
             if f.metadata["flag"] and not (dataset and f.name == "dataset")]
    add_config_flags(p, names, required)
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    from sm_jax.aot.targets import TARGETS

    p.add_argument("--plan-for", metavar="TARGET", choices=list(TARGETS),
                   help="compile the run's programs for this accelerator, which need not be here (the compilers: "
                   "pip install -e \".[aot]\"), print their memory, the class chunk and the estimated time of an "
                   f"iteration and of the run, and exit; nothing is read but shapes (one of {', '.join(TARGETS)})")
    add_process_flags(p)
    return p


def config_from_flags(args: argparse.Namespace) -> Config:
    """The Config of parsed condense flags (those not given keep the preset's values); the default workdir is
    config.default_workdir's."""
    names = {f.name for f in dataclasses.fields(Config)}
    cfg = make_config(**{k: v for k, v in vars(args).items() if k in names and v is not None})
    return cfg if args.workdir is not None else cfg.replace(workdir=default_workdir(cfg))


def condense_main(argv=None, dataset: str | None = None) -> None:
    """`python -m experiments.condense`; with `dataset`, the per-dataset alias (experiments.cifar10)."""
    args = condense_parser(dataset).parse_args(argv)

    def go():
        cfg = config_from_flags(args)
        if args.plan_for:
            from sm_jax.aot import plan

            print(json.dumps(plan(cfg, args.plan_for, cfg.data_dir if cfg.dataset == "folder" else None)))
            return
        if args.subset_k is None and cfg.subset_k == 1:
            print(f"note: --subset-k defaults to 1 (the base method) here: K = 2 does not divide the "
                  f"{cfg.syn_per_class} synthetic images per class", file=sys.stderr)
        from sm_jax import distributed, repeats

        results = repeats.execute(cfg, progress=not args.no_progress)
        summary = {k: results.get(k) for k in ("accuracy_mean", "accuracy_std", "accuracies", "experiment_mean",
                                               "experiment_std", "iterations", "baseline", "difference", "hlr", "ior",
                                               "lrs", "ars") if k in results}
        if distributed.is_writer():
            print(json.dumps({"workdir": cfg.workdir, **summary}))

    guard(go, processes_from_flags(args), compile_cache=not args.plan_for)


def experts_main(argv=None) -> None:
    """`python -m experiments.experts`: trains (or finishes, or finds) the experts a trajectory-matching run of the
    same flags would use, into their shared directory."""
    p = condense_parser()
    p.prog = "python -m experiments.experts"
    p.description = ("Train the expert trajectories of a trajectory-matching (MTT) run: the same flags as "
                     "experiments.condense --method mtt; the experts go to --experts-dir (default: a directory "
                     "named by their settings under the cache), resume after an interruption, and are reused by "
                     "every run of the same settings.")
    p.add_argument("--import-official", metavar="PATH",
                   help="instead of training, read the official buffer.py's replay_buffer_<n>.pt (a directory or "
                   "one file) into --experts-dir; the flags must say how they were trained (--num-experts, "
                   "--expert-train-epochs, --zca, ...)")
    p.set_defaults(method="mtt", dataset="cifar10")
    for action in p._actions:
        if action.dest in ("method", "dataset"):
            action.required = False
    args = p.parse_args(argv)

    def go():
        from sm_jax.errors import ConfigError
        from sm_jax.experiment import Run
        from sm_jax.lifecycle import StopSignals
        from sm_jax.methods import METHODS

        cfg = config_from_flags(args)
        if not hasattr(METHODS[cfg.method], "store"):
            raise ConfigError(f"--method {cfg.method} trains no experts (trajectory matching does: --method mtt)")
        run = Run(cfg, progress=not args.no_progress)
        if args.import_official:
            from sm_jax.experts import import_official

            import_official(run.method.store(run.data), args.import_official, cfg, run.data, run.method.net,
                            run.method.normalizer(), run.log)
        else:
            with StopSignals() as stop:
                run.method.preparation(run.data, run.log, stop, run.progress)
        store = run.method.store(run.data)
        print(json.dumps({"experts_dir": str(store.dir), "epochs": store.epochs_done(),
                          "accuracies": store.accuracies()}))

    guard(go, processes_from_flags(args))
