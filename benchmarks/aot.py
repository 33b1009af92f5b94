"""The paper's configurations compiled for GPU and TPU targets that are not here: device bytes, the class chunk
`--class-chunk auto` picks there, flops, bytes, the estimated time of an iteration, of an evaluation and of a run.

python -m benchmarks.aot --target NAME [--chips N] [--methods dc,dsa,idc,dm] [--ipcs 10,50] [--ks 1,2]
                         [--no-eval] [--preset paper|cpu] [--class-chunk auto|C] [--eval-parallel N]
                         [--conv-impl auto|xla|...] [--out FILE]
python -m benchmarks.aot --report FILE [FILE ...]     (the docs/gpu.md tables from such lines)

Each configuration prints one JSON line (and appends it to --out): the `paper`-preset condensation iteration and
evaluation program (--eval-parallel networks per call; auto as a run picks) compiled by the target's own compiler
through the code a run uses (sm_jax.aot), or the error. The configurations: Table 1 of the paper (DC and DSA at
ipc 10 and 50, IDC at ipc 1, 10 and 50; K 1 and 2) and DM at ipc 10 and 50; `--methods/--ipcs/--ks` select among
them. Targets: sm_jax.aot.TARGETS (`--chips` picks a target's several-chip form).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

from sm_jax.backend import AUTO_CHUNK, AUTO_PARALLEL, FUSED
from sm_jax.cli.common import class_chunk, eval_parallel

TABLE1 = {"dc": (10, 50), "dsa": (10, 50), "idc": (1, 10, 50), "dm": (10, 50)}
SEEDS = 3  # Table 1: every cell the mean of 3 condensations


def configurations(methods, ipcs, ks) -> list[tuple[str, int, int]]:
    """(method, ipc, K) of Table 1 and DM for `methods` (ipcs None), or every given ipc of each method; a K that
    does not divide the per-class synthetic count is left out."""
    return [(m, ipc, k) for m in methods for ipc in (ipcs or TABLE1[m]) for k in ks if k_divides(m, ipc, k)]


def k_divides(method: str, ipc: int, k: int) -> bool:
    """Whether K divides the per-class synthetic count of the method's paper preset (IDC decodes factor^2 images
    from each stored one)."""
    from sm_jax.methods import METHODS

    return ipc * METHODS[method].paper_preset(ipc, "cifar10")["factor"] ** 2 % k == 0


def emit(record: dict, out: str | None) -> None:
    """Prints a JSON line and appends it to `out` (if given)."""
    print(json.dumps(record), flush=True)
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")


def measure(target_name: str, chips: int | None, method: str, ipc: int, k: int, evaluate: bool = True,
            evaluation: tuple[dict, int] | None = None, preset: str = "paper", **fields) -> dict:
    """One configuration's record (compiled, or the error); `evaluation`: (the record of its evaluation program
    compiled before, its networks per call): it does not depend on K, so it is reused rather than compiled again;
    `fields`: config fields set on every configuration (class_chunk, eval_parallel, conv_impl: a form as it was
    measured)."""
    from sm_jax.aot import plan, target
    from sm_jax.aot.plan import run_seconds
    from sm_jax.config import make_config

    tgt = target(target_name, chips)
    rec = {"target": tgt.name, "chips": tgt.chips, "platform": tgt.platform, "method": method, "ipc": ipc,
           "subset_k": k, "preset": preset, **fields}
    t0 = time.perf_counter()
    try:
        cfg = make_config(method, ipc, preset, subset_k=k, **fields)
        rec.update(plan(cfg, tgt.name, evaluate=evaluate and evaluation is None,
                        log=lambda line: print(line, file=sys.stderr)))
        if evaluate and evaluation is not None:  # with the networks per call it was compiled for
            rec["evaluation"], rec["eval_parallel"] = evaluation
            rec["run_seconds"] = run_seconds(cfg, rec["iteration"]["seconds"]["estimate"],
                                             rec["evaluation"]["seconds"]["estimate"], rec["eval_parallel"])
        rec.update(compiled=True, iterations=cfg.iterations, eval_models=cfg.eval_models)
    except Exception as e:  # noqa: BLE001 - a failure to compile is a row of the table
        rec.update(compiled=False, error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}")
        traceback.print_exc(file=sys.stderr)
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    return rec


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", help="a name of sm_jax.aot.TARGETS")
    p.add_argument("--chips", type=int, help="the target's form with this many chips (h100 8 = h100x8)")
    p.add_argument("--methods", default="dc,dsa,idc,dm")
    p.add_argument("--ipcs", help="images per class (default: Table 1's of each method: DC, DSA and DM 10 and 50, "
                   "IDC 1, 10 and 50)")
    p.add_argument("--ks", default="1,2")
    p.add_argument("--no-eval", action="store_true", help="the iteration only")
    p.add_argument("--class-chunk", type=class_chunk, default=AUTO_CHUNK,
                   help="classes per vmapped program (0 = all; default auto: as a run on the target picks)")
    p.add_argument("--eval-parallel", type=eval_parallel, default=AUTO_PARALLEL,
                   help="evaluation networks per call (default auto: as a run picks, one per chip)")
    p.add_argument("--conv-impl", default="auto", help="the convolution form (auto: the target's; xla: the form "
                   "before the gemm forms, as ../shared/docs/gpu-h200.md measured it)")
    p.add_argument("--preset", default="paper", help="the configurations' preset (cpu: tiny programs, for a smoke run)")
    p.add_argument("--out", help="also append the JSON lines to this file")
    p.add_argument("--report", nargs="+", help="print the tables of these JSON-lines files instead")
    p.add_argument("--cpu-proxy", default="benchmarks/results/memory.jsonl",
                   help="--report: benchmarks.memory's lines (XLA:CPU compiling the GPU form), shown beside")
    args = p.parse_args(argv)
    if args.report:
        proxy = Path(args.cpu_proxy)
        proxy = {(r["method"], r["ipc"], r["subset_k"]): r["predicted_bytes"] for r in
                 (json.loads(ln) for ln in (proxy.read_text().splitlines() if proxy.is_file() else []))
                 if r["class_chunk"] == 0}
        print(report([json.loads(ln) for f in args.report for ln in Path(f).read_text().splitlines() if ln.strip()],
                     proxy))
        return []
    if not args.target:
        p.error("--target is required (or --report)")
    rows, evaluations = [], {}
    ipcs = [int(i) for i in args.ipcs.split(",")] if args.ipcs else None
    for method, ipc, k in configurations(args.methods.split(","), ipcs, [int(i) for i in args.ks.split(",")]):
        rec = measure(args.target, args.chips, method, ipc, k, not args.no_eval, evaluations.get((method, ipc)),
                      args.preset, class_chunk=args.class_chunk, eval_parallel=args.eval_parallel,
                      conv_impl=args.conv_impl)
        if rec.get("evaluation"):
            evaluations[(method, ipc)] = rec["evaluation"], rec["eval_parallel"]
        rows.append(rec)
        emit(rec, args.out)
    return rows


def _gib(b) -> str:
    return "-" if b is None else f"{b / 2**30:.1f}"


def latest(rows: list[dict]) -> dict[tuple, dict]:
    """The last record of each (target, method, ipc, K)."""
    return {(r["target"], r["method"], r["ipc"], r["subset_k"]): r for r in rows}


def _chunks(r: dict) -> str:
    """The class chunk of a record, and the synthetic side's where the matching is split (--syn-chunk)."""
    all_of = lambda c: "all" if c in (0, r.get("classes", 10)) else str(c)  # noqa: E731
    syn = r.get("syn_chunk", FUSED)
    return all_of(r["class_chunk"]) + ("" if syn in (FUSED, AUTO_CHUNK) else f", synthetic side {all_of(syn)}")


def report(rows: list[dict], cpu_proxy: dict | None = None) -> str:
    """Markdown: memory and time per configuration and target (`cpu_proxy`: {(method, ipc, K): bytes} of XLA:CPU
    compiling the GPU form, all classes in one program, shown beside), then Table 1's cost in device-hours per
    target."""
    rows = sorted(latest(rows).values(), key=lambda r: (r["target"], list(TABLE1).index(r["method"]), r["ipc"],
                                                        r["subset_k"]))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    cpu_proxy = cpu_proxy or {}
    out = ["| target | method | ipc | K | class chunk | iteration GiB (temporaries) | XLA:CPU proxy GiB | compile s | "
           "TFLOP / iteration | collectives GB / iteration | s / iteration | evaluation GiB | s / 20 networks | "
           "run h |", "|" + "---|" * 14]
    for r in rows:
        key = (r["method"], r["ipc"], r["subset_k"])
        if not r.get("compiled"):
            out.append(f"| {r['target']} | {r['method']} | {r['ipc']} | {r['subset_k']} | not compiled: "
                       f"{r.get('error', '')[:100]}... |" + " |" * 9)
            continue
        it, ev = r["iteration"], r.get("evaluation")
        coll = sum(c["bytes"] for c in it["collectives"].values()) / 1e9
        out.append(
            f"| {r['target']} | {r['method']} | {r['ipc']} | {r['subset_k']} | "
            f"{_chunks(r)} | "
            f"{_gib(it['memory'] and it['memory']['total'])} ({_gib(it['memory'] and it['memory']['temp'])}) | "
            f"{_gib(cpu_proxy.get(key))} | {it['compile_seconds']:.0f} | {it['flops'] / 1e12:.3g} | "
            f"{coll:.3g} | {it['seconds']['estimate']:.3g} | {_gib(ev and ev['memory'] and ev['memory']['total'])} | "
            f"{'-' if not ev else format(ev['seconds']['estimate'], '.3g')} | "
            f"{r['run_seconds']['total'] / 3600:.2f} |")
    out += ["", "Table 1 (14 cells x 3 seeds) and DM (ipc 10, 50; K 1, 2 x 3 seeds), device-hours; where a target has "
            "fewer cells compiled, the same cells on the reference target (h100) beside:", "",
            "| target | chips | Table 1 cells compiled | Table 1 device-hours | the same cells on h100 | DM cells | "
            "DM device-hours | the same cells on h100 |", "|---|---|---|---|---|---|---|---|"]
    cells = defaultdict(dict)  # target -> {(method, ipc, K): device-seconds of one run}
    for r in rows:
        if r.get("compiled"):
            cells[r["target"]][(r["method"], r["ipc"], r["subset_k"])] = r["run_seconds"]["total"] * r["chips"]
    for t in targets:
        chips = next(r["chips"] for r in rows if r["target"] == t)
        line = f"| {t} | {chips} |"
        for part in ("t1", "dm"):
            own = {k: v for k, v in cells[t].items() if (k[0] == "dm") == (part == "dm")}
            ref = [cells["h100"].get(k) for k in own]
            same = f"{SEEDS * sum(ref) / 3600:.1f}" if ref and None not in ref and t != "h100" else "-"
            line += f" {len(own)} of {14 if part == 't1' else 4} | {SEEDS * sum(own.values()) / 3600:.1f} | {same} |"
        out.append(line)
    return "\n".join(out)


if __name__ == "__main__":
    main()
