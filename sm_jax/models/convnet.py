"""ConvNet-D, the network of DC, DSA and IDC: depth x [conv3x3 -> norm -> relu -> avgpool2] -> dense."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from sm_jax.models.common import torch_uniform
from sm_jax.models.conv_ops import FEW_CHANNELS, resolve_conv_impl
from sm_jax.models.layers import Conv3x3, InstanceNorm, avg_pool2

NORMS = ("instancenorm", "layernorm", "none")


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
    conv_impl: str = "fast"  # a key of CONVS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # x: (batch, H, W, C) normalised images -> (batch, num_classes) logits
        if x.shape[-1] == 1:
            # grey images: the official first convolution pads by 3, not 1 (28x28 MNIST -> 32x32 features)
            x = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
        for i in range(self.depth):
            conv = Conv3x3(self.width, self.conv_impl, name=f"conv{i}")
            if self.norm == "instancenorm" and self.conv_impl == "fast" and x.shape[-1] < FEW_CHANNELS:
                # The RGB layer: convolution and norm in one (conv3x3_instancenorm); the conv bias cancels there.
                x = InstanceNorm(1e-5, name=f"norm{i}")(x, conv(x, apply=False)[0])
            else:
                x = conv(x)
                if self.norm == "instancenorm":
                    x = InstanceNorm(1e-5, name=f"norm{i}")(x)
                elif self.norm == "layernorm":
                    x = nn.GroupNorm(num_groups=1, epsilon=1e-5, name=f"norm{i}")(x)
            x = avg_pool2(nn.relu(x))
        x = x.reshape(x.shape[0], -1)
        fan_in = x.shape[-1]
        return nn.Dense(self.num_classes, kernel_init=torch_uniform(fan_in), bias_init=torch_uniform(fan_in),
                        name="fc")(x)


def make_convnet(num_classes: int = 10, width: int = 128, depth: int = 3, norm: str = "instancenorm",
                 conv_impl: str = "auto") -> ConvNet:
    """Builds a ConvNet; raises ValueError for an unknown norm or conv implementation."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    return ConvNet(num_classes=num_classes, width=width, depth=depth, norm=norm,
                   conv_impl=resolve_conv_impl(conv_impl))
