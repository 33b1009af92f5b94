"""LeNet of the DC/DSA code (`networks.LeNet`): two 5x5 convolutions with ReLU and 2x2 max pooling, then
400 -> 120 -> 84 -> classes (for 32x32 RGB inputs: no padding, 32 -> 28 -> 14 -> 10 -> 5)."""
from __future__ import annotations

import jax
from flax import linen as nn

from sm_jax.models.conv_ops import resolve_conv
from sm_jax.models.layers import conv, dense


class LeNet(nn.Module):
    num_classes: int = 10
    conv_impl: str = "fast"  # a name of conv_ops.CONVS (resolved)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        # x: (batch, H, W, C) normalised images -> (batch, num_classes) logits
        pad = 2 if x.shape[-1] == 1 else 0  # 28x28 grey images are padded to LeNet's 32x32
        x = nn.max_pool(nn.relu(conv(6, 5, x.shape[-1], pad, "conv_1", self.conv_impl)(x)), (2, 2), (2, 2))
        x = nn.max_pool(nn.relu(conv(16, 5, 6, 0, "conv_2", self.conv_impl)(x)), (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(dense(120, x.shape[-1], "fc_1")(x))
        x = nn.relu(dense(84, 120, "fc_2")(x))
        return dense(self.num_classes, 84, "fc_3")(x)


def make_lenet(num_classes: int = 10, conv_impl: str = "auto") -> LeNet:
    return LeNet(num_classes=num_classes, conv_impl=resolve_conv(conv_impl))
