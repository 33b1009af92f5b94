"""Command-line front ends (experiments/*.py are thin wrappers around these). The condense flags are generated from
the Config's fields and their metadata; nothing here knows a method, a preset or a default."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys

from sm_jax.backend import AUTO_CHUNK
from sm_jax.config import Config, default_workdir, make_config

REQUIRED = ("method", "ipc")  # fields the condense command asks for (--dataset too, for experiments.condense)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, like the other user errors
        self.exit(2, f"error: {message}\n")


def class_chunk(text: str) -> int:
    """argparse type of --class-chunk: 'auto' or an integer."""
    if text == "auto":
        return AUTO_CHUNK
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or an integer, got {text!r}") from None


_TYPES = {"int": int, "float": float, "str": str, "str | None": str, "int | None": int}
_SPECIAL_TYPES = {"class_chunk": class_chunk}


def add_config_flags(p: argparse.ArgumentParser, names=None, required=(), cls=Config) -> None:
    """--flags for the fields `names` (default: all) of the dataclass `cls` (Config, distributed.Processes), each
    with its metadata's help and choices; defaults are None (the preset's value), so that only the flags given
    override it."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names or fields:
        f, meta = fields[name], fields[name].metadata
        flag = "--" + name.replace("_", "-")
        text = meta["help"]
        if meta["choices"] is not None:
            text += f" (one of {', '.join(meta['choices']())})"
        if f.type == "bool" and f.default:  # on unless turned off
            p.add_argument("--no-" + flag[2:], dest=name, action="store_const", const=False, help=text)
        elif f.type == "bool":
            p.add_argument(flag, action="store_const", const=True, help=text)
        else:
            p.add_argument(flag, type=_SPECIAL_TYPES.get(name, _TYPES[f.type]), required=name in required, help=text,
                           metavar=name.upper() if name not in required else None)


def condense_parser(dataset: str | None = None) -> argparse.ArgumentParser:
    """The flags of `experiments.condense`; with `dataset` given (experiments.cifar10), no --dataset flag."""
    if dataset is None:
        p = _Parser(prog="python -m experiments.condense",
                    description="Condense a dataset with a method (+ subset matching), then evaluate. Defaults come "
                    "from the method's preset (--preset paper: the papers' budgets; cpu: minutes on a CPU).")
        required = (*REQUIRED, "dataset")
    else:
        p = _Parser(prog=f"python -m experiments.{dataset}",
                    description=f"Condense {dataset} with a method (+ subset matching), then evaluate "
                    f"(= python -m experiments.condense --dataset {dataset}).")
        p.set_defaults(dataset=dataset)
        required = REQUIRED
    names = [f.name for f in dataclasses.fields(Config) if not (dataset and f.name == "dataset")]
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


def add_process_flags(p: argparse.ArgumentParser) -> None:
    """The flags of distributed.Processes (a multi-process run), in their own group."""
    from sm_jax.distributed import Processes

    add_config_flags(p.add_argument_group("several processes (hosts): see docs/operations.md"), cls=Processes)


def processes_from_flags(args: argparse.Namespace):
    from sm_jax.distributed import Processes

    names = {f.name for f in dataclasses.fields(Processes)}
    return Processes(**{k: v for k, v in vars(args).items() if k in names and v is not None})


def _guard(fn, processes=None):
    """Runs fn() with the exit codes of `sm_jax.lifecycle`: user errors and divergence become one `error:` line
    (2, 3); a stop on SIGINT / SIGTERM exits 130 / 143 after the run saved its checkpoint. With `processes`
    (distributed.Processes), joins a multi-process run first, and a Watchdog ends this process (4) when another
    is lost."""
    from sm_jax import backend, distributed, lifecycle
    from sm_jax.data import default_cache_dir
    from sm_jax.errors import UserError

    # a batch job's log is a file: print each line when it is written, not when a buffer fills
    sys.stdout.reconfigure(line_buffering=True)
    watchdog = None

    def leave(code: int, message: str | None = None, file=sys.stderr) -> None:
        if message is not None:
            print(message, file=file, flush=True)
        if watchdog is not None and code not in (0, 130, 143):
            # alone in failing: skip JAX's shutdown barrier, where the others would wait for it; their Watchdog
            # names this process once it is gone
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        if watchdog is not None:
            watchdog.close(finished=True)
        sys.exit(code)

    try:
        if processes is not None and distributed.initialize(processes):
            watchdog = distributed.Watchdog(processes.peer_timeout)
        backend.enable_compilation_cache(default_cache_dir() / "xla")
        out = fn()
        if watchdog is not None:
            watchdog.close(finished=True)
        return out
    except UserError as e:
        leave(lifecycle.EXIT_USER_ERROR, f"error: {e}")
    except lifecycle.Diverged as e:
        leave(lifecycle.EXIT_DIVERGED, f"error: {e}")
    except lifecycle.Stopped as e:
        if e.abandoned:  # an iteration still runs on the device: end now, the checkpoint is written and closed
            print(e, flush=True)
            sys.stderr.flush()
            os._exit(e.code)
        if watchdog is not None:  # SLURM signals every process, some after the stop they agreed on and saved
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        leave(e.code, str(e) if distributed.is_writer() else None, sys.stdout)
    except Exception:
        if watchdog is not None:  # a collective may fail because a peer is gone: let the watchdog name it first
            watchdog.settle()
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: abort now, not after the device finishes its iteration
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(lifecycle.exit_code(signal.SIGINT))


def condense_main(argv=None, dataset: str | None = None) -> None:
    """`python -m experiments.condense`; with `dataset`, the per-dataset alias (experiments.cifar10)."""
    args = condense_parser(dataset).parse_args(argv)

    def go():
        from sm_jax.experiment import Run

        cfg = config_from_flags(args)
        if args.plan_for:
            from sm_jax.aot import plan

            print(json.dumps(plan(cfg, args.plan_for, cfg.data_dir if cfg.dataset == "folder" else None)))
            return
        if args.subset_k is None and cfg.subset_k == 1:
            print(f"note: --subset-k defaults to 1 (the base method) here: K = 2 does not divide the "
                  f"{cfg.syn_per_class} synthetic images per class", file=sys.stderr)
        run = Run(cfg, progress=not args.no_progress)
        results = run.execute()
        summary = {k: results.get(k) for k in ("accuracy_mean", "accuracy_std", "accuracies", "iterations",
                                               "baseline", "difference") if k in results}
        if run.writer:
            print(json.dumps({"workdir": cfg.workdir, **summary}))

    _guard(go, processes_from_flags(args))


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
                            run.method.normalize, run.log)
        else:
            with StopSignals() as stop:
                run.method.preparation(run.data, run.log, stop, run.progress)
        store = run.method.store(run.data)
        print(json.dumps({"experts_dir": str(store.dir), "epochs": store.epochs_done(),
                          "accuracies": store.accuracies()}))

    _guard(go, processes_from_flags(args))


# the fields experiments.evaluate may change (the protocol and where the data is; never the set)
EVALUATE_FIELDS = ("eval_models", "eval_epochs", "eval_arch", "eval_aug", "eval_protocol", "eval_temperature",
                   "metrics", "baseline", "data_dir", "log_every")
SET_FIELDS = ("method", "dataset", "preset", "factor")  # what a set without a run config is evaluated as
RANK_FIELDS = tuple(f for f in EVALUATE_FIELDS if f != "metrics")  # experiments.rank always scores by ddranking


def evaluate_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m experiments.evaluate",
                description="Evaluate a run's checkpoint (--workdir) with its method's protocol, or any condensed set "
                "(--set: an exported folder / npz / pt, a run's synthetic.npz, the official DC/DSA/DM res_*.pt or "
                "IDC's data.pt) with the protocol of its metadata's run config, else of --method's preset; the "
                "flags below override the config's values.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="a run directory")
    src.add_argument("--set", help="a condensed set's file or directory")
    p.add_argument("--step", type=int, help="--workdir: checkpoint iteration (default: latest)")
    add_config_flags(p, EVALUATE_FIELDS)
    g = p.add_argument_group("--set without a run config in its metadata (e.g. the official codes' sets)")
    add_config_flags(g, SET_FIELDS)
    g.add_argument("--set-index", type=int, default=0, help="which experiment's set of an official res_*.pt")
    g.add_argument("--out", help="results file (default: results.json beside the set; set_results.json where a "
                   "run's own results.json is)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    add_process_flags(p)
    return p


def evaluate_main(argv=None) -> None:
    p = evaluate_parser()
    args = p.parse_args(argv)
    if args.workdir:
        given = [f"--{k.replace('_', '-')}" for k in (*SET_FIELDS, "set_index", "out")
                 if getattr(args, k) not in (None, 0)]
        if given:
            p.error(f"{given[0]} applies to --set only")

    def go():
        overrides = {k: getattr(args, k) for k in EVALUATE_FIELDS if getattr(args, k) is not None}
        if args.workdir:
            from sm_jax.experiment import evaluate_checkpoint

            out = evaluate_checkpoint(args.workdir, args.step, overrides, progress=not args.no_progress)
        else:
            from sm_jax.sets.evaluate import evaluate_set_path

            if args.preset:
                overrides["preset"] = args.preset
            out = evaluate_set_path(args.set, overrides, dataset=args.dataset, method=args.method,
                                    factor=args.factor, index=args.set_index, out=args.out,
                                    progress=not args.no_progress)
        from sm_jax.distributed import is_writer

        if is_writer():
            print(json.dumps(out))

    _guard(go, processes_from_flags(args))


def rank_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m experiments.rank",
                description="Score several condensed sets with DD-Ranking's HLR, IOR, LRS and ARS (as experiments."
                "evaluate --metrics ddranking does) and write OUT/ranking.md, ranking.csv and ranking.png, best LRS "
                "first; a set already scored in OUT by the same request is read back, not scored again.")
    p.add_argument("--set", action="append", required=True, help="a condensed set (repeat for each)")
    p.add_argument("--out", required=True, help="the directory of the table, the chart and each set's results")
    add_config_flags(p, RANK_FIELDS)
    g = p.add_argument_group("sets without a run config in their metadata")
    add_config_flags(g, SET_FIELDS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    return p


def rank_main(argv=None) -> None:
    args = rank_parser().parse_args(argv)

    def go():
        from sm_jax.sets.rank import rank_sets

        overrides = {k: getattr(args, k) for k in (*RANK_FIELDS, "preset", "factor") if getattr(args, k) is not None}
        rows = rank_sets(args.set, overrides, args.out, args.dataset, args.method, progress=not args.no_progress)
        print(open(os.path.join(args.out, "ranking.md")).read(), end="")
        print(json.dumps({"out": args.out, "sets": len(rows)}))

    _guard(go)


def export_parser() -> argparse.ArgumentParser:
    from sm_jax.sets import FORMATS

    p = _Parser(prog="python -m experiments.export",
                description="Export a finished run's condensed set with its preprocessing and provenance "
                "(metadata.json): folder (8-bit PNGs per class), npz (float32) or pt (the official results layout).")
    p.add_argument("--workdir", required=True, help="a finished run's directory")
    p.add_argument("--to", required=True, help="a new (or empty) directory")
    p.add_argument("--format", required=True, choices=list(FORMATS), help="export format")
    return p


def export_main(argv=None) -> None:
    args = export_parser().parse_args(argv)

    def go():
        from sm_jax.sets import export_run

        written = export_run(args.workdir, args.to, args.format)
        print(json.dumps({"format": args.format, "written": [str(w) for w in written]}))

    _guard(go)


def study_parser() -> argparse.ArgumentParser:
    from sm_jax import study

    p = _Parser(prog="python -m experiments.study",
                description="Run (or resume) a study's runs, then regenerate its tables and figures.")
    p.add_argument("--plan", action="append", required=True,
                   help=f"built-in plan ({', '.join(study.PLANS)}; 'all' = all of them) or a JSON plan file; "
                   "repeatable")
    p.add_argument("--data-dir", help="passed to every run (see python -m experiments.condense --help)")
    p.add_argument("--root", default=study.ROOT, help=f"run directories: ROOT/PLAN/RUN (default {study.ROOT})")
    p.add_argument("--export", default=study.EXPORT,
                   help=f"finished runs' results/metrics/config are copied to EXPORT/PLAN/RUN (default {study.EXPORT})")
    p.add_argument("--out", default=study.OUT, help=f"tables (PLAN.md) and figures (default {study.OUT})")
    p.add_argument("--report-only", action="store_true", help="only regenerate tables and figures from EXPORT")
    p.add_argument("--list", action="store_true", help="list the plan's runs and whether each has finished")
    return p


def study_main(argv=None) -> None:
    args = study_parser().parse_args(argv)

    def go():
        from pathlib import Path

        from sm_jax import study

        plans = [n for p in args.plan for n in (study.PLANS if p == "all" else [p])]
        for name in plans:
            specs = study.load_plan(name)
            if args.list:
                for s in specs:
                    done = study.read_run(Path(args.root) / study.plan_name(name) / s.id)
                    state = f"{100 * done['accuracy_mean']:.2f}%" if done else "-"
                    print(f"{study.plan_name(name)}/{s.id}\t{s.group}\t{state}")
                continue
            if not args.report_only:
                study.run_plan(name, args.root, args.export, args.data_dir)
            print(study.report(name, args.export, args.out))

    _guard(go)


def launch_parser() -> argparse.ArgumentParser:
    from sm_jax.launch import MODULES

    p = _Parser(prog="python -m experiments.launch",
                usage="python -m experiments.launch --processes N --devices-per-process D [--module M] -- FLAGS",
                description="Run one sm_jax command as N processes of one multi-process run on this machine, each "
                "with D CPU devices (jax.distributed on a free local port, gloo collectives), like torchrun "
                "--standalone; FLAGS are the command's own. Output lines are prefixed by the process's rank; the "
                "exit status is the first non-zero one.")
    p.add_argument("--processes", type=int, required=True, help="number of processes")
    p.add_argument("--devices-per-process", type=int, default=1, help="CPU devices of each process (default 1)")
    p.add_argument("--module", default=MODULES[0], choices=MODULES,
                   help=f"the command (default {MODULES[0]}, the main one; {MODULES[1]} for another --dataset)")
    p.add_argument("--grace", type=float, default=90.0,
                   help="seconds the others get to end after one process fails, before SIGKILL (default 90: more "
                   "than the default --peer-timeout)")
    return p


def launch_main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = launch_parser().parse_args(argv[:cut])

    def go():
        from sm_jax.launch import launch

        return launch(args.processes, args.devices_per_process, argv[cut + 1:], args.module, args.grace)

    sys.exit(_guard(go))
