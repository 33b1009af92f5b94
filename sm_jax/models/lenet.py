"""LeNet of the DC/DSA code (`networks.LeNet`): two 5x5 convolutions with ReLU and 2x2 max pooling, then
400 -> 120 -> 84 -> classes (for 32x32 RGB inputs: no padding, 32 -> 28 -> 14 -> 10 -> 5)."""
from __future__ import annotations

from typing import Callable

import jax
from flax import linen as nn

from sm_jax.models.common import torch_uniform
from sm_jax.models.conv_ops import conv_any
from sm_jax.models.mlp import dense


class Conv(nn.Module):
    """nn.Conv2d(in, features, size, stride, padding, bias): `kernel` (HWIO) and `bias` parameters like nn.Conv's,
    computed by conv_ops.conv_any (Winograd or im2col on CPU, where XLA's convolution is slow inside the training
    loops)."""

    features: int
    size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    kernel_init: Callable | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1] * self.size * self.size
        kernel = self.param("kernel", self.kernel_init or torch_uniform(fan_in),
                            (self.size, self.size, x.shape[-1], self.features))
        y = conv_any(x, kernel, self.stride, self.padding)
        if self.use_bias:
            y = y + self.param("bias", torch_uniform(fan_in), (self.features,))
        return y


def conv(features: int, size: int, in_channels: int, padding: int, name: str, stride: int = 1,
         bias: bool = True, kernel_init=None) -> Conv:
    """nn.Conv2d(in_channels, features, size, stride, padding, bias) with PyTorch's default init (or `kernel_init`)."""
    return Conv(features, size, stride, padding, bias, kernel_init, name=name)


class LeNet(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        # x: (batch, H, W, C) normalised images -> (batch, num_classes) logits
        pad = 2 if x.shape[-1] == 1 else 0  # 28x28 grey images are padded to LeNet's 32x32
        x = nn.max_pool(nn.relu(conv(6, 5, x.shape[-1], pad, "conv_1")(x)), (2, 2), (2, 2))
        x = nn.max_pool(nn.relu(conv(16, 5, 6, 0, "conv_2")(x)), (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(dense(120, x.shape[-1], "fc_1")(x))
        x = nn.relu(dense(84, 120, "fc_2")(x))
        return dense(self.num_classes, 84, "fc_3")(x)


def make_lenet(num_classes: int = 10) -> LeNet:
    return LeNet(num_classes=num_classes)
