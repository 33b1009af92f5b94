"""`python -m experiments.launch`: one command as N local processes of one run. It imports no JAX: it only starts,
watches and signals the processes that do."""
from __future__ import annotations

import argparse
import sys

from sm_jax.cli.parser import Parser


def launch_parser() -> argparse.ArgumentParser:
    from sm_jax.launch import MODULES

    p = Parser(prog="python -m experiments.launch",
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

    from sm_jax.errors import UserError
    from sm_jax.launch import launch
    from sm_jax.lifecycle import EXIT_USER_ERROR

    sys.stdout.reconfigure(line_buffering=True)
    try:
        code = launch(args.processes, args.devices_per_process, argv[cut + 1:], args.module, args.grace)
    except UserError as e:  # as guard does (cli.common), which needs JAX
        print(f"error: {e}", file=sys.stderr)
        code = EXIT_USER_ERROR
    sys.exit(code)
