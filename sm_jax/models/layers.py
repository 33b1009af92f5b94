"""Layers the architectures are built from: the convolutions (ConvNet's 3x3 one and any other), the dense layer,
instance norm, 2x2 average pooling; all with PyTorch's default init."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from sm_jax.models.common import torch_uniform
from sm_jax.models.conv_ops import CONVS, conv3x3_instancenorm


class Conv3x3(nn.Module):
    """nn.Conv(features, (3, 3), padding='SAME') with a selectable implementation and the same params."""

    features: int
    impl: str = "fast"

    @nn.compact
    def __call__(self, x, apply: bool = True):
        """(N, H, W, Cin) -> (N, H, W, features); with apply=False, only the (kernel, bias) parameters."""
        fan_in = x.shape[-1] * 9
        kernel = self.param("kernel", torch_uniform(fan_in), (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", torch_uniform(fan_in), (self.features,))
        if not apply:
            return kernel, bias
        return CONVS[self.impl].conv3x3(x, kernel) + bias


def avg_pool2(x: jax.Array) -> jax.Array:
    """2x2 average pooling, stride 2: (N, H, W, C) -> (N, H//2, W//2, C) (an odd last row/column is dropped,
    as in PyTorch).

    Written as a sum of four slices, not a reduction: XLA:CPU fuses it into the elementwise pass before it instead
    of running a separate reduction kernel over the full-resolution activations (a few percent of a DC step).
    """
    n, h, w, c = x.shape
    x = x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
    return (x[:, :, 0, :, 0] + x[:, :, 0, :, 1] + x[:, :, 1, :, 0] + x[:, :, 1, :, 1]) * 0.25


class InstanceNorm(nn.Module):
    """Per-sample, per-channel normalisation over H, W (biased variance) with affine scale/shift."""

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, conv_kernel: jax.Array | None = None):
        """Normalises x (N, H, W, C); given `conv_kernel`, normalises the 3x3 convolution of x with it, fused."""
        channels = x.shape[-1] if conv_kernel is None else conv_kernel.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        if conv_kernel is not None:
            return conv3x3_instancenorm(x, conv_kernel, scale, bias, self.epsilon)
        mean = x.mean(axis=(1, 2), keepdims=True)
        var = jnp.square(x - mean).mean(axis=(1, 2), keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class Conv(nn.Module):
    """nn.Conv2d(in, features, size, stride, padding, bias): `kernel` (HWIO) and `bias` parameters like nn.Conv's,
    computed by the form `impl` of conv_ops.CONVS (a resolved name)."""

    features: int
    size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    kernel_init: Callable | None = None
    impl: str = "fast"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1] * self.size * self.size
        kernel = self.param("kernel", self.kernel_init or torch_uniform(fan_in),
                            (self.size, self.size, x.shape[-1], self.features))
        y = CONVS[self.impl](x, kernel, self.stride, self.padding)
        if self.use_bias:
            y = y + self.param("bias", torch_uniform(fan_in), (self.features,))
        return y


def conv(features: int, size: int, in_channels: int, padding: int, name: str, impl: str, stride: int = 1,
         bias: bool = True, kernel_init=None) -> Conv:
    """nn.Conv2d(in_channels, features, size, stride, padding, bias) with PyTorch's default init (or `kernel_init`),
    on the convolution form `impl`."""
    return Conv(features, size, stride, padding, bias, kernel_init, impl, name=name)


def dense(features: int, fan_in: int, name: str) -> nn.Dense:
    """nn.Linear with PyTorch's default init."""
    return nn.Dense(features, kernel_init=torch_uniform(fan_in), bias_init=torch_uniform(fan_in), name=name)
