"""`experiments.study`: a study's runs, then its tables and figures."""
from __future__ import annotations

import argparse

from sm_jax.cli.common import guard
from sm_jax.cli.parser import Parser


def study_parser() -> argparse.ArgumentParser:
    from sm_jax import study
    from sm_jax.aot.targets import TARGETS

    p = Parser(prog="python -m experiments.study",
                description="Run (or resume) a study's runs, then regenerate its tables and figures.")
    p.add_argument("--plan", action="append", required=True,
                   help=f"built-in plan ({', '.join(study.PLANS)}; 'all' = the reduced-budget ones, all but full) or a "
                   "JSON plan file; repeatable")
    p.add_argument("--data-dir", help="passed to every run (see python -m experiments.condense --help)")
    p.add_argument("--root", default=study.ROOT, help=f"run directories: ROOT/PLAN/RUN (default {study.ROOT})")
    p.add_argument("--export", default=study.EXPORT,
                   help=f"finished runs' results/metrics/config are copied to EXPORT/PLAN/RUN (default {study.EXPORT})")
    p.add_argument("--out", default=study.OUT, help=f"tables (PLAN.md) and figures (default {study.OUT})")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", type=_override,
                   help="a config field set in every run over the plan's own (JSON values: --set iterations=2 "
                   "--set preset=cpu); repeatable. The runs' directories are the plan's, so use another --root")
    p.add_argument("--plan-for", metavar="TARGET", choices=list(TARGETS),
                   help="predict the plans' device-hours on a target without it (every run compiled for it by "
                   f"sm_jax.aot, times its experiments; needs .[aot]): {', '.join(TARGETS)}")
    p.add_argument("--report-only", action="store_true", help="only regenerate tables and figures from EXPORT")
    p.add_argument("--list", action="store_true", help="list the plan's runs and whether each has finished")
    p.add_argument("--pack", metavar="FILE", help="write the plans' runs under ROOT (results, configs, metrics, sets, "
                   "latest checkpoints) to the .tar.gz FILE and exit, for a later machine to continue from")
    p.add_argument("--unpack", metavar="FILE", help="first restore a pack under ROOT (refused over existing runs), "
                   "then go on as usual")
    return p


def _override(text: str) -> tuple[str, object]:
    import json

    field, eq, value = text.partition("=")
    if not eq or not field:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIELD=VALUE")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value  # a bare string: --set preset=cpu
    return field.strip().replace("-", "_"), parsed


def study_main(argv=None) -> None:
    args = study_parser().parse_args(argv)

    def go():
        from pathlib import Path

        from sm_jax import study

        plans = [n for p in args.plan for n in (study.ALL if p == "all" else [p])]
        if args.unpack:
            print(f"{args.unpack}: {study.unpack(args.unpack, args.root)} runs restored under {args.root}")
        if args.plan_for:
            import sys

            from sm_jax.study.forecast import forecast, table

            for name in plans:
                print(table(forecast(name, args.plan_for, dict(args.set), log=lambda s: print(s, file=sys.stderr))))
            return
        if args.pack:
            p = study.pack(args.root, plans, args.pack)
            print(f"{p['path']}: {p['runs']} runs, {p['bytes'] / 2**20:.1f} MiB")
            return
        for name in plans:
            specs = study.load_plan(name)
            if args.list:
                for s in specs:
                    done = study.read_run(Path(args.root) / study.plan_name(name) / s.id)
                    state = f"{100 * done['accuracy_mean']:.2f}%" if done else "-"
                    print(f"{study.plan_name(name)}/{s.id}\t{s.group}\t{state}")
                continue
            if not args.report_only:
                study.run_plan(name, args.root, args.export, args.data_dir, overrides=dict(args.set))
            print(study.report(name, args.export, args.out))

    guard(go, compile_cache=not args.plan_for)
