"""VGG-11 of the DC/DSA code (`networks.VGG11`, `VGG11BN`): 3x3 convolutions (64, M, 128, M, 256, 256, M, 512, 512,
M, 512, 512, M), each followed by a norm (instance norm, or batch norm for VGG11BN) and ReLU; one dense layer."""
from __future__ import annotations

import jax
from flax import linen as nn

from sm_jax.models.conv_ops import resolve_conv
from sm_jax.models.layers import conv, dense
from sm_jax.models.norms import apply_norm, make_norm

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    num_classes: int = 10
    norm: str = "instancenorm"
    layers: tuple = VGG11
    conv_impl: str = "fast"  # a name of conv_ops.CONVS (resolved)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        # x: (batch, H, W, C) normalised images -> (batch, num_classes) logits
        grey = x.shape[-1] == 1
        for i, v in enumerate(self.layers):
            if v == "M":
                x = nn.max_pool(x, (2, 2), (2, 2))
                continue
            pad = 3 if grey and i == 0 else 1  # grey: 28 + 6 - 2 = 32
            x = conv(v, 3, x.shape[-1], pad, f"conv{i}", self.conv_impl)(x)
            x = nn.relu(apply_norm(make_norm(self.norm, f"norm{i}"), x, train))
        x = x.reshape(x.shape[0], -1)
        return dense(self.num_classes, x.shape[-1], "fc")(x)


def make_vgg11(num_classes: int = 10, norm: str = "instancenorm", conv_impl: str = "auto") -> VGG:
    make_norm(norm, "check")
    return VGG(num_classes=num_classes, norm=norm, conv_impl=resolve_conv(conv_impl))
