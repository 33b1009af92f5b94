"""The table plan: base vs + subset matching (K = 2, lambda_0 chosen on held-out data) for DC/DSA ipc 10 and IDC
ipc 1/10, 5 seeds, with a compute control."""
from __future__ import annotations

from pathlib import Path

from sm_jax.study.common import (
    CONTROL_SETTINGS,
    LAMBDA_FROM,
    SETTINGS,
    TABLE_SEEDS,
    base,
    base_vs_subsets,
    base_vs_subsets_runs,
    by_seed,
    fmt,
    group_runs,
    paired,
    preset_batch_real,
    seed_means,
    tests_cell,
    verdict,
)
from sm_jax.study.spec import RunSpec


def runs() -> list[RunSpec]:
    """Base vs + subset matching (K=2, lambda_0 chosen on a held-out split) for DC/DSA ipc 10, IDC ipc 1/10."""
    runs = [r for s in SETTINGS for r in base_vs_subsets_runs(s, base, LAMBDA_FROM[s], TABLE_SEEDS, eval_models=2)]
    for s in CONTROL_SETTINGS:  # last: the table's main cells do not wait for the control
        for seed in TABLE_SEEDS:
            runs.append(RunSpec(f"{s}_base_real3x_s{seed}", f"{s}/base_real3x",
                                base(s, subset_k=1, seed=seed, batch_real=3 * preset_batch_real(s))))
    return runs


def report(specs, results, metrics, out: Path) -> str:
    groups = group_runs(results, specs)
    lines = base_vs_subsets(groups, SETTINGS, LAMBDA_FROM, out / "table.png",
                            "CIFAR-10, reduced budget; mean ± std over seeds (dots)")
    controls = ["| setting | base, 3x real batch (%) | + subset matching (%) | paired Δ (points) | t (p) |"
                " sign-flip p | verdict | base 3x per seed |", "|---|---|---|---|---|---|---|---|"]
    for s in SETTINGS:
        ctrl, sm = groups.get(f"{s}/base_real3x", []), groups.get(f"{s}/sm", [])
        if ctrl and sm:
            c, m = by_seed(ctrl), by_seed(sm)
            d = paired(c, m)
            controls.append(f"| {s} | {fmt(seed_means(ctrl))} | {fmt(seed_means(sm))} | {fmt(d)} | {tests_cell(d)} | "
                            f"{verdict(d)} | "
                            f"{', '.join(f'{c[k]:.2f}' for k in sorted(c))} |")
    if len(controls) > 2:
        lines += ["", "Compute control: the base method drawing 3x the real images per class per step (as many as "
                  "K = 2's three real batches), against the same subset-matching runs.", "", *controls]
    return "\n".join(lines)
