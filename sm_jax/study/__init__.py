"""Studies: named plans of runs, executed like any run (resumable), aggregated into tables and figures.

A plan (one module each: table, k, loss, arch, dm; see plans.py) is a list of `RunSpec`s, each a set of Config fields.
Each run lives in `<root>/<plan>/<id>` and checkpoints like any other run, so rerunning a study skips finished runs
and resumes unfinished ones. A field value `select:<group>` is resolved when the run starts: the value of that field
in the group's runs with the best mean accuracy (used to pick lambda_0 on a held-out split of the training set).
Finished runs' `results.json`, `metrics.jsonl` and `config.json` are copied to `<export>/<plan>/<id>/`, from which
`report` regenerates every table and figure.
"""
from sm_jax.study.common import fmt, group_runs, read_run, seed_means, verdict
from sm_jax.study.pack import PackError, pack, unpack
from sm_jax.study.plans import ALL, PLANS, load_plan, plan_name
from sm_jax.study.reports import OUT, load_exported, report
from sm_jax.study.runner import EXPORT, ROOT, resolve, run_plan
from sm_jax.study.spec import SELECT, SELECT_FROM, RunSpec

__all__ = ["ALL", "EXPORT", "OUT", "PLANS", "ROOT", "SELECT", "SELECT_FROM", "PackError", "RunSpec", "fmt",
           "group_runs", "load_exported", "load_plan", "pack", "plan_name", "read_run", "report", "resolve", "run_plan",
           "seed_means", "unpack", "verdict"]
