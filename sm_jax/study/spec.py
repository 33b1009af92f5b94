"""A study's run: an id, a group and the Config fields it sets."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sm_jax.config import Config, make_config

SELECT = "select:"  # a field value `select:<group>`: the value of the best group's runs (within the plan)
SELECT_FROM = "select-from:"  # `select-from:<plan>:<group>`: the same, among another plan's exported runs


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a study.

    Attributes:
      id: directory name of the run inside the plan's directory.
      group: runs that differ only by seed share a group (a table cell / a point of a figure).
      flags: `make_config` arguments (Config fields, method, ipc, preset and dataset among them), e.g.
        {"method": "dc", "ipc": 10}; a value "select:<group>" takes that field's value from the best run group whose
        name starts with <group>.
    """

    id: str
    group: str
    flags: dict[str, Any]

    def config(self, workdir: Path, data_dir: str | None, resolved: dict[str, Any]) -> Config:
        """The run's Config (ConfigError for a bad field or value), `resolved` replacing its `select:` values."""
        return make_config(**{**self.flags, **resolved, "workdir": str(workdir), "data_dir": data_dir})
