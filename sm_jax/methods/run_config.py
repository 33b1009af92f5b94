"""A run's config as the methods see it.

The methods read the config's fields by name; `sm_jax.config.Config` is the one implementation. They never import
the config module: the config validates itself against the methods' registries (METHODS, INITS, PRESETS), and a
method naming `Config`, even for its types, would close an import cycle.
"""
from __future__ import annotations

from typing import Any, Protocol


class RunConfig(Protocol):
    """What a method is handed: an immutable object whose attributes are sm_jax.config.Config's fields and
    properties (`cfg.ipc`, `cfg.subset_k`, `cfg.syn_per_class`, ...)."""

    def __getattr__(self, name: str) -> Any: ...
