"""Predicted device memory of the paper configurations: XLA's memory analysis of one compiled condensation iteration.

python -m benchmarks.memory [--methods dc,dsa,idc] [--ipcs 1,10,50] [--ks 1,2] [--chunks 0,1] [--conv-impl xla]
                            [--classes 10] [--per-class 5000] [--out FILE]

Prints (and appends to --out) one JSON line per (method, ipc, K, class chunk): the bytes of the iteration program
at the `paper` preset (arguments, including the training set held on the device, + outputs + temporaries -
donated buffers), as `backend.program_bytes` computes it and `--class-chunk auto` uses it. Compiling needs no
device, so this runs on CPU; `--conv-impl xla` (the default) compiles the form GPUs run, but XLA:CPU's fusion and
buffer assignment differ from XLA:GPU's (and cuDNN adds workspaces), so the figures are estimates: benchmarks/gpu.sh
prints the GPU's own analysis next to the measured peak for comparison.
"""
from __future__ import annotations

import argparse
import time

import jax

from benchmarks.aot import emit, k_divides
from benchmarks.step import synthetic_cifar
from sm_jax.backend import program_bytes
from sm_jax.config import make_config
from sm_jax.methods import make_context, make_method


def predict(method: str, ipc: int, k: int, chunk: int, data, conv_impl: str = "xla") -> dict:
    """The predicted bytes of one paper-preset iteration of (method, ipc, K) with `chunk` classes per program."""
    cfg = make_config(method, ipc, "paper", subset_k=k, class_chunk=chunk, conv_impl=conv_impl)
    m = make_method(cfg, data.spec)
    ctx = make_context(cfg, data)
    key = jax.random.key(0)
    state = m.init_state(m.init_images(data, key))
    t0 = time.perf_counter()
    compiled = jax.jit(m.iteration, donate_argnums=0).lower(state, ctx, key).compile()
    analysis = compiled.memory_analysis()
    return {"method": method, "ipc": ipc, "subset_k": k, "class_chunk": chunk, "classes": data.num_classes,
            "conv_impl": m.net.module.conv_impl, "predicted_bytes": program_bytes(compiled),
            "argument_bytes": analysis.argument_size_in_bytes, "temp_bytes": analysis.temp_size_in_bytes,
            "compile_seconds": time.perf_counter() - t0, "backend": jax.default_backend()}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="dc,dsa,idc")
    p.add_argument("--ipcs", default="1,10,50")
    p.add_argument("--ks", default="1,2")
    p.add_argument("--chunks", default="0,1", help="class chunks (0 = all classes in one program)")
    p.add_argument("--conv-impl", default="xla")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=5000)
    p.add_argument("--out", help="also append the JSON lines to this file")
    args = p.parse_args(argv)
    data = synthetic_cifar(args.per_class, args.classes)
    rows = []
    for method in args.methods.split(","):
        for ipc in map(int, args.ipcs.split(",")):
            for k in map(int, args.ks.split(",")):
                if not k_divides(method, ipc, k):
                    continue
                for chunk in map(int, args.chunks.split(",")):
                    row = predict(method, ipc, k, chunk, data, args.conv_impl)
                    rows.append(row)
                    emit(row, args.out)
    return rows


if __name__ == "__main__":
    main()
