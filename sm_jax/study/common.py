"""What the plans share: the reduced-budget settings and seeds, and the reports' statistics and figures."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sm_jax.config import make_config
from sm_jax.study.spec import SELECT, RunSpec

# Reduced budgets for 2 CPU cores: the `cpu` preset (same algorithms and hyper-parameters; 32 real images per class
# per matching step; DC/DSA 3 matching steps and 5 network epochs per iteration, IDC 6 (ipc 10) or 8 (ipc 1)
# matching steps and 3 network steps) with fewer iterations and shortened evaluation protocols, as below.
SETTINGS = {  # name: (method, ipc, flags)
    "dc10": ("dc", 10, {"iterations": 4, "eval_epochs": 30}),
    "dsa10": ("dsa", 10, {"iterations": 4, "eval_epochs": 30}),
    "idc1": ("idc", 1, {"iterations": 2, "eval_epochs": 40}),
    "idc10": ("idc", 10, {"iterations": 2, "eval_epochs": 10}),
}
SEEDS = (0, 1, 2)
TABLE_SEEDS = (0, 1, 2, 3, 4)  # the table's and its control's: 4 degrees of freedom for the paired t-test
EVAL_MODELS = 5
LAMBDA_GRID = (0.3, 1.0, 3.0)
HOLDOUT = 500  # training images per class held out to choose lambda_0 (never the test set)
# The compute control: K = 2 draws 3 real batches per class per step (the whole class and 2 subsets), so the base
# method with a 3x real batch sees as many real images per step; run where it is cheapest.
CONTROL_SETTINGS = ("dc10",)
# IDC ipc 10 reuses IDC ipc 1's lambda_0 (a validation grid at ipc 10 would cost as much as its whole table row)
LAMBDA_FROM = {"dc10": "dc10", "dsa10": "dsa10", "idc1": "idc1", "idc10": "idc1"}


def base(setting: str, **flags) -> dict[str, Any]:
    method, ipc, extra = SETTINGS[setting]
    return {"method": method, "ipc": ipc, "preset": "cpu", "eval_models": EVAL_MODELS, **extra, **flags}


def base_vs_subsets_runs(s: str, flags: Callable[..., dict], lambda_from: str | None = None,
                         seeds: Sequence[int] = SEEDS, **val: Any) -> list[RunSpec]:
    """The runs of one setting `s` of a base-vs-subset-matching plan: the lambda_0 grid (LAMBDA_GRID) on a held-out
    split (seed 0, K = 2, `val`'s extra flags) unless lambda_0 comes from the setting `lambda_from`, then per seed of
    `seeds` the base method (K = 1) and + subset matching (K = 2, the grid's best lambda_0), seed-major (a partial
    study already pairs seeds).

    Args:
      flags: (setting, **fields) -> the run's flags (the plan's own budget).
    """
    lambda_from = lambda_from or s
    runs = []
    if lambda_from == s:
        for lam in LAMBDA_GRID:
            runs.append(RunSpec(f"{s}_val_lambda{lam:g}", f"{s}/val/lambda{lam:g}",
                                flags(s, subset_k=2, subset_lambda=lam, holdout=HOLDOUT, seed=0, **val)))
    for seed in seeds:
        runs.append(RunSpec(f"{s}_base_s{seed}", f"{s}/base", flags(s, subset_k=1, seed=seed)))
        runs.append(RunSpec(f"{s}_sm_s{seed}", f"{s}/sm",
                            flags(s, subset_k=2, subset_lambda=f"{SELECT}{lambda_from}/val/", seed=seed)))
    return runs


def preset_batch_real(setting: str) -> int:
    method, ipc, _ = SETTINGS[setting]
    return make_config(method, ipc, "cpu").batch_real


def seed_means(runs: list[dict]) -> np.ndarray:
    """Per-run (= per condensation seed) mean accuracy over its evaluation networks, in %."""
    return 100 * np.asarray([r["accuracy_mean"] for r in runs])


def real_per_step(cfg: dict) -> int:
    """Real images drawn per class per matching step: the whole-class batch plus, for K > 1, one per subset."""
    k = cfg.get("subset_k", 1)
    sub = (cfg.get("subset_batch_real") or cfg["batch_real"]) * k if k > 1 else 0
    return (0 if cfg.get("subset_only") else cfg["batch_real"]) + sub


def net_std(runs: list[dict]) -> float:
    """Mean over runs of the std (ddof 1, in points) of each run's evaluation-network accuracies."""
    return float(np.mean([100 * np.std(r["accuracies"], ddof=1) for r in runs]))


def spread_label(one_seed: bool) -> str:
    """What a figure's error bars show: with one seed, the only spread is its evaluation networks'."""
    return "bars: eval-net std (1 seed)" if one_seed else "mean ± std over seeds"


def fmt(v: np.ndarray) -> str:
    """mean ± std (ddof 1) over seeds; a single seed has no spread to show."""
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f} (1 seed)"


ALPHA = 0.05  # the verdicts' two-sided level


def paired_tests(diff: np.ndarray) -> tuple[float, float, float]:
    """(t, p, p_flip) of paired differences: the one-sample t statistic of their mean and its two-sided p-value
    (n - 1 degrees of freedom), and the two-sided p-value of the exact sign-flip permutation test (every one of the
    2^n sign assignments; it assumes no normality, and its smallest possible value is 2 / 2^n: 0.0625 at 5 pairs).
    NaN below 2 pairs or when every difference is 0; equal nonzero differences give t = +-inf, p = 0."""
    from scipy import stats

    diff = np.asarray(diff, np.float64)
    n = len(diff)
    mean, sd = diff.mean(), diff.std(ddof=1) if n > 1 else 0.0
    if n < 2 or (sd == 0 and mean == 0):
        return float("nan"), float("nan"), float("nan")
    # differences equal to float rounding count as equal: no spread, t infinite
    t = mean / (sd / np.sqrt(n)) if sd > 1e-9 * abs(mean) else np.copysign(np.inf, mean)
    p = float(2 * stats.t.sf(abs(t), n - 1))
    signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)  # (2^n, n) of +-1
    means = np.abs((signs * diff).mean(1))
    p_flip = float(np.mean(means >= abs(diff.mean()) - 1e-12))
    return float(t), p, p_flip


def tests_cell(diff: np.ndarray) -> str:
    """'t (p)' and the sign-flip p as two table cells."""
    t, p, p_flip = paired_tests(diff)
    return "n/a | n/a" if np.isnan(t) else f"{t:.2f} ({p:.3f}) | {p_flip:.3f}"


def verdict(diff: np.ndarray) -> str:
    """'helped' / 'hurt' when the paired t-test rejects a zero mean difference at ALPHA (two-sided), else 'within
    noise'."""
    if len(diff) < 2:
        return "n/a (1 seed)"
    _, p, _ = paired_tests(diff)
    if not p < ALPHA:
        return "within noise"
    return "helped" if diff.mean() > 0 else "hurt"


def figure(figsize: tuple[float, float]):
    """(fig, ax) on the file-only Agg backend (reports run on headless hosts); `finish` saves and closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def finish(fig, ax, title: str, path: Path, legend: bool = False, ylabel: str = "test accuracy (%)") -> None:
    """The figures' shared ending: axis label, title, optional legend, saved and closed."""
    import matplotlib.pyplot as plt

    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if legend:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def eval_curve(rows: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(iterations, accuracy %, std % over the eval networks) from a run's metrics rows' eval entries (the last
    entry per iteration wins)."""
    pts = {r["iteration"]: 100 * np.asarray(r["eval"]["accuracies"]) for r in rows if "eval" in r}
    its = np.asarray(sorted(pts))
    return (its, np.asarray([pts[i].mean() for i in its]),
            np.asarray([pts[i].std(ddof=1) if len(pts[i]) > 1 else 0.0 for i in its]))


def read_run(run_dir: Path) -> dict | None:
    """results.json of a finished run (None if absent)."""
    f = run_dir / "results.json"
    return json.loads(f.read_text()) if f.exists() else None


def group_runs(results: dict[str, dict], specs: Sequence[RunSpec]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for s in specs:
        if s.id in results:
            out.setdefault(s.group, []).append(results[s.id])
    return out


def by_seed(runs: list[dict]) -> dict[int, float]:
    """{seed: mean accuracy (%)} of a group's runs."""
    return {r["config"]["seed"]: 100 * r["accuracy_mean"] for r in runs}


def paired(a: dict, b: dict) -> np.ndarray:
    """b - a over the seeds both have (points)."""
    return np.asarray([b[k] - a[k] for k in sorted(set(a) & set(b))])


def base_vs_subsets(groups: dict[str, list[dict]], settings: Sequence[str], lambda_from: dict[str, str],
                    png: Path, title: str) -> list[str]:
    """The base-vs-subset-matching table (markdown lines) of settings whose `<s>/base` and `<s>/sm` groups exist,
    paired by seed, with the lambda_0 chosen on the held-out `<lambda_from[s]>/val/lambda<x>` groups; its bar figure
    is written to `png`."""
    lines = ["| setting | base (%) | + subset matching (%) | paired Δ (points) | t (p) | sign-flip p | verdict |"
             " λ0 (held-out acc. %) | base per seed | + SM per seed |", "|---|---|---|---|---|---|---|---|---|---|"]
    names, bars = [], []
    for s in settings:
        base, sm = groups.get(f"{s}/base", []), groups.get(f"{s}/sm", [])
        if not base or not sm:
            continue
        b, m = by_seed(base), by_seed(sm)
        diff = paired(b, m)
        val = "; ".join(f"{g.rsplit('lambda', 1)[1]}: {seed_means(rs).mean():.2f}"
                        for g, rs in groups.items() if g.startswith(f"{lambda_from[s]}/val/"))
        lam = sm[0]["config"]["subset_lambda"]
        lines.append(f"| {s} | {fmt(seed_means(base))} | {fmt(seed_means(sm))} | {fmt(diff)} | {tests_cell(diff)} | "
                     f"{verdict(diff)} | "
                     f"**{lam:g}** ({val}) | {', '.join(f'{b[k]:.2f}' for k in sorted(b))} | "
                     f"{', '.join(f'{m[k]:.2f}' for k in sorted(m))} |")
        names.append(s)
        bars.append((seed_means(base), seed_means(sm)))
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
        finish(fig, ax, title, png, legend=True)
    return lines
