"""Trajectory matching's memory against the unrolled steps: XLA's memory analysis of one MTT iteration at
`syn_steps` 10, 20, 40, 80, with the checkpointed scan (`--remat`, the default) and with the plain unroll (what the
official code keeps: every step's graph).

python -m benchmarks.mtt [--ipc 10] [--steps 10,20,40,80] [--targets cpu,h100] [--subset-k 1] [--out FILE]

One JSON line per (target, syn_steps, remat): the program's bytes (arguments + outputs + temporaries - donated) and
its temporaries. `cpu` compiles for this host (XLA:CPU); another target is compiled without its device (sm_jax.aot,
needs `.[aot]`). The iteration is the paper preset's for CIFAR-10 at `--ipc` (ConvNet-3, all images per step), with
the experts' snapshots as the context (100 experts).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from benchmarks.aot import emit
from sm_jax.backend import program_bytes
from sm_jax.config import make_config
from sm_jax.methods import make_method


def measure(ipc: int, steps: int, remat: bool, target: str, subset_k: int = 1) -> dict:
    # zca off: the whitening is applied to real images only, which an iteration never reads
    cfg = make_config("mtt", ipc, "paper", syn_steps=steps, remat=remat, subset_k=subset_k, zca=False,
                      conv_impl="xla")
    t0 = time.perf_counter()
    if target == "cpu":
        from sm_jax.aot.compile import shape_dataset

        data = shape_dataset("cifar10")
        m = make_method(cfg, data.spec)
        images = jax.ShapeDtypeStruct((10, ipc, 32, 32, 3), jnp.float32)
        state = jax.eval_shape(m.init_state, images)
        key = jax.eval_shape(lambda: jax.random.key(0))
        compiled = jax.jit(m.iteration, donate_argnums=0).lower(state, m.context_shapes(data), key).compile()
        total, temp = program_bytes(compiled), compiled.memory_analysis().temp_size_in_bytes
    else:
        from sm_jax.aot.compile import Compiler, shape_dataset
        from sm_jax.aot.targets import target as make_target

        program = Compiler(cfg, make_target(target), shape_dataset("cifar10")).iteration(0)
        total, temp = program.bytes, program.memory["temp"]
    return {"benchmark": "mtt_memory", "target": target, "ipc": ipc, "subset_k": subset_k, "syn_steps": steps,
            "remat": remat, "bytes": total, "temp_bytes": temp, "compile_seconds": time.perf_counter() - t0}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--steps", default="10,20,40,80")
    p.add_argument("--targets", default="cpu,h100")
    p.add_argument("--subset-k", type=int, default=1)
    p.add_argument("--out", help="also append the JSON lines to this file")
    args = p.parse_args(argv)
    rows = []
    for target in args.targets.split(","):
        for remat in (True, False):
            for steps in map(int, args.steps.split(",")):
                rows.append(measure(args.ipc, steps, remat, target, args.subset_k))
                emit(rows[-1], args.out)
    for target in args.targets.split(","):
        for remat in (True, False):
            sel = {r["syn_steps"]: r["bytes"] for r in rows if r["target"] == target and r["remat"] == remat}
            lo, hi = min(sel), max(sel)
            print(f"{target} {'checkpointed' if remat else 'plain'}: {sel[hi] / 2**30:.2f} GiB at {hi} steps, "
                  f"{sel[lo] / 2**30:.2f} GiB at {lo}: ratio {sel[hi] / sel[lo]:.2f}")
    return rows


if __name__ == "__main__":
    main()
