"""The mtt plan: MTT against MTT + subset matching (K = 2, lambda_0 chosen on held-out data) at ipc 2, 3 seeds, the
`cpu` preset (2 experts of 4 epochs on 200 images per class, 10 unrolled steps, 60 iterations; 3 networks x 100
epochs at the learned lr). ipc 2 is the smallest ipc that K = 2 divides: each synthetic subset is one image per
class, its student unrolled on 10 images from an expert trained on that subset of the real images."""
from __future__ import annotations

from pathlib import Path

from sm_jax.study.common import base_vs_subsets, base_vs_subsets_runs, group_runs
from sm_jax.study.spec import RunSpec

MTT_SETTINGS = {"mtt2": ("mtt", 2, {})}


def flags(setting: str, **extra) -> dict:
    method, ipc, f = MTT_SETTINGS[setting]
    return {"method": method, "ipc": ipc, "preset": "cpu", **f, **extra}


def runs() -> list[RunSpec]:
    """The lambda_0 grid on a held-out split (seed 0), then per seed base MTT and MTT + subsets."""
    return [r for s in MTT_SETTINGS for r in base_vs_subsets_runs(s, flags)]


def report(specs, results, metrics, out: Path) -> str:
    """The base-vs-subsets table and bars (mtt.png)."""
    groups = group_runs(results, specs)
    return "\n".join(base_vs_subsets(groups, list(MTT_SETTINGS), {s: s for s in MTT_SETTINGS}, out / "mtt.png",
                                     "MTT, CIFAR-10 ipc 2, cpu preset; mean ± std over seeds (dots)"))
