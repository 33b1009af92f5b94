"""The time estimate against the card: every program measured on a GPU, compiled here for that GPU's target as it
was measured (method, shapes, class chunk, convolution form), the estimate's parts beside the measurement, and the
calibration (`sm_jax.aot.compile.Calibration`) fitted to them.

python -m benchmarks.calibrate [--measured benchmarks/results/gpu-h200-2026-12-04.jsonl] [--target h200]
                               [--out FILE.json] [--markdown]

The model: measured seconds = roofline x `roofline_factor` + kernels x `launch` + while-loop iterations x
`loop_trip` + FLOPs of grouped convolutions over image-sized windows / `grouped_rate`; `launch` a prior (--launch),
the three others fitted by non-negative least squares on the relative error. Prints one JSON line per program (its
features, the measurement, the estimate before, i.e. the uncalibrated one, and after) and the fit; `--markdown` the
table of docs/gpu.md. The measured programs:
- `benchmarks.step` lines: one outer matching step (`Compiler.step`) of that method, ipc, K, chunk and conv form;
- `benchmarks.evaluate` lines: the evaluation's training alone, one network per call (x models) and all networks
  vmapped in one call;
- a run's `results.json` line (`seconds_per_iteration`): the condensation iteration (`Compiler.iteration`), the
  median of the iterations after the first; its `eval_seconds` include the evaluation's compilation and are shown,
  not fitted.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

MEASURED = Path(__file__).parent / "results" / "gpu-h200-2026-12-04.jsonl"
UNCALIBRATED_LAUNCH = 4e-6  # the estimate before it met a card: 4 us per kernel, nothing else


def programs(record: dict, target: str) -> list[dict]:
    """The compiled programs of one measurement line, each {name, measured seconds, fit: bool, program}."""
    import jax

    from sm_jax.aot import Compiler, shape_dataset
    from sm_jax.aot import target as get_target
    from sm_jax.aot.compile import compile_program
    from sm_jax.config import make_config
    from sm_jax.evaluation import train_network
    from sm_jax.methods import make_method

    tgt = get_target(target)
    data = shape_dataset("cifar10")
    out = []
    cfg_rec = record.get("config", {})
    if "step_seconds_median" in record:
        c = cfg_rec
        cfg = make_config(c["method"], c["ipc"], "paper", subset_k=c["subset_k"], batch_real=c["batch_real"],
                          conv_impl=c["conv_impl"], precision=record.get("precision", "float32"),
                          width=c["width"], depth=c["depth"])
        prog = Compiler(cfg, tgt, data).step(c["class_chunk"])
        out.append({"name": f"step {c['method']} ipc {c['ipc']} K {c['subset_k']} chunk {c['class_chunk']} "
                            f"{c['conv_impl']}", "measured": record["step_seconds_median"], "fit": True,
                    "program": prog})
    elif "vmapped_model_epochs_per_second" in record:
        c = cfg_rec
        cfg = make_config(c["method"], c["ipc"], "paper", subset_k=1, conv_impl=c["conv_impl"], width=c["width"],
                          precision=record.get("precision", "float32"))
        comp = Compiler(cfg, tgt, data)
        m = make_method(comp.cfg, data.spec)
        proto = m.eval_protocol(c["epochs"], None)
        x = jax.ShapeDtypeStruct((c["images"], 32, 32, 3), np.float32)
        y = jax.ShapeDtypeStruct((c["images"],), np.int32)
        keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), c["models"]))
        key = jax.eval_shape(lambda: jax.random.key(0))
        net = m.eval_net(None)
        one = compile_program("train", lambda x, y, k: train_network(net, proto, x, y, k),
                              comp.abstract((x, y, key)), tgt, cfg.precision)
        many = compile_program("train x models", jax.vmap(lambda x, y, k: train_network(net, proto, x, y, k),
                                                          (None, None, 0)),
                               comp.abstract((x, y, keys)), tgt, cfg.precision)
        out.append({"name": f"evaluation training, 1 network, {c['epochs']} epochs, {c['conv_impl']}",
                    "measured": record["sequential_seconds"] / c["models"], "fit": True, "program": one})
        out.append({"name": f"evaluation training, {c['models']} networks vmapped, {c['epochs']} epochs, "
                            f"{c['conv_impl']}", "measured": record["vmapped_seconds"], "fit": True, "program": many})
    elif "seconds_per_iteration" in record:
        c = cfg_rec
        # the code measured (a2cf719) resolved `auto` to XLA's convolution on a GPU
        conv = "xla" if c["conv_impl"] == "auto" else c["conv_impl"]
        cfg = make_config(c["method"], c["ipc"], c.get("preset", "paper"), subset_k=c["subset_k"],
                          conv_impl=conv, eval_parallel=c["eval_parallel"],
                          precision=c.get("precision", "float32"))
        comp = Compiler(cfg, tgt, data)
        chunk = 0  # `auto` chose all classes on that card (gpu-h200.md)
        it = comp.iteration(chunk)
        out.append({"name": f"iteration {c['method']} ipc {c['ipc']} K {c['subset_k']} chunk 0 (a run, host "
                            "included)", "measured": statistics.median(record["seconds_per_iteration"][1:]),
                    "fit": True, "program": it})
        ev = comp.evaluation(c["eval_parallel"])
        out.append({"name": f"evaluation {c['method']} ipc {c['ipc']}, {c['eval_parallel']} networks x "
                            f"{record['eval_epochs']} epochs (compilation included)",
                    "measured": record["eval_seconds"], "fit": False, "program": ev})
    return out


def features(p) -> list[float]:
    c = p.hlo_cost
    return [c.seconds, c.loop_trips, c.grouped_flops]


def fit(rows: list[dict], launch: float):
    """Non-negative least squares of the relative error (each program's measurement counts alike) for the roofline
    factor, the loop trip and the grouped rate, at a given time per kernel: six measurements do not separate the
    kernels' count from the roofline (the programs with many kernels are also the long ones), so the launch is
    a prior (a CUDA launch and a small kernel's latency, a few microseconds), not a fit."""
    from scipy.optimize import nnls

    from sm_jax.aot.compile import Calibration

    use = [r for r in rows if r["fit"]]
    a = np.array([[f / r["measured"] for f in features(r["program"])] for r in use])
    b = np.array([1.0 - launch * r["program"].hlo_cost.kernels / r["measured"] for r in use])
    scale = a.max(0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(a / scale, b)
    factor, trip, inv_rate = (float(v) for v in coef / scale)
    return Calibration(launch=launch, roofline_factor=factor, loop_trip=trip,
                       grouped_rate=1.0 / inv_rate if inv_rate > 0 else None, source="fitted")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--measured", default=str(MEASURED), help="JSON lines measured on the card")
    p.add_argument("--target", default="h200")
    p.add_argument("--out", help="also write the rows and the fit as JSON")
    p.add_argument("--launch", type=float, default=UNCALIBRATED_LAUNCH, help="seconds per kernel (a prior)")
    p.add_argument("--markdown", action="store_true", help="print docs/gpu.md's table")
    args = p.parse_args(argv)
    from sm_jax.aot.compile import Calibration

    rows = []
    for line in Path(args.measured).read_text().splitlines():
        if line.strip():
            rows += programs(json.loads(line), args.target)
    cal = fit(rows, args.launch)
    before = Calibration(launch=UNCALIBRATED_LAUNCH)
    out = []
    for r in rows:
        prog = r["program"]
        s_before, s_after = prog.seconds(before)["estimate"], prog.seconds(cal)
        rec = {"program": r["name"], "fitted": r["fit"], "measured_s": r["measured"],
               "estimate_before_s": s_before, "estimate_s": s_after["estimate"],
               "error": s_after["estimate"] / r["measured"], "error_before": s_before / r["measured"],
               "parts_s": {k: v for k, v in s_after.items() if k not in ("estimate", "tpu_compiler")},
               "kernels": prog.hlo_cost.kernels, "loop_trips": prog.hlo_cost.loop_trips,
               "grouped_gflop": prog.hlo_cost.grouped_flops / 1e9, "gflop": prog.hlo_cost.flops / 1e9}
        out.append(rec)
        print(json.dumps(rec), flush=True)
    result = {"target": args.target, "calibration": {"roofline_factor": cal.roofline_factor, "launch": cal.launch,
                                                     "loop_trip": cal.loop_trip, "grouped_rate": cal.grouped_rate},
              "rows": out}
    print(json.dumps(result["calibration"]), flush=True)
    if args.markdown:
        print(markdown(out), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


def markdown(rows: list[dict]) -> str:
    lines = ["| program | measured s | estimate before s (ratio) | estimate s (ratio) | kernels | loop trips | "
             "grouped GFLOP |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = "" if r["fitted"] else " (not fitted)"
        lines.append(f"| {r['program']}{mark} | {r['measured_s']:.4g} | {r['estimate_before_s']:.4g} "
                     f"({r['error_before']:.2f}) | {r['estimate_s']:.4g} ({r['error']:.2f}) | {r['kernels']} | "
                     f"{r['loop_trips']} | {r['grouped_gflop']:.3g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
