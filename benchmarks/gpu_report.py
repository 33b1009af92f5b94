"""One JSON file and one Markdown report from benchmarks/gpu.sh's scratch folder, with GPU-hour estimates.

python -m benchmarks.gpu_report SRC [--out DIR]

Reads SRC/{tests.txt, step.jsonl, evaluate.jsonl, aot.jsonl, study/**/metrics.jsonl and results.json, tables/*.md}
and env.json from SRC or DIR (any may be missing: a cut check still reports what it did); writes DIR/gpu.json (commit
it as benchmarks/results/gpu-<date>.json) and DIR/report.md (default DIR: SRC) and prints the Markdown. The
estimates: a condensation run costs iterations x outer_loop matching steps at the paper preset (the inner-loop
network training between them is left out, so it is a lower bound); a study run's own median seconds per iteration
gives its cell directly.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.summarize import main as summarize
from sm_jax.methods import METHODS


def _lines(path: Path) -> list[dict]:
    out = []
    if path.exists():
        for ln in path.read_text().splitlines():
            try:
                out.append(json.loads(ln))
            except ValueError:
                pass  # a line cut by the time limit
    return out


def read_runs(src: Path) -> dict[str, dict]:
    """Per run directory of the study under SRC/study (each experiment its own): iterations done, median seconds per
    iteration (each sitting's first, which compiles, left out), evaluation seconds and accuracy when it finished."""
    runs = {}
    for metrics_file in sorted((src / "study").rglob("metrics.jsonl")):
        wd = metrics_file.parent
        metrics = _lines(metrics_file)
        its = [m for m in metrics if "loss_all" in m]
        cfg = json.loads((wd / "config.json").read_text()) if (wd / "config.json").exists() else {}
        res = json.loads((wd / "results.json").read_text()) if (wd / "results.json").exists() else None
        firsts = [i for i, m in enumerate(its) if i == 0 or m["iteration"] != its[i - 1]["iteration"] + 1
                  or m.get("wall_time", 1.0) < its[i - 1].get("wall_time", 0.0)]  # a sitting's first iteration
        secs = [m["seconds"] for i, m in enumerate(its) if i not in firsts]
        runs[str(wd.relative_to(src / "study"))] = {
            "method": cfg.get("method"), "ipc": cfg.get("ipc"), "subset_k": cfg.get("subset_k"),
            "iterations_done": len(its), "iterations_total": cfg.get("iterations"),
            "first_iteration_seconds": its[0]["seconds"] if its else None,
            "median_seconds_per_iteration": statistics.median(secs) if secs else None,
            "accuracy_mean": res and res.get("accuracy_mean"), "accuracy_std": res and res.get("accuracy_std"),
            "eval_seconds": res and res.get("eval_seconds"), "device_seconds": res and res.get("device_seconds"),
            "device_peak_bytes": res and res.get("device_peak_bytes"),
            "memory_ratio": ((res or {}).get("device_memory") or {}).get("ratio")}  # the run's own 1.3x check
    return runs


def estimates(steps: list[dict], runs: dict[str, dict]) -> list[dict]:
    """GPU-hours of the condensation of paper cells, from the measured step times and full-budget runs."""
    out = []
    for s in steps:
        c = s["config"]
        if s.get("precision", "float32") != "float32" or c.get("classes", 10) != 10 or c.get("width", 128) != 128:
            continue
        p = METHODS[c["method"]].paper_preset(c["ipc"], "cifar10")
        hours = p["iterations"] * p["outer_loop"] * s["step_seconds_median"] / 3600
        out.append({"method": c["method"], "ipc": c["ipc"], "subset_k": c["subset_k"], "source": "step",
                    "condense_gpu_hours_at_least": hours})
    for name, r in runs.items():
        if r["median_seconds_per_iteration"] and r["iterations_total"]:
            out.append({"method": r["method"], "ipc": r["ipc"], "subset_k": r["subset_k"], "source": f"run {name}",
                        "condense_gpu_hours": r["iterations_total"] * r["median_seconds_per_iteration"] / 3600})
    return out


def r_target(predicted: dict) -> str:
    return next((r["target"] for r in predicted.values()), "?")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="gpu.sh's scratch folder ($GPU_SH_WORK)")
    p.add_argument("--out", help="where gpu.json and report.md go (default SRC)")
    args = p.parse_args(argv)
    src = Path(args.src)
    out = Path(args.out or src)
    out.mkdir(parents=True, exist_ok=True)
    env_file = next((d / "env.json" for d in (src, out) if (d / "env.json").exists()), None)
    env = json.loads(env_file.read_text()) if env_file else {}
    env = {k: v for k, v in env.items() if k != "nvidia_smi"}
    tests = (src / "tests.txt").read_text().strip().splitlines()[-1:] if (src / "tests.txt").exists() else []
    steps, evals, runs = _lines(src / "step.jsonl"), _lines(src / "evaluate.jsonl"), read_runs(src)
    predicted = {(r["method"], r["ipc"], r["subset_k"]): r for r in _lines(src / "aot.jsonl") if r.get("compiled")}
    tables = {f.stem: f.read_text() for f in sorted((src / "tables").glob("*.md"))}
    report = {"env": env, "tests": tests[0] if tests else None, "steps": steps, "evaluate": evals, "runs": runs,
              "estimates": estimates(steps, runs), "predicted": list(predicted.values()), "study": tables}
    (out / "gpu.json").write_text(json.dumps(report, indent=1))
    md = [f"Device: {env.get('device_kind', '?')}; jax {env.get('jax', '?')}, torch {env.get('torch', '?')}. "
          f"Equivalence tests on it: {report['tests'] or 'not run'}."]
    if steps or evals:
        with tempfile.TemporaryDirectory() as tmp:  # summarize reads one JSON-lines file
            joined = Path(tmp) / "all.jsonl"
            joined.write_text("".join(json.dumps(r) + "\n" for r in steps + evals))
            md += ["", summarize(str(joined))]
    for name, table in tables.items():
        md += ["", f"Study `{name}` (experiments.study --report-only):", "", table.strip()]
    if runs:
        md += ["", "| run | iterations done | first iteration s | median s/iteration | predicted s/iteration "
               "(sm_jax.aot) | predicted GiB | measured peak GiB (whole run) | peak / the run's predicted programs "
               "(bound 1.3) | device s | accuracy |",
               "|---" * 10 + "|"]
        for name, r in runs.items():
            acc = (f"{100 * r['accuracy_mean']:.2f} +- {100 * r['accuracy_std']:.2f}"
                   if r["accuracy_mean"] is not None else "-")
            med = r["median_seconds_per_iteration"]
            first = r["first_iteration_seconds"]
            pred = predicted.get((r["method"], r["ipc"], r["subset_k"]), {}).get("iteration")
            p_s = f"{pred['seconds']['estimate']:.3f} ({r_target(predicted)})" if pred else "-"
            p_mem = f"{pred['memory']['total'] / 2**30:.2f}" if pred and pred.get("memory") else "-"
            peak = f"{r['device_peak_bytes'] / 2**30:.2f}" if r.get("device_peak_bytes") else "-"
            dev = f"{r['device_seconds']:.1f}" if r.get("device_seconds") is not None else "-"
            ratio = f"{r['memory_ratio']:.2f}" if r.get("memory_ratio") is not None else "-"
            md.append(f"| {name} | {r['iterations_done']}/{r['iterations_total']} | "
                      f"{'-' if first is None else f'{first:.1f}'} | {'-' if med is None else f'{med:.3f}'} | "
                      f"{p_s} | {p_mem} | {peak} | {ratio} | {dev} | {acc} |")
    if report["estimates"]:
        md += ["", "| cell | from | condensation GPU-hours |", "|---|---|---|"]
        for e in report["estimates"]:
            h = e.get("condense_gpu_hours", e.get("condense_gpu_hours_at_least"))
            md.append(f"| {e['method']} ipc {e['ipc']} K {e['subset_k']} | {e['source']} | "
                      f"{'>= ' if 'condense_gpu_hours_at_least' in e else ''}{h:.2f} |")
    text = "\n".join(md)
    print(text)
    (out / "report.md").write_text(text + "\n")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
