"""Evaluation throughput: N networks trained on a synthetic set one after another vs vmapped in one program.

python -m benchmarks.evaluate --method dc --ipc 10 [--models 10] [--epochs 20] [--precision float32]
    [--width 128] [--depth 3]   (smaller for smoke runs)
    [--arch resnet18bn]   (any name of the model zoo, or a comma-separated list / pool letter: one line each)
    [--conv-impl auto,patches]   (the convolution forms, models.CONVS: one line each, side by side)

Prints one JSON line with model-epochs per second for both forms, their ratio (vmapped / sequential), and the
flops of one model-epoch (XLA's cost analysis) with the GFLOP/s each form reaches.
Only the training on the synthetic set is timed (the test-set pass is the same work either way).
"""
from __future__ import annotations

import argparse
import json
import time

import jax

from sm_jax.backend import precision
from sm_jax.config import make_config
from sm_jax.evaluation import train_network
from sm_jax.methods import make_method


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="dc")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--models", type=int, default=10)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--precision", default="float32", help="float32 or tensorfloat32 (GPU)")
    p.add_argument("--width", type=int, default=128, help="ConvNet width (128 = the papers'; smaller for smoke runs)")
    p.add_argument("--depth", type=int, default=3, help="ConvNet depth (3 = the papers'; 1 for smoke runs)")
    p.add_argument("--arch", default="convnet", help="architecture(s) trained: names of models.ARCHS or pools "
                   "(M, B, W, D, A, P, N), comma-separated; one JSON line each")
    p.add_argument("--conv-impl", default="auto", help="the convolution form(s) (auto or names of models.CONVS), "
                   "comma-separated; MLP has none")
    args = p.parse_args(argv)
    from sm_jax.models import arch_names, resolve_conv

    forms = args.conv_impl.split(",")
    try:
        for form in forms:
            resolve_conv(form)
        archs = arch_names(args.arch)
    except ValueError as e:
        p.error(str(e))
    out = None
    with precision(args.precision):
        for arch in archs:
            for form in forms:
                out = measure(args, arch, form)
    return out


def measure(args, arch: str, conv_impl: str = "auto") -> dict:
    cfg = make_config(args.method, args.ipc, "paper", subset_k=1, precision=args.precision, width=args.width,
                      depth=args.depth, conv_impl=conv_impl)
    method = make_method(cfg)
    net, net_many = method.eval_net(arch), method.eval_net(arch, args.models)  # `auto`: each form's own conv
    proto = method.eval_protocol(args.epochs, arch)
    n = cfg.syn_per_class * 10
    x = jax.random.normal(jax.random.key(0), (n, 32, 32, 3))
    y = jax.numpy.repeat(jax.numpy.arange(10), cfg.syn_per_class)

    def train(key, net=net):
        return train_network(net, proto, x, y, key)

    keys = jax.random.split(jax.random.key(1), args.models)
    one = jax.jit(train)
    many = jax.jit(jax.vmap(lambda k: train(k, net_many)))
    jax.block_until_ready(one(keys[0]))  # compile both before timing
    jax.block_until_ready(many(keys))
    t0 = time.perf_counter()
    for k in keys:
        jax.block_until_ready(one(k))
    seq = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(many(keys))
    vm = time.perf_counter() - t0
    work = args.models * args.epochs
    # XLA counts a loop body once, so the flops of one epoch are those of a one-epoch program
    cost = jax.jit(lambda k: train_network(net, method.eval_protocol(1, arch), x, y, k)).lower(keys[0]).compile()
    cost = cost.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    out = {"sequential_model_epochs_per_second": work / seq, "vmapped_model_epochs_per_second": work / vm,
           "vmapped_over_sequential": seq / vm, "sequential_seconds": seq, "vmapped_seconds": vm,
           "flops_per_model_epoch": flops, "sequential_gflops_per_second": flops * work / seq / 1e9,
           "vmapped_gflops_per_second": flops * work / vm / 1e9,
           "device": str(jax.devices()[0].device_kind), "precision": cfg.precision,
           "config": {"method": cfg.method, "ipc": cfg.ipc, "images": n, "batch": proto.batch, "models": args.models,
                      "epochs": args.epochs, "conv_impl": getattr(net.module, "conv_impl", "xla"),
                      "conv_impl_vmapped": getattr(net_many.module, "conv_impl", "xla"),
                      "width": cfg.width, "arch": arch, "params": net.num_params(), "conv_form": conv_impl}}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
