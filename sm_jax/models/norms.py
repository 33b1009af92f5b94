"""The normalisation layers of the official networks, by name: instance, batch, layer, group, none.

All take a `train` flag; only batch norm uses it (batch statistics and a running-average update in training,
the running averages in evaluation).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from sm_jax.models.layers import InstanceNorm


class BatchNorm(nn.Module):
    """PyTorch's BatchNorm2d (momentum 0.1, eps 1e-5): normalises with the batch's mean and biased variance in
    training and updates the running averages with the unbiased variance; evaluation uses the running averages.

    The running averages live in the `batch_stats` collection (a network's `state`, carried by the pure loops).
    """

    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        mean_ra = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        var_ra = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = x.mean(axes)
            var = jnp.square(x - mean).mean(axes)
            if not self.is_initializing():
                n = x.size // c
                m = self.momentum
                mean_ra.value = (1 - m) * mean_ra.value + m * jax.lax.stop_gradient(mean)
                var_ra.value = (1 - m) * var_ra.value + m * jax.lax.stop_gradient(var) * n / max(n - 1, 1)
        else:
            mean, var = mean_ra.value, var_ra.value
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class LayerNorm(nn.Module):
    """PyTorch's LayerNorm over (C, H, W) with an elementwise affine of that shape, as the official ConvNet's
    'layernorm' (its parameters grow with the feature map)."""

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, x.shape[1:])
        bias = self.param("bias", nn.initializers.zeros, x.shape[1:])
        axes = tuple(range(1, x.ndim))
        mean = x.mean(axes, keepdims=True)
        var = jnp.square(x - mean).mean(axes, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class GroupNorm(nn.Module):
    """PyTorch's GroupNorm(groups, C) with per-channel affine; the official 'groupnorm' uses 4 groups."""

    groups: int = 4
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return nn.GroupNorm(num_groups=self.groups, epsilon=self.epsilon, name="gn")(x)


# name -> constructor(label) of the module (None: no norm)
NORMS = {"instancenorm": lambda label: InstanceNorm(1e-5, name=label), "batchnorm": lambda label: BatchNorm(name=label),
         "layernorm": lambda label: LayerNorm(name=label), "groupnorm": lambda label: GroupNorm(name=label),
         "none": lambda label: None}


def make_norm(name: str, label: str):
    """A norm module named `label` (None for 'none'); ValueError for an unknown name."""
    if name not in NORMS:
        raise ValueError(f"unknown norm {name!r}; choose one of {', '.join(NORMS)}")
    return NORMS[name](label)


def apply_norm(norm, x: jax.Array, train: bool) -> jax.Array:
    """Applies a module made by `make_norm` (identity for None); instance norm takes no train flag."""
    if norm is None:
        return x
    return norm(x) if isinstance(norm, InstanceNorm) else norm(x, train)
