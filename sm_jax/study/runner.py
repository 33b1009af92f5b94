"""Running a plan: every run built by `make_config` from its fields, resumable, finished runs exported for the
reports."""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sm_jax.config import Config, fit_batches, run_differences
from sm_jax.errors import ConfigError
from sm_jax.study.common import group_runs, read_run
from sm_jax.study.plans import load_plan, plan_name
from sm_jax.study.spec import SELECT, SELECT_FROM, RunSpec

ROOT = "runs/study"  # run directories: ROOT/PLAN/RUN
EXPORT = "docs/study/runs"  # committed copies of finished runs' small files: EXPORT/PLAN/RUN


def exported_results(export: str | Path, name: str) -> tuple[list[RunSpec], dict[str, dict]]:
    """(specs, {id: results}) of plan `name`'s finished runs under `export`."""
    specs = load_plan(name)
    found = {s.id: read_run(Path(export) / plan_name(name) / s.id) for s in specs}
    return specs, {k: v for k, v in found.items() if v is not None}


def resolve(spec: RunSpec, specs: Sequence[RunSpec], results: dict[str, dict],
            export: str | Path | None = EXPORT) -> dict[str, Any]:
    """Values of the spec's `select:` flags: the flag's value in the best (mean accuracy) matching group; for
    `select-from:<plan>:<group>`, among that plan's runs exported under `export`."""
    out = {}
    for flag, v in spec.flags.items():
        if isinstance(v, str) and v.startswith(SELECT_FROM):
            other, prefix = v[len(SELECT_FROM):].split(":", 1)
            other_specs, other_results = exported_results(export, other)
            out[flag] = resolve(RunSpec(spec.id, spec.group, {flag: f"{SELECT}{prefix}"}), other_specs,
                                other_results)[flag]
            continue
        if not (isinstance(v, str) and v.startswith(SELECT)):
            continue
        prefix = v[len(SELECT):]
        cands = [s for s in specs if s.group.startswith(prefix)]
        missing = [s.id for s in cands if s.id not in results]
        if not cands or missing:
            raise ConfigError(f"run {spec.id}: {flag} selects from group {prefix!r}, whose runs "
                              f"{'do not exist' if not cands else 'are unfinished: ' + ', '.join(missing)}")
        groups = group_runs(results, cands)
        best = max(groups, key=lambda g: (np.mean([r["accuracy_mean"] for r in groups[g]]), g))
        out[flag] = groups[best][0]["config"][flag]
    return out


def run_plan(name: str, root: str | Path = ROOT, export: str | Path = EXPORT,
             data_dir: str | None = None, log: Callable[[str], None] = print,
             execute: Callable[[Config], dict] | None = None,
             overrides: dict[str, Any] | None = None) -> dict[str, dict]:
    """Runs (or resumes) every run of a plan in order, skipping finished ones (results.json in the run directory or,
    in a fresh clone, in the committed export); returns {id: results}.

    Args:
      name: built-in plan name or JSON plan path.
      root: where run directories live (`<root>/<plan>/<id>`).
      export: where finished runs' small files are copied for reporting (None: no copy).
      data_dir: every run's data_dir.
      execute: fn(config) -> results; default: `repeats.execute(config)` (a run, or its --experiments) with each
        dataset loaded once.
      overrides: Config fields set in every run, over the plan's own (a plan tried at a reduced budget).
    Raises:
      ConfigError: for a run whose fields do not make a valid config (before it starts).
      Stopped: on SIGINT / SIGTERM, from the run in flight once it saved, or before the next run.
    """
    from sm_jax import distributed, repeats
    from sm_jax.data import load_dataset
    from sm_jax.lifecycle import Stopped, StopSignals

    specs = load_plan(name)
    pname = plan_name(name)
    cache: dict[Any, Any] = {}

    def data_for(cfg: Config):
        if (cfg.dataset, cfg.data_dir, cfg.res) not in cache:
            cache[cfg.dataset, cfg.data_dir, cfg.res] = load_dataset(cfg.dataset, cfg.data_dir, res=cfg.res)
        return cache[cfg.dataset, cfg.data_dir, cfg.res]

    def default_execute(cfg: Config) -> dict:
        return repeats.execute(cfg, data=data_for(cfg), progress=False, log=log)

    execute = execute or default_execute
    results: dict[str, dict] = {}
    with StopSignals() as stop:
        for i, spec in enumerate(specs):
            if distributed.stop_agreed(stop):
                raise Stopped(stop.signum, f"stopped by {stop.name} before run {spec.id} ({i} of {len(specs)} "
                                           f"done); rerun the same command to go on")
            run_dir = Path(root) / pname / spec.id
            try:
                cfg = spec.config(run_dir, data_dir, {**resolve(spec, specs, results, export), **(overrides or {})})
            except ConfigError as e:
                raise ConfigError(f"plan {pname!r}, run {spec.id}: {e}") from None
            # a finished run's results: its directory's, else the committed export's (a fresh clone has no runs/)
            done = read_run(run_dir) or (read_run(Path(export) / pname / spec.id) if export is not None else None)
            # a run records its batches fitted to the data (config.fit_batches): compare with what it ran
            ran = fit_batches(cfg, data_for(cfg), log=lambda *a: None) if done and execute is default_execute else cfg
            if done is not None and done.get("iterations") == cfg.iterations \
                    and not run_differences(done.get("config", {}), ran, results=True):
                results[spec.id] = done
                log(f"[{i + 1}/{len(specs)}] {spec.id}: done ({100 * done['accuracy_mean']:.2f}%)")
            else:
                t0 = time.time()
                log(f"[{i + 1}/{len(specs)}] {spec.id}: running {cfg.method} ipc {cfg.ipc} K {cfg.subset_k} "
                    f"lambda_0 {cfg.subset_lambda:g} seed {cfg.seed} in {run_dir}")
                results[spec.id] = execute(cfg)
                log(f"[{i + 1}/{len(specs)}] {spec.id}: {100 * results[spec.id]['accuracy_mean']:.2f}% "
                    f"in {time.time() - t0:.0f} s")
            if export is not None:
                dst = Path(export) / pname / spec.id
                dst.mkdir(parents=True, exist_ok=True)
                for f in ("results.json", "metrics.jsonl", "config.json"):
                    if (run_dir / f).exists():
                        shutil.copyfile(run_dir / f, dst / f)
    return results
