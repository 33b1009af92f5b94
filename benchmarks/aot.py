"""The paper's configurations compiled for GPU and TPU targets that are not here: device bytes, the class chunk
`--class-chunk auto` picks there, flops, bytes, the estimated time of an iteration, of an evaluation and of a run.

python -m benchmarks.aot --target NAME [--chips N] [--methods dc,dsa,idc,dm] [--ipcs 1,10,50] [--ks 1,2]
                         [--no-eval] [--out FILE]
python -m benchmarks.aot --report FILE [FILE ...]     (the docs/gpu.md tables from such lines)

Each configuration prints one JSON line (and appends it to --out): the `paper`-preset condensation iteration and
evaluation program (20 networks per call, as benchmarks/gpu.sh runs them) compiled by the target's own compiler
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

TABLE1 = {"dc": (10, 50), "dsa": (10, 50), "idc": (1, 10, 50), "dm": (10, 50)}
KS = (1, 2)
SEEDS = 3  # Table 1: every cell the mean of 3 condensations
EVAL_PARALLEL = 20


def configurations(methods, ipcs, ks) -> list[tuple[str, int, int]]:
    return [(m, ipc, k) for m in methods for ipc in TABLE1.get(m, ()) if ipc in ipcs for k in ks]


def measure(target_name: str, chips: int | None, method: str, ipc: int, k: int, evaluate: bool = True) -> dict:
    """One configuration's record (compiled, or the error)."""
    from sm_jax.aot import plan, target
    from sm_jax.config import make_config

    tgt = target(target_name, chips)
    rec = {"target": tgt.name, "chips": tgt.chips, "platform": tgt.platform, "method": method, "ipc": ipc,
           "subset_k": k, "preset": "paper"}
    t0 = time.perf_counter()
    try:
        cfg = make_config(method, ipc, "paper", subset_k=k, eval_parallel=EVAL_PARALLEL)
        rec.update(plan(cfg, tgt.name, evaluate=evaluate, log=lambda line: print(line, file=sys.stderr)))
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
    p.add_argument("--ipcs", default="1,10,50")
    p.add_argument("--ks", default="1,2")
    p.add_argument("--no-eval", action="store_true", help="the iteration only")
    p.add_argument("--out", help="also append the JSON lines to this file")
    p.add_argument("--report", nargs="+", help="print the tables of these JSON-lines files instead")
    args = p.parse_args(argv)
    if args.report:
        print(report([json.loads(ln) for f in args.report for ln in Path(f).read_text().splitlines() if ln.strip()]))
        return []
    if not args.target:
        p.error("--target is required (or --report)")
    rows = []
    for method, ipc, k in configurations(args.methods.split(","), [int(i) for i in args.ipcs.split(",")],
                                         [int(i) for i in args.ks.split(",")]):
        if (ipc * (4 if method == "idc" else 1)) % k:
            continue
        rec = measure(args.target, args.chips, method, ipc, k, not args.no_eval)
        rows.append(rec)
        print(json.dumps(rec), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")
    return rows


def _gib(b) -> str:
    return "-" if b is None else f"{b / 2**30:.1f}"


def latest(rows: list[dict]) -> dict[tuple, dict]:
    """The last record of each (target, method, ipc, K)."""
    return {(r["target"], r["method"], r["ipc"], r["subset_k"]): r for r in rows}


def report(rows: list[dict], cpu_proxy: dict | None = None) -> str:
    """Markdown: memory and time per configuration and target, then Table 1's cost in device-hours per target."""
    rows = list(latest(rows).values())
    targets = list(dict.fromkeys(r["target"] for r in rows))
    out = ["| target | method | ipc | K | compiled | class chunk | iteration GiB (temp) | s / iteration | "
           "TPU compiler s | evaluation GiB | s / 20 networks | run h |", "|" + "---|" * 12]
    for r in rows:
        if not r.get("compiled"):
            out.append(f"| {r['target']} | {r['method']} | {r['ipc']} | {r['subset_k']} | no: {r.get('error', '')}"
                       " | | | | | | | |")
            continue
        it, ev = r["iteration"], r.get("evaluation")
        tpu = it["seconds"].get("tpu_compiler")
        out.append(
            f"| {r['target']} | {r['method']} | {r['ipc']} | {r['subset_k']} | yes | "
            f"{r['class_chunk'] or 'all'} | {_gib(it['memory'] and it['memory']['total'])} "
            f"({_gib(it['memory'] and it['memory']['temp'])}) | {it['seconds']['estimate']:.3g} | "
            f"{'-' if tpu is None else f'{tpu:.3g}'} | {_gib(ev and ev['memory'] and ev['memory']['total'])} | "
            f"{'-' if not ev else format(ev['seconds']['estimate'], '.3g')} | "
            f"{r['run_seconds']['total'] / 3600:.2f} |")
    out += ["", "Table 1 (14 cells x 3 seeds) and DM (ipc 10, 50; K 1, 2 x 3 seeds), device-hours:", "",
            "| target | chips | Table 1 cells compiled | Table 1 device-hours | DM cells | DM device-hours |",
            "|---|---|---|---|---|---|"]
    for t in targets:
        cells = defaultdict(list)
        for r in rows:
            if r["target"] == t and r.get("compiled"):
                cells["dm" if r["method"] == "dm" else "t1"].append(r["run_seconds"]["total"] * r["chips"])
        chips = next(r["chips"] for r in rows if r["target"] == t)
        t1, dm = cells["t1"], cells["dm"]
        out.append(f"| {t} | {chips} | {len(t1)} of 14 | {SEEDS * sum(t1) / 3600:.1f} | {len(dm)} of 4 | "
                   f"{SEEDS * sum(dm) / 3600:.1f} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
