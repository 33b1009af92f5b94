"""ZCA whitening as trajectory matching's official code computes it (kornia's ZCAWhitening, eps 0.1), as a dataset
transform: fitted once on the whole training split in [0, 1] pixel space, cached beside the data, applied to every
image networks see (train, test, the synthetic set, which lives in ZCA space).

The whitening acts on the flattened image. The official code flattens (C, H, W) and this module (H, W, C); the two
are a permutation of the same coordinates, under which ZCA is equivariant (T' = P T P^T), so the whitened images
are the same up to that layout.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

EPS = 0.1  # kornia.enhance.ZCAWhitening(eps=0.1), as the official buffer.py and distill.py build it


@dataclasses.dataclass(frozen=True, eq=False)
class Zca:
    """x01 -> (flat(x01) - mean) @ transform; `inverse` maps back (for viewing a set).

    Attributes:
      mean: (D,) float32 mean of the flattened training images in [0, 1].
      transform: (D, D) float32 U diag((S + eps)^-1/2) U^T.
      inverse: (D, D) float32 U diag((S + eps)^1/2) U^T.
      source: what it was fitted on (for metadata).
    """

    mean: np.ndarray
    transform: np.ndarray
    inverse: np.ndarray
    source: str = ""

    def apply(self, x01: jax.Array) -> jax.Array:
        """(..., H, W, C) pixels in [0, 1] -> the same shape, whitened."""
        return whiten(jnp.asarray(self.mean), jnp.asarray(self.transform), x01)

    def normalizer(self) -> Partial:
        """`apply` as a pytree (jax.tree_util.Partial): handed to a jitted program as an argument, the (D, D)
        transform is one of its inputs. Closed over, it would be a constant of the program: 37.7 MB for 32x32x3
        images, written into every compiled program and persistent-cache entry that whitens, and hashed with it."""
        return Partial(whiten, jnp.asarray(self.mean), jnp.asarray(self.transform))

    def invert(self, x: jax.Array) -> jax.Array:
        """Whitened (..., H, W, C) -> [0, 1] pixel space (unclipped)."""
        shape = x.shape
        flat = jnp.matmul(x.reshape(-1, self.mean.shape[0]), jnp.asarray(self.inverse),
                          precision=jax.lax.Precision.HIGHEST)
        return (flat + jnp.asarray(self.mean)).reshape(shape)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"zca_mean": self.mean, "zca_transform": self.transform, "zca_inverse": self.inverse}


def whiten(mean: jax.Array, transform: jax.Array, x01: jax.Array) -> jax.Array:
    """(..., H, W, C) pixels in [0, 1] -> whitened: (flat(x01) - mean (D,)) @ transform (D, D)."""
    shape = x01.shape
    flat = x01.reshape(-1, mean.shape[0]) - mean
    return jnp.matmul(flat, transform, precision=jax.lax.Precision.HIGHEST).reshape(shape)


def fit_zca(train_x: np.ndarray, eps: float = EPS, source: str = "") -> Zca:
    """The ZCA of uint8 images (N, H, W, C): unbiased covariance (N - 1) of the flattened [0, 1] images, its
    eigendecomposition, T = U diag((S + eps)^-1/2) U^T (computed in float64)."""
    n = len(train_x)
    d = int(np.prod(train_x.shape[1:]))
    mean = np.zeros(d, np.float64)
    gram = np.zeros((d, d), np.float64)
    for start in range(0, n, 5000):  # in chunks: the float64 copy of 50,000 CIFAR images would be 1.2 GB
        x = train_x[start:start + 5000].reshape(-1, d).astype(np.float64) / 255.0
        mean += x.sum(0)
        gram += x.T @ x
    mean /= n
    cov = (gram - n * np.outer(mean, mean)) / (n - 1)
    s, u = np.linalg.eigh(cov)
    s = np.clip(s, 0.0, None)  # a covariance's eigenvalues: rounding can leave tiny negative ones
    transform = (u * (s + eps) ** -0.5) @ u.T
    inverse = (u * (s + eps) ** 0.5) @ u.T
    return Zca(mean.astype(np.float32), transform.astype(np.float32), inverse.astype(np.float32), source)


def data_fingerprint(train_x: np.ndarray) -> str:
    """A short hash of a training split's bytes: what a cached transform or an expert was fitted on."""
    h = hashlib.sha256()
    h.update(str(train_x.shape).encode())
    h.update(np.ascontiguousarray(train_x).data)
    return h.hexdigest()[:16]


def cached_zca(train_x: np.ndarray, cache_dir: str | os.PathLike, source: str = "") -> Zca:
    """`fit_zca(train_x)`, fitted once per training split and cached under `cache_dir`/zca/ (an atomic write)."""
    path = Path(cache_dir) / "zca" / f"{data_fingerprint(train_x)}_eps{EPS:g}.npz"
    if path.is_file():
        with np.load(path) as z:
            return Zca(z["zca_mean"], z["zca_transform"], z["zca_inverse"], str(z["source"]))
    zca = fit_zca(train_x, source=source)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **zca.arrays(), source=np.asarray(source))
    os.replace(tmp, path)
    return zca
