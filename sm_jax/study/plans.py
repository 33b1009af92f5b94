"""The study plans by name: each a module with its runs (`runs() -> [RunSpec]`) and its report (`report(specs,
results, metrics, out) -> markdown`, writing its figure under `out`). Adding a plan is one module and one line."""
from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from sm_jax.errors import ConfigError
from sm_jax.study import arch, cpu, dm, full, k, loss, mtt, table
from sm_jax.study.spec import RunSpec

PLANS: dict[str, ModuleType] = {"table": table, "k": k, "loss": loss, "arch": arch, "dm": dm, "mtt": mtt, "cpu": cpu,
                                 "full": full}

# `--plan all`: the plans of minutes on a CPU (a plan module's BUDGET, default "cpu"; full is "paper")
ALL = tuple(n for n, m in PLANS.items() if getattr(m, "BUDGET", "cpu") == "cpu")


def load_plan(name: str) -> list[RunSpec]:
    """A built-in plan by name, or a JSON file: [{"id": .., "group": .., "flags": {..}}, ...].

    Raises:
      ConfigError: for an unknown plan, an unreadable file or duplicate run ids.
    """
    if name in PLANS:
        runs = PLANS[name].runs()
    else:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"unknown plan {name!r}; choose one of {', '.join(PLANS)} or give a JSON file")
        try:
            runs = [RunSpec(r["id"], r.get("group", r["id"]), dict(r["flags"])) for r in json.loads(path.read_text())]
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}: not a plan (a JSON list of {{id, group, flags}}): {e}") from None
    ids = [r.id for r in runs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"plan {name!r} has duplicate run ids")
    return runs


def plan_name(name: str) -> str:
    return name if name in PLANS else Path(name).stem
