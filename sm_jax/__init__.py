"""sm_jax: dataset condensation by gradient matching (DC, DSA, IDC) and distribution matching (DM) with subset
matching, in JAX.

The notebook entry points, over the same code as the command line:
  sm_jax.condense(method, ipc, **fields)  condense (resuming a run in the same workdir) and evaluate
  sm_jax.evaluate(path, **fields)         evaluate a run directory's checkpoint, or any condensed set
  sm_jax.load_set(path)                   a condensed set (ours or the official codes') as an ImageSet
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def condense(method: str, ipc: int, *, dataset: str = "cifar10", preset: str = "paper", progress: bool = True,
             **fields: Any) -> dict[str, Any]:
    """Condenses `dataset` with `method` at `ipc` images per class and evaluates the set, as
    `python -m experiments.condense` does (same defaults: the method's preset, then `fields`).

    Args:
      fields: Config fields, e.g. subset_k=2, iterations=20, data_dir="../shared/data/cifar10-jpeg.tar.gz",
        workdir="runs/x" (default: config.default_workdir's). A workdir holding this run's checkpoint resumes it.
    Returns:
      the run's results.json content (accuracies, config, budget, ...).
    Raises:
      sm_jax.errors.UserError: for a bad field or value, missing data, a workdir holding another run.
    """
    from sm_jax import repeats
    from sm_jax.config import default_workdir, make_config

    cfg = make_config(method, ipc, preset, dataset, **fields)
    if "workdir" not in fields:
        cfg = cfg.replace(workdir=default_workdir(cfg))
    return repeats.execute(cfg, progress=progress)


def evaluate(path: str | Path, *, step: int | None = None, dataset: str | None = None, method: str | None = None,
             progress: bool = True, **fields: Any) -> dict[str, Any]:
    """Evaluates a run directory's checkpoint (latest, or `step`) with its method's protocol, or any condensed set
    (see `load_set`) with its metadata's run config, else `method`'s preset on `dataset`.

    Args:
      fields: Config fields overriding the protocol, e.g. eval_models=5, eval_arch="M", baseline="random".
    Returns:
      the results (as `python -m experiments.evaluate` prints them), also written to results.json.
    """
    p = Path(path)
    if (p / "checkpoints").is_dir():
        from sm_jax.experiment import evaluate_checkpoint

        return evaluate_checkpoint(p, step, fields, progress=progress)
    from sm_jax.sets.evaluate import evaluate_set_path

    return evaluate_set_path(p, fields, dataset=dataset, method=method, progress=progress)


def load_set(path: str | Path, dataset: str | None = None, factor: int | None = None, index: int = 0):
    """A condensed set as an `ImageSet` (images per class, normalised; `.pixels()` in [0, 1]; class names; the
    normalisation; metadata): an exported folder / npz / pt, a run's synthetic.npz or directory, the official
    DC/DSA/DM `res_*.pt` or IDC's `data.pt` (`dataset` gives the normalisation of a set without metadata)."""
    from sm_jax.sets import load_set as _load

    return _load(path, dataset=dataset, factor=factor, index=index)


__all__ = ["__version__", "condense", "evaluate", "load_set"]
