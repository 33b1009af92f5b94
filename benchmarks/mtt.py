"""Trajectory matching's memory against the unrolled steps: XLA's memory analysis of one MTT iteration at
`syn_steps` 10, 20, 40, 80, with the checkpointed scan (`--remat`, the default) and with the plain unroll (what the
official code keeps: every step's graph).

python -m benchmarks.mtt [--ipc 10] [--steps 10,20,40,80] [--targets cpu,h100] [--subset-k 1] [--out FILE]
python -m benchmarks.mtt --tesla 1,5,10,20 [--width 32]    # TESLA's gradient against the exact one

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


def tesla_vs_exact(steps: int, width: int = 32, seed: int = 0) -> dict:
    """TESLA's image gradient against the exact one on a small case: ConvNet-3 of `width` on 10 CIFAR-shaped images
    (one per class) drawn from a normal, from a fresh network's parameters towards a target 1e-2 away (per
    parameter, a normal draw), lr 0.01, DSA on, all images per step. Returns the cosine of the two gradients, the
    norm of TESLA's relative to the exact one's, and the same for the lr's gradient."""
    import numpy as np
    from jax.flatten_util import ravel_pytree

    cfg = make_config("mtt", 1, "cpu", syn_steps=steps, width=width, zca=False, subset_k=1)
    m = make_method(cfg)
    keys = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(keys[0], (10, 32, 32, 3))
    y = jnp.arange(10)
    t0 = ravel_pytree(m.net.init(keys[1])[0])[0]
    tt = t0 + 1e-2 * jax.random.normal(keys[2], t0.shape)
    lr = jnp.float32(0.01)
    _, (gx, glr) = jax.jit(jax.value_and_grad(lambda x, lr: m.student_loss(x, y, lr, t0, tt, keys[3], 10),
                                              (0, 1)))(x, lr)
    _, (tx, tlr) = jax.jit(lambda x, lr: m.tesla_grads(x, y, lr, t0, tt, keys[3], 10))(x, lr)
    gx, tx = np.asarray(gx, np.float64).ravel(), np.asarray(tx, np.float64).ravel()
    return {"benchmark": "tesla_vs_exact", "syn_steps": steps, "width": width,
            "cosine": float(gx @ tx / (np.linalg.norm(gx) * np.linalg.norm(tx))),
            "relative_norm": float(np.linalg.norm(tx) / np.linalg.norm(gx)), "lr_grad_ratio": float(tlr / glr)}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--steps", default="10,20,40,80")
    p.add_argument("--targets", default="cpu,h100")
    p.add_argument("--subset-k", type=int, default=1)
    p.add_argument("--out", help="also append the JSON lines to this file")
    p.add_argument("--tesla", help="instead: TESLA against the exact gradient at these syn_steps (e.g. 1,5,10,20)")
    p.add_argument("--width", type=int, default=32, help="--tesla's ConvNet width")
    args = p.parse_args(argv)
    if args.tesla:
        rows = [tesla_vs_exact(n, args.width) for n in map(int, args.tesla.split(","))]
        for r in rows:
            emit(r, args.out)
        return rows
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
