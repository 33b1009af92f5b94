"""The initialisations of the synthetic images, by name (Config.init): `INITS[name](data, key, ipc, factor,
normalize)` returns the stored images (classes, ipc, H, W, C) a run starts from. They take what they need, not the
method, so that the methods' base can name them without a cycle."""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sm_jax.data import Dataset
from sm_jax.errors import ConfigError


def idc_init(train_x: np.ndarray, class_idx: np.ndarray, ipc: int, factor: int = 2) -> jax.Array:
    """IDC's init: the first factor^2 * ipc images of each class, subsampled by `factor` and tiled.

    Block k (row-major) of stored image j holds real image k * ipc + j of the class.
    Returns:
      (classes, ipc, H, W, C) float32 in [0, 1].
    """
    n = factor * factor * ipc
    out = []
    for row in class_idx:
        row = row[row >= 0]
        if len(row) < n:
            raise ConfigError(f"IDC init needs {n} images per class, a class has {len(row)}")
        small = train_x[row[:n]][:, ::factor, ::factor].astype(np.float32) / 255.0  # (f*f*ipc, h, w, C)
        h, w, ch = small.shape[1:]
        blocks = small.reshape(factor, factor, ipc, h, w, ch)  # (block row, block col, image, ...)
        out.append(blocks.transpose(2, 0, 3, 1, 4, 5).reshape(ipc, factor * h, factor * w, ch))
    return jnp.asarray(np.stack(out))


# every init: (data, key, ipc, factor, normalize: [0, 1] pixels -> the method's image space) -> stored images
Init = Callable[[Dataset, jax.Array, int, int, Callable[[jax.Array], jax.Array]], jax.Array]


def _init_noise(data: Dataset, key: jax.Array, ipc: int, factor: int, normalize) -> jax.Array:
    return jax.random.normal(key, (data.num_classes, ipc, *data.train_x.shape[1:]), jnp.float32)


def _init_real(data: Dataset, key: jax.Array, ipc: int, factor: int, normalize) -> jax.Array:
    picks = [jax.random.choice(k, row[row >= 0], (ipc,), replace=False)
             for k, row in zip(jax.random.split(key, data.num_classes), data.class_indices())]
    rows = data.train_x[np.asarray(jnp.stack(picks))]  # (classes, ipc, H, W, C): read on the host, not the split
    return normalize(jnp.asarray(rows).astype(jnp.float32) / 255.0)


def _init_idc(data: Dataset, key: jax.Array, ipc: int, factor: int, normalize) -> jax.Array:
    return idc_init(data.train_x, data.class_indices(), ipc, factor)


# Config.init: random normal (DC), real images of the class (DSA), IDC's tiled subsampled real images (any method)
INITS: dict[str, Init] = {"noise": _init_noise, "real": _init_real, "idc": _init_idc}
