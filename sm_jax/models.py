"""ConvNet-D (DC/DSA/IDC's network) as a Flax Linen module with PyTorch-default init."""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

# CIFAR-10 channel statistics used by all three methods (no ZCA).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


def normalize(x01: jax.Array) -> jax.Array:
    """Map [0, 1] pixels (..., H, W, 3) to the normalised space the networks see."""
    return (x01 - jnp.asarray(MEAN, x01.dtype)) / jnp.asarray(STD, x01.dtype)


def denormalize(x: jax.Array) -> jax.Array:
    """Inverse of `normalize`."""
    return x * jnp.asarray(STD, x.dtype) + jnp.asarray(MEAN, x.dtype)


def torch_uniform(fan_in: int) -> Callable[..., jax.Array]:
    """PyTorch's default Conv/Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


NORMS = ("instancenorm", "layernorm", "none")
CONV_IMPLS = ("patches", "xla")


def conv3x3_patches(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 SAME stride-1 convolution as im2col + one matmul.

    Same result as lax.conv_general_dilated, but its parameter gradient is a plain (batched) matmul, which
    XLA:CPU runs several times faster than the convolution-gradient form, especially under vmap.
    Args:
      x: (N, H, W, Cin); kernel: (3, 3, Cin, Cout) (HWIO).
    Returns:
      (N, H, W, Cout).
    """
    n, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=-1)
    return patches @ kernel.reshape(9 * c, -1)


class Conv3x3(nn.Module):
    """nn.Conv(features, (3, 3), padding='SAME') with a selectable implementation and the same params."""

    features: int
    impl: str = "patches"

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1] * 9
        kernel = self.param("kernel", torch_uniform(fan_in), (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", torch_uniform(fan_in), (self.features,))
        if self.impl == "patches":
            y = conv3x3_patches(x, kernel)
        else:
            y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias


class InstanceNorm(nn.Module):
    """Per-sample, per-channel normalisation over H, W (biased variance) with affine scale/shift."""

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        mean = x.mean(axis=(1, 2), keepdims=True)
        var = jnp.square(x - mean).mean(axis=(1, 2), keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class ConvNet(nn.Module):
    """depth x [conv3x3 -> norm -> relu -> avgpool2] -> dense.

    Attributes:
      num_classes: output size.
      width: channels of every conv.
      depth: number of conv blocks.
      norm: 'instancenorm' (GroupNorm, one group per channel, eps 1e-5), 'layernorm' (one group), or 'none'.
    """

    num_classes: int = 10
    width: int = 128
    depth: int = 3
    norm: str = "instancenorm"
    conv_impl: str = "patches"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # x: (batch, H, W, C) normalised images -> (batch, num_classes) logits
        for i in range(self.depth):
            x = Conv3x3(self.width, self.conv_impl, name=f"conv{i}")(x)
            if self.norm == "instancenorm":
                x = InstanceNorm(1e-5, name=f"norm{i}")(x)
            elif self.norm == "layernorm":
                x = nn.GroupNorm(num_groups=1, epsilon=1e-5, name=f"norm{i}")(x)
            x = nn.relu(x)
            n, h, w, c = x.shape
            x = x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))  # AvgPool 2x2, stride 2
        x = x.reshape(x.shape[0], -1)
        fan_in = x.shape[-1]
        return nn.Dense(self.num_classes, kernel_init=torch_uniform(fan_in), bias_init=torch_uniform(fan_in),
                        name="fc")(x)


def make_model(num_classes: int = 10, width: int = 128, depth: int = 3, norm: str = "instancenorm",
               conv_impl: str = "patches") -> ConvNet:
    """Builds a ConvNet; raises ValueError for an unknown norm or conv implementation."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv implementation {conv_impl!r}; choose one of {', '.join(CONV_IMPLS)}")
    return ConvNet(num_classes=num_classes, width=width, depth=depth, norm=norm, conv_impl=conv_impl)


def init_params(model: ConvNet, key: jax.Array, image_shape=(32, 32, 3)) -> Any:
    """Fresh parameters for `model` (a pytree of arrays)."""
    return model.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean cross-entropy over the batch; `weights` (batch,) masks padded rows (mean over the weighted rows)."""
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
    if weights is None:
        return nll.mean()
    return (nll * weights).sum() / jnp.maximum(weights.sum(), 1.0)
