"""Multi-device execution: the class axis of condensation and the network axis of evaluation, sharded over a mesh.

Every (class, subset) matching term is independent given the network, so the class axis splits across devices with
no communication beyond the network's (replicated) parameters and the scalar losses; XLA's SPMD partitioner inserts
the few collectives the inner-loop training needs. On several hosts, call `jax.distributed.initialize()` first:
`jax.devices()` then lists every host's devices and the same code runs unchanged (see the README).
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sm_jax.errors import UserError

AXIS = "shard"


class ShardingError(UserError, ValueError):
    """A device count that cannot shard the run (one line, user-facing)."""


def make_mesh(devices: int) -> Mesh | None:
    """A 1-D mesh over the first `devices` devices (0 = all); None for a single device."""
    available = jax.devices()
    n = len(available) if devices == 0 else devices
    if n > len(available):
        raise ShardingError(f"--devices {devices}: only {len(available)} {jax.default_backend()} device(s) visible")
    if n <= 1:
        return None
    return Mesh(np.asarray(available[:n]), (AXIS,))


def check_divides(mesh: Mesh | None, size: int, what: str) -> None:
    if mesh is not None and size % mesh.size:
        raise ShardingError(f"{what} ({size}) is not divisible by the {mesh.size} devices of --devices")


def leading(mesh: Mesh, ndim: int) -> NamedSharding:
    """Shards axis 0 (classes or networks) of an ndim-array over the mesh; the other axes are whole."""
    return NamedSharding(mesh, PartitionSpec(AXIS, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def constrain(x: jax.Array, mesh: Mesh | None) -> jax.Array:
    """Inside jit: ask for x's axis 0 to be sharded over the mesh (a no-op without a mesh)."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, leading(mesh, x.ndim))


def put(tree, mesh: Mesh | None, shard_leading: bool):
    """Places a pytree on the mesh: axis 0 of every leaf sharded, or every leaf replicated."""
    if mesh is None:
        return tree
    return jax.tree.map(lambda a: jax.device_put(a, leading(mesh, np.ndim(a)) if shard_leading and np.ndim(a)
                                                 else replicated(mesh)), tree)
