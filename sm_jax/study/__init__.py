"""Studies: named lists of runs executed through the normal CLI code path, resumable, aggregated into tables/figures.

A plan is a list of `RunSpec`s. Each run lives in `<root>/<plan>/<id>` and checkpoints like any other run, so
rerunning a study skips finished runs and resumes unfinished ones. A flag value `select:<group>` is resolved when
the run starts: the value of that flag in the group's runs with the best mean accuracy (used to pick lambda_0 on a
held-out split of the training set). Finished runs' `results.json`, `metrics.jsonl` and `config.json` are copied to
`<export>/<plan>/<id>/`, from which `report` regenerates every table and figure.
"""
from pathlib import Path  # noqa: F401  (tests and callers use study.Path)

from sm_jax.study.plans import (HOLDOUT, LAMBDA_FROM, LAMBDA_GRID, PLANS, SEEDS, SELECT, SELECT_FROM, SETTINGS,
                                RunSpec, load_plan, plan_name)
from sm_jax.study.reports import (OUT, REPORTS, fmt, load_exported, report, report_arch, report_k, report_loss,
                                  report_table, seed_means, verdict)
from sm_jax.study.runner import EXPORT, ROOT, group_runs, read_run, resolve, run_plan

__all__ = ["EXPORT", "HOLDOUT", "LAMBDA_FROM", "LAMBDA_GRID", "OUT", "PLANS", "REPORTS", "ROOT", "SEEDS", "SELECT",
           "SELECT_FROM", "SETTINGS", "RunSpec", "fmt", "group_runs", "load_exported", "load_plan", "plan_name",
           "read_run", "report", "report_arch", "report_k", "report_loss", "report_table", "resolve", "run_plan",
           "seed_means", "verdict"]
