"""Times one outer condensation step (matching of all classes and subsets + the image update) after compilation.

python -m benchmarks.step --method dc --ipc 10 [--batch-real 128] [--subset-k 1] [--repeats 5] [--data-dir PATH]
                          [--compare] [--conv-impl auto|fast|patches|winograd|xla] [--class-chunk auto|C]
                          [--precision float32|tensorfloat32] [--torch-device cpu|cuda]
                          [--classes 10] [--per-class 5000] [--width 128] [--depth 3]   (the last four: smoke shapes)

Prints one JSON line. --compare also runs the PyTorch baseline (benchmarks/torch_step.py, in a subprocess so the
two never share a thread pool) on the same config and adds its timing and `torch_seconds_over_jax_seconds`.
Random uint8 images stand in for CIFAR-10 unless --data-dir is given (the step's cost
does not depend on the pixel values).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import jax
import numpy as np

from sm_jax.backend import precision, program_bytes
from sm_jax.cli.common import class_chunk
from sm_jax.config import make_config
from sm_jax.data import Dataset, load_dataset
from sm_jax.methods import make_context, make_method


def synthetic_cifar(n_per_class: int = 5000, classes: int = 10) -> Dataset:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), n_per_class).astype(np.int32)
    x = rng.integers(0, 256, (len(y), 32, 32, 3), dtype=np.uint8)
    return Dataset(x, y, x[:100], y[:100], tuple(str(c) for c in range(classes)), "random")


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    with precision(args.precision):
        return measure(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="dc")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--batch-real", type=int)
    p.add_argument("--subset-k", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--data-dir")
    p.add_argument("--compare", action="store_true", help="also time the PyTorch baseline and print the ratio")
    p.add_argument("--class-chunk", type=class_chunk, default=0,
                   help="classes per vmapped program (0 = all, the default; auto = as a run chooses)")
    p.add_argument("--precision", default="float32", help="float32 or tensorfloat32 (GPU), for both frameworks")
    p.add_argument("--torch-device", default="cpu", help="the PyTorch baseline's device: cpu or cuda")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=5000, help="random real images per class")
    p.add_argument("--width", type=int, default=128, help="ConvNet width (128 = the papers')")
    p.add_argument("--depth", type=int, default=3, help="ConvNet depth (3 = the papers')")
    p.add_argument("--conv-impl", default="auto", help="ConvNet convolution: auto (default), fast, patches, "
                   "winograd or xla")
    return p


def measure(args) -> dict:
    cfg = make_config(args.method, args.ipc, "paper", subset_k=args.subset_k, batch_real=args.batch_real,
                      class_chunk=args.class_chunk, conv_impl=args.conv_impl, precision=args.precision,
                      width=args.width, depth=args.depth)
    torch_out = None
    if args.compare:  # first, so that JAX's buffers do not crowd the baseline
        cmd = [sys.executable, "-m", "benchmarks.torch_step", "--method", cfg.method, "--ipc", str(cfg.ipc),
               "--batch-real", str(cfg.batch_real), "--subset-k", str(cfg.subset_k),
               "--subset-batch-real", str(cfg.subset_real), "--repeats", str(args.repeats),
               "--device", args.torch_device, "--precision", cfg.precision, "--classes", str(args.classes),
               "--per-class", str(args.per_class), "--width", str(cfg.width), "--depth", str(cfg.depth)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            sys.exit(f"error: the PyTorch baseline failed (pip install -e '.[torch]'?): "
                     f"{(res.stderr.strip().splitlines() or ['?'])[-1]}")
        torch_out = json.loads(res.stdout.strip().splitlines()[-1])
    data = load_dataset("cifar10", args.data_dir) if args.data_dir else synthetic_cifar(args.per_class, args.classes)
    method = make_method(cfg, data.spec)
    ctx = make_context(cfg, data)
    key = jax.random.key(0)
    state = method.init_state(method.init_images(data, key))
    params, _ = method.net.init(key)
    step = jax.jit(lambda im, os_, p_, k: method.matching_step(im, os_, p_, ctx, k, 0.5), donate_argnums=(0, 1))
    t0 = time.perf_counter()
    compiled = step.lower(state.images, state.opt_state, params, key).compile()
    compile_s = time.perf_counter() - t0
    predicted = program_bytes(compiled)
    flops_compiled = compiled
    if method.class_chunk:  # XLA counts a loop body once: count the flops on the all-classes program (same math)
        full = make_method(cfg.replace(class_chunk=0), data.spec)
        flops_compiled = jax.jit(lambda im, os_, p_, k: full.matching_step(im, os_, p_, ctx, k, 0.5)).lower(
            state.images, state.opt_state, params, key).compile()
    cost = flops_compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    del flops_compiled
    images, opt_state = state.images, state.opt_state
    images, opt_state, m = compiled(images, opt_state, params, key)  # warm-up
    jax.block_until_ready(images)
    times = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        images, opt_state, m = compiled(images, opt_state, params, jax.random.fold_in(key, r))
        jax.block_until_ready(images)
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    out = {"step_seconds_median": med, "step_seconds_min": float(min(times)), "compile_seconds": compile_s,
           "flops_per_step": flops, "gflops_per_second": flops / med / 1e9 if flops else None,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "predicted_device_mb": predicted / 2**20 if predicted is not None else None,
           "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
           "precision": cfg.precision,
           "config": {"method": cfg.method, "ipc": cfg.ipc, "batch_real": cfg.batch_real, "subset_k": cfg.subset_k,
                      "subset_batch_real": cfg.subset_real, "classes": data.num_classes,
                      "conv_impl": method.net.module.conv_impl, "class_chunk": method.class_chunk, "width": cfg.width,
                      "depth": cfg.depth}}
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        out["peak_device_mb"] = stats["peak_bytes_in_use"] / 2**20
    if torch_out is not None:
        out["torch"] = torch_out
        out["torch_seconds_over_jax_seconds"] = torch_out["step_seconds_median"] / med
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
