"""The loss plan: DC ipc 10 with the base loss only, the subset loss only, or both, evaluated every 2 iterations
(like the paper's Figure 2)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sm_jax.study.common import base, eval_curve, figure, finish, fmt, spread_label
from sm_jax.study.spec import RunSpec

LOSS_ITERATIONS = 6
LOSS_SEEDS = (0,)


def runs() -> list[RunSpec]:
    """DC ipc 10: base loss only vs subset loss only vs both, evaluated every 2 iterations (like Figure 2)."""
    variants = {"base": {"subset_k": 1}, "subset_only": {"subset_k": 2, "subset_only": True},
                "both": {"subset_k": 2, "subset_lambda": 1.0}}
    return [RunSpec(f"dc10_{v}_s{seed}", f"dc10/{v}",
                    base("dc10", iterations=LOSS_ITERATIONS, eval_every=2, eval_models=3, seed=seed, **f))
            for v, f in variants.items() for seed in LOSS_SEEDS]


def report(specs, results, metrics, out: Path) -> str:
    by_group: dict[str, list[str]] = {}
    for s in specs:
        if s.id in results:
            by_group.setdefault(s.group, []).append(s.id)
    lines = ["| loss | final accuracy (%) | per seed | accuracy at each evaluated iteration (mean over seeds) |",
             "|---|---|---|---|"]
    fig, ax = figure(figsize=(5, 3.4))
    seeds = 0
    for g, ids in by_group.items():
        curves = [eval_curve(metrics[i]) for i in ids]
        its = curves[0][0]
        if any(len(c[0]) != len(its) or (c[0] != its).any() for c in curves):
            continue
        acc = np.stack([c[1] for c in curves])
        final = acc[:, -1]
        # one seed: the spread shown is its evaluation networks'
        err = acc.std(0, ddof=1) if len(acc) > 1 else curves[0][2]
        lines.append(f"| {g.split('/')[-1]} | {fmt(final)} | {', '.join(f'{v:.2f}' for v in final)} | "
                     f"{', '.join(f'{i}: {a:.2f}' for i, a in zip(its, acc.mean(0)))} |")
        ax.errorbar(its, acc.mean(0), err, marker="o", capsize=3, label=g.split("/")[-1].replace("_", " "))
        seeds = len(acc)
    ax.set_xlabel("condensation iteration")
    finish(fig, ax, f"DC ipc 10: which loss; {spread_label(seeds == 1)}", out / "loss_ablation.png", legend=True)
    return "\n".join(lines)
