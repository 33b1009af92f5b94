"""Multi-device execution: the class axis of condensation and the network axis of evaluation, sharded over a mesh.

Every (class, subset) matching term is independent given the network, so the class axis splits across devices with
no communication beyond the network's (replicated) parameters and the scalar losses; XLA's SPMD partitioner inserts
the few collectives the inner-loop training needs. With several processes (sm_jax.distributed), `jax.devices()`
lists every process's devices and the mesh spans them all: every process holds the whole host data, builds the
global arrays from it with `put` (each process supplies the shards of its own devices) and reads results back with
`host` (gathered from every process).
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sm_jax.errors import UserError

AXIS = "shard"


class ShardingError(UserError, ValueError):
    """A device count that cannot shard the run (one line, user-facing)."""


def mesh_of(devices) -> Mesh:
    """The 1-D mesh of the class and network axes over `devices` (the run's, or a compile-only topology's)."""
    return Mesh(np.asarray(devices), (AXIS,))


def make_mesh(devices: int) -> Mesh | None:
    """A 1-D mesh over the first `devices` devices (0 = all); None for a single device. With several processes
    the mesh spans every process's devices (`devices` 0, or the default 1, or their total)."""
    available = jax.devices()
    if jax.process_count() > 1:
        if devices not in (0, 1, len(available)):
            raise ShardingError(f"--devices {devices}: a run of {jax.process_count()} processes spans all their "
                                f"{len(available)} devices (--devices 0)")
        return mesh_of(available)
    n = len(available) if devices == 0 else devices
    if n > len(available):
        raise ShardingError(f"--devices {devices}: only {len(available)} {jax.default_backend()} device(s) visible")
    if n <= 1:
        return None
    return mesh_of(available[:n])


def divides(mesh: Mesh | None, size: int) -> bool:
    """Whether an axis of `size` splits evenly over the mesh (a program's arguments and results must; its
    intermediates need not: `constrain` asks XLA to split them unevenly, padding the last devices' share)."""
    return mesh is not None and size % mesh.size == 0


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


def sharding_of(a, mesh: Mesh, shard_leading: bool) -> NamedSharding:
    """Where `put` places the array `a`: axis 0 split over the mesh, or replicated (a scalar always is)."""
    return leading(mesh, np.ndim(a)) if shard_leading and np.ndim(a) else replicated(mesh)


def put(tree, mesh: Mesh | None, shard_leading: bool):
    """Places a pytree of host-identical values on the mesh: axis 0 of every leaf sharded, or every leaf
    replicated. Each process supplies only the shards of its own devices (`jax.make_array_from_callback`)."""
    if mesh is None:
        return tree

    def place(a):
        sharding = sharding_of(a, mesh, shard_leading)
        if jax.dtypes.issubdtype(getattr(a, "dtype", None), jax.dtypes.prng_key):  # typed keys: as their data
            data = np.asarray(jax.random.key_data(a))
            data = jax.make_array_from_callback(data.shape, sharding_of(data, mesh, shard_leading),
                                                lambda index: data[index])
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(place, tree)


def place_state(state, mesh: Mesh | None, class_axis):
    """A method's state on the mesh: its class-axis leaves (the images, their optimiser state) split by class where
    the classes divide evenly over the devices, else replicated (the step's per-class work is split over the devices
    either way: XLA pads an uneven split inside the program); every other leaf replicated.

    Returns:
      (the placed state, the `out_shardings` of a step that keeps this placement: one compiled program for the run;
      None without a mesh).
    """
    if mesh is None:
        return state, None
    state = jax.tree.map(lambda a, split: put(a, mesh, split), state, state_split(state, mesh, class_axis))
    return state, (jax.tree.map(lambda a: a.sharding, state), None)


def state_split(state, mesh: Mesh, class_axis):
    """Per leaf of a method's state, whether `place_state` splits it by class: the leaves whose axis 0 is the class
    axis (`class_axis`: Method.class_axis(state), a tree of bools like the state) where the classes divide evenly
    over the mesh."""
    classes = next((np.shape(a)[0] for a, c in zip(jax.tree.leaves(state), jax.tree.leaves(class_axis)) if c), 0)
    even = bool(classes) and divides(mesh, classes)
    return jax.tree.map(lambda c: even and c, class_axis)


def host(tree):
    """A host (numpy) copy of a pytree of arrays; with several processes each gathers the whole arrays (a
    collective: every process must call it)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    def gather(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:  # this process's own (or host) value
            return np.asarray(a)
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree.map(gather, tree)
