"""`experiments.study`: a study's runs, then its tables and figures."""
from __future__ import annotations

import argparse

from sm_jax.cli.common import Parser, guard


def study_parser() -> argparse.ArgumentParser:
    from sm_jax import study

    p = Parser(prog="python -m experiments.study",
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

    guard(go)
