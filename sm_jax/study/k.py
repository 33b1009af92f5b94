"""The K plan: IDC ipc 10 with K in {1, 2, 4, 8} (lambda_0 = 1), like the paper's Figure 1."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sm_jax.study.common import base, figure, finish, fmt, group_runs, net_std, real_per_step, seed_means, spread_label
from sm_jax.study.spec import RunSpec

K_VALUES = (1, 2, 4, 8)
K_SEEDS = (0,)


def runs() -> list[RunSpec]:
    """IDC ipc 10 with K in {1, 2, 4, 8} (lambda_0 = 1), like the paper's Figure 1."""
    return [RunSpec(f"idc10_k{k}_s{seed}", f"idc10/k{k}",
                    base("idc10", subset_k=k, subset_lambda=1.0, seed=seed, eval_models=3))
            for k in K_VALUES for seed in K_SEEDS]


def report(specs, results, metrics, out: Path) -> str:
    groups = group_runs(results, specs)
    ks = [k for k in K_VALUES if f"idc10/k{k}" in groups]
    lines = ["| K | accuracy (%) | per seed | std over a seed's eval networks | real images / class / step |",
             "|---|---|---|---|---|"]
    for k in ks:
        rs = groups[f"idc10/k{k}"]
        lines.append(f"| {k} | {fmt(seed_means(rs))} | {', '.join(f'{v:.2f}' for v in seed_means(rs))} | "
                     f"{net_std(rs):.2f} | {real_per_step(rs[0]['config'])} |")
    if ks:
        fig, ax = figure(figsize=(4.5, 3.2))
        means = [seed_means(groups[f"idc10/k{k}"]) for k in ks]
        one_seed = all(len(m) == 1 for m in means)
        # with one seed the only spread to show is the evaluation networks'
        err = [net_std(groups[f"idc10/k{k}"]) if one_seed else m.std(ddof=1) for k, m in zip(ks, means)]
        ax.errorbar(ks, [m.mean() for m in means], err, marker="o", capsize=3)
        for k, m in zip(ks, means):
            ax.plot(np.full(len(m), k), m, "k.", ms=4)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("subsets per class K (K=1: base IDC)")
        finish(fig, ax, f"IDC ipc 10, reduced budget; {spread_label(one_seed)}", out / "k_ablation.png")
    return "\n".join(lines)
