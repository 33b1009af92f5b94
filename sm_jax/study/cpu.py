"""The cpu plan: each method at its `cpu` preset against its own initial set, one seed, base and + subset matching
(K = 2, lambda_0 1.0): what a first run on a laptop shows. `--iterations 0` evaluates the initial set with the same
protocol. The runs of docs/results.md's sections "Condensation at the `cpu` preset beats its own initialisation",
"DM at the `cpu` preset" and "MTT at the `cpu` preset"."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sm_jax.study.common import group_runs
from sm_jax.study.spec import RunSpec

# name: (method, ipc, the variants: K 2 is left out where 2 does not divide the synthetic images (MTT ipc 1))
CPU_SETTINGS = {"dc10": ("dc", 10, ("init", "k1", "k2")), "dsa10": ("dsa", 10, ("init", "k1", "k2")),
                "idc1": ("idc", 1, ("init", "k1", "k2")), "idc10": ("idc", 10, ("init", "k1", "k2")),
                "dm10": ("dm", 10, ("init", "k2")), "mtt1": ("mtt", 1, ("init", "k1"))}
VARIANTS = {"init": {"subset_k": 1, "iterations": 0}, "k1": {"subset_k": 1},
            "k2": {"subset_k": 2, "subset_lambda": 1.0}}


def runs() -> list[RunSpec]:
    """Per setting: the initial set, then the condensations (seed 0, the `cpu` preset's budget)."""
    return [RunSpec(f"{s}_{v}", f"{s}/{v}", {"method": m, "ipc": ipc, "preset": "cpu", "seed": 0, **VARIANTS[v]})
            for s, (m, ipc, variants) in CPU_SETTINGS.items() for v in variants]


def report(specs, results, metrics, out: Path) -> str:
    """One row per run: accuracy (mean +- std over its networks), each network's, the learned lr (MTT) and the wall
    time of its last sitting (condensation + evaluation, compilation included)."""
    groups = group_runs(results, specs)
    lines = ["| run | method | ipc | K | iterations | eval epochs x nets | accuracy (%) | per net (%) | learned lr |"
             " wall (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for spec in specs:
        if spec.group not in groups:
            continue
        r = groups[spec.group][0]
        cfg, accs = r["config"], 100 * np.asarray(r["accuracies"])
        lr = r.get("learned", {}).get("lr")
        wall = r.get("condense_seconds_this_sitting", 0) + r.get("eval_seconds", 0)
        lines.append(f"| {spec.id} | {cfg['method']} | {cfg['ipc']} | {cfg['subset_k']} | {r['iterations']} | "
                     f"{r['eval_epochs']} x {r['eval_models']} | {accs.mean():.2f} +- {accs.std():.2f} | "
                     f"{', '.join(f'{a:.2f}' for a in accs)} | {'-' if lr is None else f'{lr:.4f}'} | {wall:.0f} |")
    return "\n".join(lines)
