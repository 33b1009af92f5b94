"""The training images kept on the host (`--data-on host`): a run's programs gather the rows they draw through a
host callback, so the device holds the batches, never the split."""
from __future__ import annotations

import os
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from sm_jax.errors import UserError


class HostStore:
    """The training images kept on the host: rows gathered on request (inside a program, through a host callback),
    so only the batches reach the device.

    A memory-mapped array is read with `os.pread`, row by row, so the pages stay in the page cache and out of the
    process's resident memory; an in-memory array is indexed. Static under `jax.jit` (no array leaves): a program
    that gathers from a store is compiled for it.
    """

    def __init__(self, images: np.ndarray):
        self.shape, self.dtype = tuple(images.shape), np.dtype(images.dtype)
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._images, self._fd, self._offset = images, None, 0
        filename = getattr(images, "filename", None)
        if isinstance(images, np.memmap) and filename and images.flags.c_contiguous:
            self._fd, self._offset = os.open(filename, os.O_RDONLY), int(images.offset)
            self._images = None  # do not keep the mapping: its touched pages would count as this process's memory
            weakref.finalize(self, os.close, self._fd)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def gather(self, idx: np.ndarray) -> np.ndarray:
        """Rows `idx` (any shape, int) -> uint8 images (*idx.shape, H, W, C)."""
        idx = np.asarray(idx)
        if self._fd is None:
            return np.asarray(self._images)[idx]
        flat = idx.reshape(-1)
        out = np.empty((flat.size, self.row_bytes), np.uint8)
        for i, r in enumerate(flat.tolist()):
            n = os.preadv(self._fd, [out[i]], self._offset + r * self.row_bytes)
            if n != self.row_bytes:
                raise UserError(f"training image {r} could not be read from the store ({n} bytes)")
        return out.view(self.dtype).reshape(*idx.shape, *self.shape[1:])

    def __getitem__(self, idx):
        """`store[idx]` inside a program: the rows through a host callback (vmapped: the indices stay batched)."""
        idx = jnp.asarray(idx, jnp.int32)
        out = jax.ShapeDtypeStruct((*idx.shape, *self.shape[1:]), self.dtype)
        return jax.pure_callback(self.gather, out, idx, vmap_method="expand_dims")


jax.tree_util.register_static(HostStore)


HOST_ABOVE = 2 << 30  # `--data-on auto`: a training split larger than this stays on the host


def data_on(where: str, nbytes: int) -> str:
    """'device' or 'host' for `--data-on where` and a training split of `nbytes`: auto keeps a split on the device
    when it is at most 2 GiB and at most 1/8 of the device's memory (where the device reports it)."""
    if where != "auto":
        return where
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except jax.errors.JaxRuntimeError:  # a backend that keeps no statistics
        stats = {}
    limit = min(HOST_ABOVE, stats.get("bytes_limit", HOST_ABOVE * 8) // 8)
    return "host" if nbytes > limit else "device"


def place_train(data, where: str = "auto") -> jax.Array | HostStore:
    """The training images where `--data-on` puts them: one device array, or a HostStore that programs index."""
    if data_on(where, data.train_x.nbytes) == "host":
        return HostStore(data.train_x)
    return jnp.asarray(data.train_x)
