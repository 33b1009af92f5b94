"""Memory against dataset size with the real data on the device and on the host (`--data-on`), and the iteration's
time on both paths.

python -m benchmarks.host_data [--per-class 100,1000,5000] [--side 64] [--classes 10] [--method dm]
                               [--repeats 5] [--out FILE]

Sizes: generated uint8 training splits of `classes` x N images of side x side x 3, written as the store's .npy and
memory-mapped, as a cached dataset is. For each (N, path), a fresh process (`sys.executable`) builds the method's
cpu-preset context, compiles one iteration and runs `--repeats` of them, and reports its peak resident memory
(`ru_maxrss`) and the compiled program's device bytes (XLA's memory analysis: arguments + outputs + temporaries).
Time: the CIFAR-10-shaped cpu-preset DC ipc 10 iteration on both paths, side by side in one process, the median of
`--repeats` after one warm-up each, alternating. One JSON line per measurement (to --out too); a table at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _split(path: Path, classes: int, per_class: int, side: int) -> Path:
    """A generated training split as the store's .npy (class by class, random pixels; content does not matter)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(classes * per_class, side, side, 3))
    rng = np.random.default_rng(0)
    for c in range(classes):
        out[c * per_class:(c + 1) * per_class] = rng.integers(0, 256, (per_class, side, side, 3), dtype=np.uint8)
    out.flush()
    return path


def _dataset(path: Path, classes: int):
    from sm_jax.data import Dataset

    x = np.load(path, mmap_mode="r")
    y = np.repeat(np.arange(classes), len(x) // classes).astype(np.int32)
    return Dataset(x, y, np.asarray(x[:classes]), np.arange(classes, dtype=np.int32),
                   tuple(f"c{c}" for c in range(classes)), "generated", (0.5,) * 3, (0.25,) * 3, "folder")


def child(path: str, classes: int, method: str, where: str, repeats: int) -> dict:
    """In a fresh process: one compiled iteration on `where`, its program bytes and this process's peak RSS."""
    import jax

    from sm_jax.backend import program_bytes
    from sm_jax.config import make_config
    from sm_jax.methods import make_context, make_method

    data = _dataset(Path(path), classes)
    cfg = make_config(method, 1, "cpu", "folder", data_on=where, subset_k=1)
    m = make_method(cfg, data.spec)
    ctx = make_context(cfg, data)
    key = jax.random.key(0)
    state = m.init_state(m.init_images(data, key))
    compiled = jax.jit(m.iteration, donate_argnums=0).lower(state, ctx, key).compile()
    for i in range(repeats):
        state, metrics = compiled(state, ctx, jax.random.fold_in(key, i))
    jax.block_until_ready(state)
    return {"program_bytes": int(program_bytes(compiled)),
            "argument_bytes": int(compiled.memory_analysis().argument_size_in_bytes),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def timing(repeats: int) -> dict:
    """Seconds per CIFAR-10-shaped cpu-preset DC ipc 10 iteration, device and host paths alternating."""
    import jax

    from sm_jax.config import make_config
    from sm_jax.methods import make_context, make_method

    with tempfile.TemporaryDirectory() as d:
        data = _dataset(_split(Path(d) / "x.npy", 10, 5000, 32), 10)
        runs = {}
        for where in ("device", "host"):
            cfg = make_config("dc", 10, "cpu", "folder", data_on=where)
            m = make_method(cfg, data.spec)
            ctx = make_context(cfg, data)
            key = jax.random.key(0)
            state = m.init_state(m.init_images(data, key))
            step = jax.jit(m.iteration)
            jax.block_until_ready(step(state, ctx, key))  # compile and warm up
            runs[where] = (step, state, ctx, key)
        times = {"device": [], "host": []}
        for i in range(repeats):
            for where, (step, state, ctx, key) in runs.items():
                t0 = time.perf_counter()
                jax.block_until_ready(step(state, ctx, jax.random.fold_in(key, i)))
                times[where].append(time.perf_counter() - t0)
    med = {w: statistics.median(t) for w, t in times.items()}
    return {"what": "dc ipc10 cpu-preset iteration, CIFAR-10 shapes", "device_s": med["device"],
            "host_s": med["host"], "host_over_device": med["host"] / med["device"], "repeats": repeats,
            "all_s": times}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", default="100,1000,5000")
    p.add_argument("--side", type=int, default=64)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--method", default="dm")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--out", help="also append the JSON lines to this file")
    p.add_argument("--child", nargs=3, metavar=("PATH", "WHERE", "REPEATS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        path, where, repeats = args.child
        print(json.dumps(child(path, args.classes, args.method, where, int(repeats))))
        return []
    rows = []

    def emit(row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")

    with tempfile.TemporaryDirectory() as d:
        for n in map(int, args.per_class.split(",")):
            path = _split(Path(d) / f"x{n}.npy", args.classes, n, args.side)
            for where in ("device", "host"):
                out = subprocess.run([sys.executable, "-m", "benchmarks.host_data", "--child", str(path), where,
                                      str(args.repeats), "--classes", str(args.classes), "--method", args.method],
                                     capture_output=True, text=True, check=True,
                                     env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")})
                emit({"per_class": n, "classes": args.classes, "side": args.side, "method": args.method,
                      "data_on": where, "split_bytes": args.classes * n * args.side ** 2 * 3,
                      **json.loads(out.stdout.strip().splitlines()[-1])})
    if not args.no_timing:
        emit(timing(args.repeats))
    print("\n| images per class | split | path | peak RSS | program bytes (of which arguments) |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "per_class" in r:
            print(f"| {r['per_class']} | {r['split_bytes'] / 2**20:.0f} MiB | {r['data_on']} | "
                  f"{r['peak_rss_bytes'] / 2**20:.0f} MiB | {r['program_bytes'] / 2**20:.1f} MiB "
                  f"({r['argument_bytes'] / 2**20:.1f}) |")
    return rows


if __name__ == "__main__":
    main()
