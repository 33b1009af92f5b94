"""AlexNet of the DC/DSA code (`networks.AlexNet`, `AlexNetBN`): five convolutions (5x5, 5x5, 3x3 x 3; 128, 192,
256, 192, 192 channels) with ReLU and three 2x2 max poolings, then one dense layer from 192 x 4 x 4."""
from __future__ import annotations

import jax
from flax import linen as nn

from sm_jax.models.conv_ops import resolve_conv
from sm_jax.models.layers import conv, dense
from sm_jax.models.norms import apply_norm, make_norm

_LAYERS = ((128, 5, 2, True), (192, 5, 2, True), (256, 3, 1, False), (192, 3, 1, False), (192, 3, 1, True))


class AlexNet(nn.Module):
    num_classes: int = 10
    norm: str = "none"  # 'batchnorm': AlexNetBN (a BatchNorm after every convolution)
    conv_impl: str = "fast"  # a name of conv_ops.CONVS (resolved)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        # x: (batch, H, W, C) normalised images -> (batch, num_classes) logits
        for i, (features, size, pad, pool) in enumerate(_LAYERS):
            if i == 0 and x.shape[-1] == 1:
                pad = 4  # 28x28 grey images: 28 + 8 - 4 = 32
            x = conv(features, size, x.shape[-1], pad, f"conv{i}", self.conv_impl)(x)
            x = nn.relu(apply_norm(make_norm(self.norm, f"norm{i}"), x, train))
            if pool:
                x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        return dense(self.num_classes, x.shape[-1], "fc")(x)


def make_alexnet(num_classes: int = 10, norm: str = "none", conv_impl: str = "auto") -> AlexNet:
    make_norm(norm, "check")
    return AlexNet(num_classes=num_classes, norm=norm, conv_impl=resolve_conv(conv_impl))
