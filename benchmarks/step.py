"""Times one outer condensation step (matching of all classes and subsets + the image update) after compilation.

python -m benchmarks.step --method dc --ipc 10 [--batch-real 128] [--subset-k 1] [--repeats 5] [--data-dir PATH]
                          [--compare] [--conv-impl auto|fast|patches|winograd|xla] [--class-chunk auto|C]
                          [--syn-chunk auto|fused|C]
                          [--precision float32|tensorfloat32] [--torch-device cpu|cuda]
                          [--classes 10] [--per-class 5000] [--width 128] [--depth 3]   (the last four: smoke shapes)
                          [--plan-for TARGET]   (the step's estimate on a GPU or TPU that is not here: a prediction)

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

from sm_jax.aot import hlo
from sm_jax.aot.compile import estimate_seconds
from sm_jax.backend import AUTO_CHUNK, device_peak_bytes, precision, program_bytes
from sm_jax.cli.common import class_chunk, syn_chunk
from sm_jax.config import make_config
from sm_jax.data import Dataset, load_dataset
from sm_jax.experiment import resolve_class_form
from sm_jax.methods import make_context, make_method


def synthetic_cifar(n_per_class: int = 5000, classes: int = 10) -> Dataset:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), n_per_class).astype(np.int32)
    x = rng.integers(0, 256, (len(y), 32, 32, 3), dtype=np.uint8)
    return Dataset(x, y, x[:100], y[:100], tuple(str(c) for c in range(classes)), "random")


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    if args.plan_for:
        return plan(args)
    with precision(args.precision):
        return measure(args)


def config(args):
    return make_config(args.method, args.ipc, "paper", subset_k=args.subset_k, batch_real=args.batch_real,
                       class_chunk=args.class_chunk, syn_chunk=args.syn_chunk, conv_impl=args.conv_impl,
                       precision=args.precision,
                       width=args.width, depth=args.depth)


def plan(args) -> dict:
    """The step this command would time, compiled for a target that is not here: its estimate (sm_jax.aot's,
    calibrated), memory and kernels, as one JSON line (a prediction, not a measurement)."""
    from sm_jax.aot import Compiler, target
    from sm_jax.cli.common import guard

    def compile_step():
        cfg = config(args)
        tgt = target(args.plan_for)
        small = synthetic_cifar(1, args.classes)  # shapes only: the real batches come from --per-class rows
        data = Dataset(np.broadcast_to(small.train_x[:1], (args.per_class * args.classes, *small.train_x.shape[1:])),
                       np.repeat(np.arange(args.classes), args.per_class).astype(np.int32), small.test_x,
                       small.test_y, small.class_names, "shapes")
        comp = Compiler(cfg, tgt, data)
        chunk = comp.class_chunk(log=lambda line: print(line, file=sys.stderr))
        return cfg, tgt, comp, chunk, comp.step(chunk)

    cfg, tgt, comp, chunk, prog = guard(compile_step)
    s = prog.seconds()
    out = {"target": tgt.name, "estimated_step_seconds": s["estimate"], "estimate_parts": s,
           "predicted_device_mb": prog.bytes / 2**20 if prog.bytes is not None else None,
           "flops_per_step": prog.hlo_cost.flops, "kernels": hlo.census(prog.text),
           "compile_seconds": prog.compile_seconds, "prediction": True,
           "config": {"method": cfg.method, "ipc": cfg.ipc, "batch_real": cfg.batch_real, "subset_k": cfg.subset_k,
                      "subset_batch_real": cfg.subset_real, "classes": args.classes,
                      "conv_impl": comp.method(chunk).net.module.conv_impl, "class_chunk": chunk,
                      "syn_chunk": comp.syn_chunk, "width": cfg.width,
                      "depth": cfg.depth}}
    print(json.dumps(out))
    return out


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
    p.add_argument("--syn-chunk", type=syn_chunk, default=AUTO_CHUNK,
                   help="classes per program of the synthetic side (fused: with the real side; auto: as a run "
                   "chooses, sm_jax.backend.resolve_syn_chunk)")
    p.add_argument("--precision", default="float32", help="float32 or tensorfloat32 (GPU), for both frameworks")
    p.add_argument("--torch-device", default="cpu", help="the PyTorch baseline's device: cpu or cuda")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=5000, help="random real images per class")
    p.add_argument("--width", type=int, default=128, help="ConvNet width (128 = the papers')")
    p.add_argument("--depth", type=int, default=3, help="ConvNet depth (3 = the papers')")
    p.add_argument("--plan-for", metavar="TARGET", help="print the estimate of this step on a target that is not here "
                   "(sm_jax.aot.TARGETS) instead of timing it")
    p.add_argument("--conv-impl", default="auto", help="the convolution form: auto (default) or a name of "
                   "models.CONVS (xla: the GPU form before xla_gemm)")
    return p


def measure(args) -> dict:
    cfg = config(args)
    torch_out = None
    if args.compare:  # first, so that JAX's buffers do not crowd the baseline
        cmd = [sys.executable, "-m", "benchmarks.torch_step", "--method", cfg.method, "--ipc", str(cfg.ipc),
               "--batch-real", str(cfg.batch_real), "--subset-k", str(cfg.subset_k),
               "--subset-batch-real", str(cfg.subset_real), "--lr-img", str(cfg.lr_img), "--repeats", str(args.repeats),
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
    # `auto` chunk and form as a run resolves them (on an accelerator: the candidates' iteration programs weighed)
    method, _ = resolve_class_form(cfg, data.spec, None, state, ctx, key,
                                   log=lambda line: print(line, file=sys.stderr))
    params, _ = method.net.init(key)
    step = jax.jit(lambda im, os_, p_, k: method.matching_step(im, os_, p_, ctx, k, 0.5), donate_argnums=(0, 1))
    t0 = time.perf_counter()
    compiled = step.lower(state.images, state.opt_state, params, key).compile()
    compile_s = time.perf_counter() - t0
    peak_after_compile = device_peak_bytes()  # compilation's autotuning allocates too
    predicted = program_bytes(compiled)
    # the flops of the program itself, loop bodies through their trip counts (sm_jax.aot.hlo): XLA's own cost
    # analysis counts a loop body once, and on a GPU it undercounts convolutions by far (16.5 GFLOP for DC ipc 10
    # against the 752 the kernels execute)
    text = compiled.as_text()
    kernels = hlo.census(text)
    flops = hlo.Module(text).cost().flops
    estimate = estimate_seconds(compiled)
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
           "estimated_seconds": estimate, "kernels": kernels,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "predicted_device_mb": predicted / 2**20 if predicted is not None else None,
           "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
           "precision": cfg.precision,
           "config": {"method": cfg.method, "ipc": cfg.ipc, "batch_real": cfg.batch_real, "subset_k": cfg.subset_k,
                      "subset_batch_real": cfg.subset_real, "classes": data.num_classes,
                      "conv_impl": method.net.module.conv_impl, "class_chunk": method.class_chunk,
                      "syn_chunk": method.syn_chunk, "width": cfg.width,
                      "depth": cfg.depth}}
    peak = device_peak_bytes()
    if peak is not None:
        out["peak_device_mb"] = peak / 2**20
        out["peak_device_mb_after_compile"] = peak_after_compile / 2**20
    if torch_out is not None:
        out["torch"] = torch_out
        out["torch_seconds_over_jax_seconds"] = torch_out["step_seconds_median"] / med
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
