"""`experiments.evaluate`, `experiments.rank` and `experiments.export`: scoring and moving condensed sets."""
from __future__ import annotations

import argparse
import json
import os

from sm_jax.cli.common import add_config_flags, add_process_flags, guard, processes_from_flags
from sm_jax.cli.parser import Parser

# the fields experiments.evaluate may change (the protocol and where the data is; never the set)
EVALUATE_FIELDS = ("eval_models", "eval_epochs", "eval_arch", "eval_aug", "eval_protocol", "eval_temperature",
                   "metrics", "baseline", "data_dir", "log_every")
SET_FIELDS = ("method", "dataset", "preset", "factor")  # what a set without a run config is evaluated as
RANK_FIELDS = tuple(f for f in EVALUATE_FIELDS if f != "metrics")  # experiments.rank always scores by ddranking


def evaluate_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m experiments.evaluate",
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

    guard(go, processes_from_flags(args))


def rank_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m experiments.rank",
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

    guard(go)


def export_parser() -> argparse.ArgumentParser:
    from sm_jax.sets import FORMATS

    p = Parser(prog="python -m experiments.export",
                description="Export a finished run's condensed set with its preprocessing and provenance "
                "(metadata.json): folder (8-bit PNGs per class), npz (float32) or pt (the official results layout).")
    p.add_argument("--workdir", required=True, help="a finished run's directory")
    p.add_argument("--to", required=True, help="a new (or empty) directory")
    p.add_argument("--format", required=True, choices=list(FORMATS), help="export format")
    return p


def export_main(argv=None) -> None:
    args = export_parser().parse_args(argv)

    def go():
        from sm_jax.sets.export import export_run

        written = export_run(args.workdir, args.to, args.format)
        print(json.dumps({"format": args.format, "written": [str(w) for w in written]}))

    guard(go)
