"""What the plans share: the reduced-budget settings and seeds, and the reports' statistics and figures."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sm_jax.config import make_config
from sm_jax.study.spec import RunSpec

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


def verdict(diff: np.ndarray) -> str:
    """'helped' / 'hurt' when the paired seed differences' mean is beyond 2 standard errors of 0, else 'noise'."""
    if len(diff) < 2:
        return "n/a (1 seed)"
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    if diff.mean() > 2 * se:
        return "helped"
    if diff.mean() < -2 * se:
        return "hurt"
    return "within noise"


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
