"""The table plan: base vs + subset matching (K = 2, lambda_0 chosen on held-out data) for DC/DSA ipc 10 and IDC
ipc 1/10, 3 seeds, with a compute control."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sm_jax.study.common import (
    CONTROL_SETTINGS,
    HOLDOUT,
    LAMBDA_FROM,
    LAMBDA_GRID,
    SEEDS,
    SETTINGS,
    base,
    figure,
    finish,
    fmt,
    group_runs,
    preset_batch_real,
    seed_means,
    verdict,
)
from sm_jax.study.spec import SELECT, RunSpec


def runs() -> list[RunSpec]:
    """Base vs + subset matching (K=2, lambda_0 chosen on a held-out split) for DC/DSA ipc 10, IDC ipc 1/10."""
    runs = []
    for s in SETTINGS:
        if LAMBDA_FROM[s] == s:
            for lam in LAMBDA_GRID:
                runs.append(RunSpec(f"{s}_val_lambda{lam:g}", f"{s}/val/lambda{lam:g}",
                                    base(s, subset_k=2, subset_lambda=lam, holdout=HOLDOUT, seed=0, eval_models=2)))
        for seed in SEEDS:
            runs.append(RunSpec(f"{s}_base_s{seed}", f"{s}/base", base(s, subset_k=1, seed=seed)))
            runs.append(RunSpec(f"{s}_sm_s{seed}", f"{s}/sm",
                                base(s, subset_k=2, subset_lambda=f"{SELECT}{LAMBDA_FROM[s]}/val/", seed=seed)))
    for s in CONTROL_SETTINGS:  # last: the table's main cells do not wait for the control
        for seed in SEEDS:
            runs.append(RunSpec(f"{s}_base_real3x_s{seed}", f"{s}/base_real3x",
                                base(s, subset_k=1, seed=seed, batch_real=3 * preset_batch_real(s))))
    return runs


def report(specs, results, metrics, out: Path) -> str:
    groups = group_runs(results, specs)
    lines = ["| setting | base (%) | + subset matching (%) | paired Δ (points) | verdict | λ0 (held-out acc. %) |"
             " base per seed | + SM per seed |", "|---|---|---|---|---|---|---|---|"]
    controls = ["| setting | base, 3x real batch (%) | + subset matching (%) | paired Δ (points) | verdict |"
                " base 3x per seed |", "|---|---|---|---|---|---|"]
    by_seed = lambda rs: {r["config"]["seed"]: 100 * r["accuracy_mean"] for r in rs}  # noqa: E731

    def paired(a: dict, b: dict) -> np.ndarray:
        return np.asarray([b[k] - a[k] for k in sorted(set(a) & set(b))])

    names, bars = [], []
    for s in SETTINGS:
        base, sm = groups.get(f"{s}/base", []), groups.get(f"{s}/sm", [])
        if not base or not sm:
            continue
        b, m = by_seed(base), by_seed(sm)
        diff = paired(b, m)
        val = "; ".join(f"{g.rsplit('lambda', 1)[1]}: {seed_means(rs).mean():.2f}"
                        for g, rs in groups.items() if g.startswith(f"{LAMBDA_FROM[s]}/val/"))
        lam = sm[0]["config"]["subset_lambda"]
        lines.append(f"| {s} | {fmt(seed_means(base))} | {fmt(seed_means(sm))} | {fmt(diff)} | {verdict(diff)} | "
                     f"**{lam:g}** ({val}) | {', '.join(f'{b[k]:.2f}' for k in sorted(b))} | "
                     f"{', '.join(f'{m[k]:.2f}' for k in sorted(m))} |")
        names.append(s)
        bars.append((seed_means(base), seed_means(sm)))
        ctrl = groups.get(f"{s}/base_real3x", [])
        if ctrl:
            c = by_seed(ctrl)
            d = paired(c, m)
            controls.append(f"| {s} | {fmt(seed_means(ctrl))} | {fmt(seed_means(sm))} | {fmt(d)} | {verdict(d)} | "
                            f"{', '.join(f'{c[k]:.2f}' for k in sorted(c))} |")
    if names:
        fig, ax = figure(figsize=(1.6 * len(names) + 2, 3.4))
        x = np.arange(len(names))
        for j, (label, off) in enumerate((("base", -0.18), ("+ subset matching (K=2)", 0.18))):
            vals = [b[j] for b in bars]
            ax.bar(x + off, [v.mean() for v in vals], 0.34, yerr=[v.std(ddof=1) if len(v) > 1 else 0 for v in vals],
                   capsize=3, label=label, alpha=0.8)
            for xi, v in zip(x, vals):
                ax.plot(np.full(len(v), xi + off), v, "k.", ms=4)
        lo = min(v.min() for b in bars for v in b)
        ax.set_ylim(max(0, lo - 5), None)
        ax.set_xticks(x, names)
        finish(fig, ax, "CIFAR-10, reduced budget; mean ± std over seeds (dots)", out / "table.png", legend=True)
    if len(controls) > 2:
        lines += ["", "Compute control: the base method drawing 3x the real images per class per step (as many as "
                  "K = 2's three real batches), against the same subset-matching runs.", "", *controls]
    return "\n".join(lines)
