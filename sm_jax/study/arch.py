"""The arch plan: the table plan's DC / DSA / IDC ipc-10 sets, base and + subset matching, evaluated on ConvNet-3,
AlexNet, VGG-11, ResNet-18 BN and MLP."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sm_jax.study.common import LAMBDA_FROM, SEEDS, base, figure, finish, fmt, group_runs, tests_cell, verdict
from sm_jax.study.spec import SELECT_FROM, RunSpec

# Cross-architecture: the table plan's DC / DSA / IDC ipc-10 sets (same flags and seeds: the same sets, recreated),
# each evaluated on the architectures below. One network per (set, architecture), on the first 200 test images of
# each class (a fifth of the test set's cost): about 2 CPU-hours for the 18 sets.
ARCH_SETTINGS = ("dc10", "dsa10", "idc10")
ARCH_EVAL = "convnet,alexnet,vgg11,resnet18bn,mlp"
ARCH_MODELS = 1
ARCH_TEST_PER_CLASS = 200


def runs() -> list[RunSpec]:
    """Base vs + subset matching sets of DC/DSA/IDC ipc 10, evaluated on ConvNet-3, AlexNet, VGG-11, ResNet-18 (BN)
    and MLP. Seed-major, so that a partial study already pairs every setting."""
    extra = {"eval_arch": ARCH_EVAL, "eval_models": ARCH_MODELS, "eval_test_per_class": ARCH_TEST_PER_CLASS}
    runs = []
    for seed in SEEDS:
        for s in ARCH_SETTINGS:
            runs.append(RunSpec(f"{s}_base_s{seed}", f"{s}/base", base(s, subset_k=1, seed=seed, **extra)))
            lam = f"{SELECT_FROM}table:{LAMBDA_FROM[s]}/val/"  # the lambda_0 the table plan chose on held-out data
            runs.append(RunSpec(f"{s}_sm_s{seed}", f"{s}/sm", base(s, subset_k=2, subset_lambda=lam, seed=seed,
                                                                    **extra)))
    return runs


def arch_accuracy(run: dict, arch: str) -> float | None:
    """A run's mean accuracy (%) on architecture `arch` (its `archs` entry), or None."""
    r = run.get("archs", {}).get(arch)
    return None if r is None else 100 * r["accuracy_mean"]


def report(specs, results, metrics, out: Path) -> str:
    """Per setting and architecture: base vs + subset matching over the seeds, paired, with a verdict."""
    groups = group_runs(results, specs)
    archs = ARCH_EVAL.split(",")
    lines = ["| setting | architecture | base (%) | + subset matching (%) | paired Δ (points) | t (p) | sign-flip p |"
             " verdict | seeds |", "|---|---|---|---|---|---|---|---|---|"]
    deltas: dict[str, dict[str, np.ndarray]] = {}
    pooled: dict[str, list] = {a: [[], []] for a in archs}  # arch -> [base, sm] over every (setting, seed) pair
    for s in ARCH_SETTINGS:
        base = {r["config"]["seed"]: r for r in groups.get(f"{s}/base", [])}
        sm = {r["config"]["seed"]: r for r in groups.get(f"{s}/sm", [])}
        seeds = sorted(set(base) & set(sm))
        if not seeds:
            continue
        for arch in archs:
            b = np.asarray([arch_accuracy(base[k], arch) for k in seeds], float)
            m = np.asarray([arch_accuracy(sm[k], arch) for k in seeds], float)
            d = m - b
            deltas.setdefault(s, {})[arch] = d
            pooled[arch][0].extend(b)
            pooled[arch][1].extend(m)
            lines.append(f"| {s} | {arch} | {fmt(b)} | {fmt(m)} | {fmt(d)} | {tests_cell(d)} | {verdict(d)} | "
                         f"{', '.join(map(str, seeds))} |")
    if len(deltas) > 1:  # every setting's pairs together: the answer per architecture
        for arch in archs:
            b, m = (np.asarray(v, float) for v in pooled[arch])
            lines.append(f"| all (pooled) | {arch} | {fmt(b)} | {fmt(m)} | {fmt(m - b)} | {tests_cell(m - b)} | "
                         f"{verdict(m - b)} | "
                         f"{len(b)} pairs |")
    if deltas:
        fig, ax = figure(figsize=(1.3 * len(archs) + 2.5, 3.4))
        x = np.arange(len(archs))
        width = 0.8 / len(deltas)
        for j, (s, by_arch) in enumerate(deltas.items()):
            off = (j - (len(deltas) - 1) / 2) * width
            vals = [by_arch[a] for a in archs]
            ax.bar(x + off, [v.mean() for v in vals], width, label=s, alpha=0.8,
                   yerr=[v.std(ddof=1) if len(v) > 1 else 0 for v in vals], capsize=3)
            for xi, v in zip(x, vals):
                ax.plot(np.full(len(v), xi + off), v, "k.", ms=4)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(x, archs)
        finish(fig, ax, "gain of subset matching by evaluation architecture (paired per seed)",
                out / "arch.png", legend=True, ylabel="subset matching − base (points)")
    return "\n".join(lines)
