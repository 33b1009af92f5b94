"""Several processes on one global problem: the iteration time of 1, 2 and 4 processes (one CPU device each, gloo
collectives) and the bytes that cross devices per iteration, read from XLA's compiled program.

python -m benchmarks.processes [--classes 10 100] [--processes 1 2 4] [--method idc] [--ipc 1] [--repeats 3]
                               [--out benchmarks/results/processes_cpu.jsonl]
python -m benchmarks.processes --bytes-only --method idc --ipc 50 --classes 100 --devices 4 16 64
       (compiles the program for N devices in one process, runs nothing: the collectives of a paper-sized problem)
python -m benchmarks.processes --estimate benchmarks/results/processes_cpu.jsonl
       (the estimate for 1, 4 and 16 hosts from those records and benchmarks/results/cpu.jsonl; see `estimate`)

Each configuration prints one JSON line: `iteration_seconds_median`, `compile_seconds`, `collective_bytes` (per
device per iteration, by kind), `collectives` (count per iteration). Random uint8 images stand in for the data (the
cost does not depend on the pixel values).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from sm_jax.aot.hlo import collectives


def problem(method: str, ipc: int, classes: int, per_class: int, subset_k: int, width: int, preset: str):
    from sm_jax.config import make_config
    from sm_jax.data import Dataset

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), per_class).astype(np.int32)
    x = rng.integers(0, 256, (len(y), 32, 32, 3), dtype=np.uint8)
    data = Dataset(x, y, x[:classes], y[:classes], tuple(str(c) for c in range(classes)), "random")
    cfg = make_config(method, ipc, preset, "cifar100" if classes == 100 else "cifar10", subset_k=subset_k,
                      width=width, class_chunk=0, devices=0)
    return cfg, data


def measure(args) -> dict:
    """This process's part of one configuration (every process calls it; process 0 returns the record)."""
    import jax

    from sm_jax import distributed
    from sm_jax.methods import make_context, make_method, make_partitions
    from sm_jax.sharding import make_mesh, place_state, put

    cfg, data = problem(args.method, args.ipc, args.classes[0], args.per_class, args.subset_k, args.width, args.preset)
    cfg = cfg.replace(batch_real=args.batch_real or cfg.batch_real, outer_loop=args.outer_loop or cfg.outer_loop)
    mesh = make_mesh(0)
    method = make_method(cfg, data.spec, mesh)
    key = jax.random.key(0)
    state = method.init_state(method.init_images(data, jax.random.fold_in(key, 1)))
    partitions = make_partitions(cfg, data.class_indices())
    state, placement = place_state(state, mesh, method.class_axis(state))
    ctx = put(make_context(cfg, data, partitions), mesh, False)
    step = jax.jit(method.iteration, donate_argnums=0, out_shardings=placement)
    t0 = time.perf_counter()
    compiled = step.lower(state, ctx, key).compile()
    compile_seconds = time.perf_counter() - t0
    coll = collectives(compiled.as_text()) if mesh is not None else {}
    times = []
    for i in range(0 if args.bytes_only else args.repeats + 1):  # the first run is a warm-up
        t0 = time.perf_counter()
        state, metrics = compiled(state, ctx, jax.random.fold_in(key, i))
        jax.block_until_ready(metrics)
        distributed.agree_max(0)  # every process finished the iteration
        times.append(time.perf_counter() - t0)
    return {"method": cfg.method, "ipc": cfg.ipc, "classes": data.num_classes, "subset_k": cfg.subset_k,
            "batch_real": cfg.batch_real, "outer_loop": cfg.outer_loop, "inner_loop": cfg.inner_loop,
            "width": cfg.width, "processes": jax.process_count(), "devices": len(jax.devices()),
            "iteration_seconds_median": float(np.median(times[1:])) if len(times) > 1 else None,
            "compile_seconds": compile_seconds,
            "collectives": {k: v[0] for k, v in coll.items()},
            "collective_bytes": {k: v[1] for k, v in coll.items()},
            "collective_bytes_total": int(sum(v[1] for v in coll.values()))}


def estimate(bytes_records: list[dict], step_record: dict, hosts=(1, 4, 16), devices_per_host: int = 4,
             bandwidth: float = 25e9, latency: float = 30e-6) -> list[dict]:
    """A paper-style estimate of one matching step on `hosts` hosts of `devices_per_host` devices.

    compute = (seconds per class of `step_record`, a benchmarks.step measurement on one device) x the classes each
    device holds (ceil(classes / devices): the class axis is what is split); communication = the collective bytes
    of the compiled program for that many devices / `bandwidth` + its number of collectives x `latency`, every
    collective taken as crossing hosts (the slowest link), none overlapped with compute.
    """
    per_class = step_record["step_seconds_median"] / step_record["config"]["classes"]
    out = []
    for h in hosts:
        d = h * devices_per_host
        rec = next(r for r in bytes_records if r["devices"] == d)
        compute = per_class * -(-rec["classes"] // d)
        comm = rec["collective_bytes_total"] / bandwidth + sum(rec["collectives"].values()) * latency
        out.append({"hosts": h, "devices": d, "classes_per_device": -(-rec["classes"] // d),
                    "compute_seconds": compute, "communication_seconds": comm, "step_seconds": compute + comm,
                    "collective_bytes": rec["collective_bytes_total"], "collectives": sum(rec["collectives"].values()),
                    "one_device_seconds": per_class * rec["classes"]})
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="idc")
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--subset-k", type=int, default=2)
    p.add_argument("--preset", default="cpu", help="the budget preset (paper: the paper's outer and inner loops)")
    p.add_argument("--batch-real", type=int, default=8, help="real images per class and term (0 = the preset's)")
    p.add_argument("--outer-loop", type=int, default=2, help="matching steps per iteration (0 = the preset's)")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--per-class", type=int, default=40, help="random real images per class")
    p.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bytes-only", action="store_true", help="compile for --devices in one process; run nothing")
    p.add_argument("--devices", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--out", help="append each JSON line to this file")
    p.add_argument("--estimate", metavar="JSONL", help="print the multi-host estimate from the --bytes-only records "
                   "of this file (IDC ipc 50, 100 classes) and the IDC ipc 50 K 2 step of benchmarks/results/cpu.jsonl")
    p.add_argument("--worker", nargs=3, type=int, metavar=("PORT", "PROCESSES", "ID"), help=argparse.SUPPRESS)
    return p


def _worker(args) -> None:
    from sm_jax import distributed

    port, n, i = args.worker
    if n > 1:
        distributed.initialize(distributed.Processes(f"127.0.0.1:{port}", n, i, peer_timeout=120))
    rec = measure(args)
    if i == 0:
        print(json.dumps(rec), flush=True)


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    if args.worker:
        return _worker(args)
    if args.estimate:
        recs = [json.loads(ln) for ln in open(args.estimate) if ln.strip()]
        recs = [r for r in recs if r["iteration_seconds_median"] is None and r["classes"] == 100 and r["ipc"] == 50]
        step = next(json.loads(ln) for ln in open("benchmarks/results/cpu.jsonl")
                    if '"idc"' in ln and json.loads(ln)["config"]["ipc"] == 50
                    and json.loads(ln)["config"]["subset_k"] == 2)
        for row in estimate(recs, step):
            print(json.dumps(row))
        return None
    from sm_jax.launch import free_port, process_env

    base = [a for a in (argv if argv is not None else sys.argv[1:])]
    plan = ([(c, 1, d) for c in args.classes for d in args.devices] if args.bytes_only
            else [(c, p, 1) for c in args.classes for p in args.processes])
    for classes, processes, devices in plan:
        port = free_port()
        flags = [*_strip(base), "--classes", str(classes)]
        procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.processes", *flags, "--worker", str(port),
                                   str(processes), str(i)], env=process_env(devices), stdout=subprocess.PIPE,
                                  text=True) for i in range(processes)]
        out = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            raise SystemExit(f"classes {classes}, {processes} processes x {devices} devices failed")
        line = out[0].strip().splitlines()[-1]
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")


def _strip(argv: list[str]) -> list[str]:
    """argv without --classes/--processes/--devices/--out and their values (the driver sets them per run)."""
    out, skip = [], False
    for a in argv:
        if a in ("--classes", "--processes", "--devices", "--out"):
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out


if __name__ == "__main__":
    main()
