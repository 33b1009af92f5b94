"""A study's cost on a target it has not met: every run planned by `aot.plan` (`--plan-for`), times its experiments,
summed. `python -m experiments.study --plan full --plan-for h200`.

The figures are predictions (sm_jax.aot's estimate of each program, compiled for the target from shapes alone), not
measurements: docs/gpu.md says how far the estimate was from what a card measured.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sm_jax.study.plans import load_plan, plan_name
from sm_jax.study.spec import SELECT, SELECT_FROM, RunSpec


def forecast(name: str, target: str, overrides: dict[str, Any] | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Plans every run of study `name` for `target`.

    Args:
      name: a built-in plan or a JSON plan file.
      target: a name of sm_jax.aot.TARGETS.
      overrides: Config fields set in every run (as `run_plan`'s).
      log: where each run's plan is narrated.
    Returns:
      {plan, target, runs: [{id, group, experiments, class_chunk, iteration_seconds, evaluation_seconds,
      hours_per_experiment, hours}], hours: the sum}. A `select:` field is planned at the Config's default (its
      value is only known once the runs it selects from are done).
    Raises:
      PlanError: for a run that does not fit the target; TargetError without the target's compiler.
    """
    from sm_jax.aot.plan import plan

    rows = []
    specs = load_plan(name)
    for i, spec in enumerate(specs):
        flags = {k: v for k, v in spec.flags.items()
                 if not (isinstance(v, str) and v.startswith((SELECT, SELECT_FROM)))}
        cfg = RunSpec(spec.id, spec.group, flags).config(Path(spec.id), None, overrides or {})  # nothing is written
        log(f"[{i + 1}/{len(specs)}] {spec.id}")
        p = plan(cfg, target, evaluate=True, log=log)
        hours = p["run_seconds"]["total"] / 3600
        ev = p["evaluation"]
        rows.append({"id": spec.id, "group": spec.group, "method": cfg.method, "ipc": cfg.ipc,
                     "subset_k": cfg.subset_k, "experiments": cfg.experiments, "class_chunk": p["class_chunk"],
                     "iteration_seconds": p["iteration"]["seconds"]["estimate"],
                     "evaluation_seconds": ev["seconds"]["estimate"] if ev else None,
                     "run_seconds": p["run_seconds"], "hours_per_experiment": hours,
                     "hours": hours * cfg.experiments})
    return {"plan": plan_name(name), "target": target, "runs": rows, "hours": sum(r["hours"] for r in rows)}


def table(f: dict[str, Any]) -> str:
    """The forecast as Markdown: one row per run, the total last."""
    lines = [f"Plan `{f['plan']}` on {f['target']} (sm_jax.aot's estimate, a prediction):", "",
             "| run | class chunk | s / iteration | s / evaluation call | condensation h | evaluation h | "
             "h per experiment | experiments | h |", "|---|---|---|---|---|---|---|---|---|"]
    for r in f["runs"]:
        s = r["run_seconds"]
        ev = "-" if r["evaluation_seconds"] is None else f"{r['evaluation_seconds']:.3g}"
        lines.append(f"| {r['id']} | {r['class_chunk']} | {r['iteration_seconds']:.3g} | {ev} | "
                     f"{s['condense'] / 3600:.3f} | {s['evaluate'] / 3600:.3f} | {r['hours_per_experiment']:.3f} | "
                     f"{r['experiments']} | {r['hours']:.3f} |")
    lines.append(f"| **total** | | | | | | | | **{f['hours']:.2f}** |")
    return "\n".join(lines)
