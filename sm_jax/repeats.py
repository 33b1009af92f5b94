"""Several condensations of one configuration, as the papers report a cell: `num_exp` condensations (5 in the
official DC / DSA / DM codes) x their evaluation networks, mean ± std over all of them.

Experiment i is an ordinary run of seed `seed + i` in `<workdir>/exp<i>/`: its own checkpoints, set, evaluation and
artifacts, resumed like any run. An experiment that finished is read back, not redone; one stopped half-way resumes
from its checkpoint. `<workdir>/results.json` aggregates the experiments that are done, and is rewritten after
each one, so a stop loses at most the experiment in flight's unsaved iterations.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sm_jax import artifacts, distributed
from sm_jax.config import Config
from sm_jax.data import Dataset, load_dataset
from sm_jax.experiment import Run
from sm_jax.lifecycle import Stopped, StopSignals


def experiment_config(cfg: Config, i: int) -> Config:
    """Experiment i of `cfg`: seed cfg.seed + i, in <workdir>/exp<i>, one experiment."""
    return cfg.replace(seed=cfg.seed + i, workdir=str(Path(cfg.workdir) / f"exp{i}"), experiments=1)


def aggregate(cfg: Config, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The results of the experiments done so far.

    Args:
      cfg: the config of the whole (cfg.experiments experiments).
      rows: each finished experiment's results (its results.json), in experiment order.
    Returns:
      accuracies: every network of every experiment (experiments x eval_models), with their mean and std (the
        papers' figure); experiment_mean / experiment_std: the mean and std of the per-experiment means; experiments:
        one row per experiment (seed, workdir, its mean, std, accuracies and device seconds); done / planned;
        iterations (each experiment's, once all are done); device_seconds (summed over the experiments done).
    """
    accs = [a for r in rows for a in (r.get("accuracies") or [])]
    means = [r["accuracy_mean"] for r in rows if r.get("accuracy_mean") is not None]
    return {
        "accuracies": accs,
        "accuracy_mean": float(np.mean(accs)) if accs else None,
        "accuracy_std": float(np.std(accs)) if accs else None,
        "experiment_mean": float(np.mean(means)) if means else None,
        "experiment_std": float(np.std(means)) if means else None,
        "experiments": [{"experiment": i, "seed": r["config"]["seed"], "workdir": r["config"]["workdir"],
                         "accuracy_mean": r.get("accuracy_mean"), "accuracy_std": r.get("accuracy_std"),
                         "accuracies": r.get("accuracies"), "iterations": r.get("iterations"),
                         "device_seconds": r.get("device_seconds")}
                        for i, r in enumerate(rows)],
        "done": len(rows), "planned": cfg.experiments,
        "device_seconds": float(sum(r.get("device_seconds") or 0.0 for r in rows)),
        # a finished whole has the run's iterations, as a finished run does (what a study checks); else None
        "iterations": min(r.get("iterations") or 0 for r in rows) if len(rows) == cfg.experiments else None,
        "config": json.loads(cfg.to_json()),
    }


def execute(cfg: Config, data: Dataset | None = None, progress: bool = True, log=print) -> dict[str, Any]:
    """Runs cfg.experiments condensations (one: the plain run in cfg.workdir) and returns the results.

    Raises:
      Stopped, Diverged: as Run.execute, for the experiment in flight; the experiments before it stay done. A stop
        that comes after an experiment's last check (during its final files) stops before the next one.
    """
    if cfg.experiments == 1:
        return Run(cfg, data=data, progress=progress, log=log).execute()
    workdir, rows = Path(cfg.workdir), []
    with StopSignals() as stop:
        # read once for all experiments
        data = data if data is not None else load_dataset(cfg.dataset, cfg.data_dir, res=cfg.res)
        for i in range(cfg.experiments):
            if distributed.stop_agreed(stop):
                raise Stopped(stop.signum, f"stopped by {stop.name} with {i} of {cfg.experiments} experiments done "
                                           f"in {workdir}; rerun the same command to go on")
            run = Run(experiment_config(cfg, i), data=data, progress=progress, log=log)
            log(f"experiment {i + 1}/{cfg.experiments} (seed {cfg.seed + i}): {run.workdir}")
            rows.append(run.execute())
            if distributed.is_writer():
                workdir.mkdir(parents=True, exist_ok=True)
                (workdir / "config.json").write_text(cfg.to_json())
                artifacts.write_json(workdir / "results.json", aggregate(cfg, rows))
    return aggregate(cfg, rows)
