"""The condensation methods, by name: one module each, one registry.

`METHODS[name]` is a `Method` subclass that owns its presets (`paper_preset`, `cpu_preset`), its distance, its
augmentation policies and its evaluation protocol; `make_method(config, spec, mesh)` builds the configured one.
Adding a method is one module and one line here.
"""
from __future__ import annotations

from sm_jax.data import DataSpec
from sm_jax.methods.base import PRESETS, Method
from sm_jax.methods.context import CondenseState, Context, make_context, make_partitions, real_batch
from sm_jax.methods.dc import DC
from sm_jax.methods.dm import DM
from sm_jax.methods.dsa import DSA
from sm_jax.methods.gradient import GradientMatching
from sm_jax.methods.idc import IDC, idc_decode
from sm_jax.methods.inits import INITS, idc_init
from sm_jax.methods.mtt import MTT

METHODS: dict[str, type[Method]] = {"dc": DC, "dsa": DSA, "idc": IDC, "dm": DM, "mtt": MTT}


def make_method(cfg, spec=None, mesh=None) -> Method:
    """The method `cfg.method` for a dataset's DataSpec (default: CIFAR-10's); `mesh` shards its class axis
    (sharding.py)."""
    return METHODS[cfg.method](cfg, spec or DataSpec(), mesh)


__all__ = ["DC", "DM", "DSA", "IDC", "INITS", "METHODS", "MTT", "PRESETS", "CondenseState", "Context",
           "GradientMatching", "Method", "idc_decode", "idc_init", "make_context", "make_method", "make_partitions",
           "real_batch"]
