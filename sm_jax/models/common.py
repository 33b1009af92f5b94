"""What every model shares: the input normalisation, PyTorch's default init and the loss."""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

# CIFAR-10 channel statistics used by all three methods (no ZCA).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


def normalize(x01: jax.Array, mean=MEAN, std=STD) -> jax.Array:
    """Map [0, 1] pixels (..., H, W, C) to the normalised space the networks see (the dataset's per-channel
    mean and std; CIFAR-10's by default)."""
    return (x01 - jnp.asarray(mean, x01.dtype)) / jnp.asarray(std, x01.dtype)


def denormalize(x: jax.Array, mean=MEAN, std=STD) -> jax.Array:
    """Inverse of `normalize`."""
    return x * jnp.asarray(std, x.dtype) + jnp.asarray(mean, x.dtype)


def torch_uniform(fan_in: int) -> Callable[..., jax.Array]:
    """PyTorch's default Conv/Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean cross-entropy over the batch; `weights` (batch,) masks padded rows (mean over the weighted rows)."""
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
    if weights is None:
        return nll.mean()
    return (nll * weights).sum() / jnp.maximum(weights.sum(), 1.0)
