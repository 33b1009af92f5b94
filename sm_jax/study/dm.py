"""The dm plan: base DM against DM + subset matching (K = 2, lambda_0 chosen on held-out data) at ipc 10, 3 seeds,
1,000 iterations (5 % of the paper's 20,000)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sm_jax.study.common import base_vs_subsets, base_vs_subsets_runs, figure, finish, group_runs
from sm_jax.study.spec import RunSpec

# DM is forward-only on the real side, so it affords far more iterations than the gradient methods' plans: 1,000
# iterations at 32 real images per class (per subset too), evaluated as DSA with 5 networks x 300 epochs (the paper:
# 20 x 1000). Measured on 2 cores: 1.2 s per K = 2 iteration, about 6 minutes per 5-network evaluation; the 9 runs
# take about 3 hours.
DM_SETTINGS = {"dm10": ("dm", 10, {"iterations": 1000, "batch_real": 32, "eval_epochs": 300, "eval_models": 5,
                                   "checkpoint_every": 100})}
SMOOTH = 50  # iterations per point of the loss figure: each DM iteration draws a new network, so L_all is noisy


def flags(setting: str, **extra) -> dict:
    method, ipc, f = DM_SETTINGS[setting]
    return {"method": method, "ipc": ipc, "preset": "cpu", **f, **extra}


def runs() -> list[RunSpec]:
    """The lambda_0 grid on a held-out split (seed 0, 2 networks), then per seed base DM and DM + subsets."""
    return [r for s in DM_SETTINGS for r in base_vs_subsets_runs(s, flags, eval_models=2)]


def loss_curve(rows: list[dict], window: int = SMOOTH) -> tuple[np.ndarray, np.ndarray]:
    """(last iteration of each window, mean whole-class matching loss L_all over the window) of a run's steps; a
    partial last window is dropped."""
    pts = {r["iteration"]: r["loss_all"] for r in rows if "loss_all" in r}
    loss = np.asarray([pts[i] for i in sorted(pts)], float)
    n = len(loss) // window
    its = np.asarray(sorted(pts))[window - 1:n * window:window]
    return its, loss[:n * window].reshape(n, window).mean(axis=1)


def report(specs, results, metrics, out: Path) -> str:
    """The base-vs-subsets table and bars (dm.png), and the whole-class loss L_all along the iterations of the base
    and subset runs (dm_loss.png: does the subset term slow the method's own objective?)."""
    groups = group_runs(results, specs)
    lines = base_vs_subsets(groups, list(DM_SETTINGS), {s: s for s in DM_SETTINGS}, out / "dm.png",
                            "DM, CIFAR-10 ipc 10, 1000 iterations; mean ± std over seeds (dots)")
    curves = {}
    for s in specs:
        if s.id in results and s.id in metrics and s.group.endswith(("/base", "/sm")):
            its, loss = loss_curve(metrics[s.id])
            if len(its):
                curves.setdefault(s.group, []).append((its, loss))
    if curves:
        fig, ax = figure(figsize=(5.0, 3.2))
        for group, cs in sorted(curves.items()):
            n = min(len(c[0]) for c in cs)  # seeds' curves share their logged iterations
            its, mean = cs[0][0][:n], np.mean([c[1][:n] for c in cs], axis=0)
            ax.plot(its, mean, label=f"{group.split('/')[-1]} ({len(cs)} seed{'s' * (len(cs) > 1)})")
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        finish(fig, ax, f"DM's L_all, mean over seeds ({SMOOTH}-iteration windows)",
               out / "dm_loss.png", legend=True, ylabel="L_all (sum over classes)")
    return "\n".join(lines)
