"""ConvNet-D, the network of DC, DSA and IDC, with every ablation axis of the official code (`networks.ConvNet`):
depth x [conv3x3 -> norm -> activation -> pooling] -> dense; width, depth, norm, activation, pooling."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from sm_jax.models.conv_ops import FEW_CHANNELS, resolve_conv
from sm_jax.models.layers import Conv3x3, InstanceNorm, avg_pool2, dense
from sm_jax.models.norms import NORMS, apply_norm, make_norm

ACTIVATIONS = {"relu": nn.relu, "sigmoid": nn.sigmoid, "leakyrelu": lambda x: nn.leaky_relu(x, 0.01),
               "swish": nn.swish}
POOLINGS = {"avgpooling": avg_pool2, "maxpooling": lambda x: nn.max_pool(x, (2, 2), (2, 2)), "none": lambda x: x}


class ConvNet(nn.Module):
    """depth x [conv3x3 -> norm -> act -> pool] -> dense.

    Attributes:
      num_classes: output size.
      width: channels of every conv.
      depth: number of conv blocks.
      norm: a name of norms.NORMS ('instancenorm': GroupNorm with one group per channel, eps 1e-5).
      act: a key of ACTIVATIONS; pooling: a key of POOLINGS.
      conv_impl: a name of conv_ops.CONVS (resolved).
    """

    num_classes: int = 10
    width: int = 128
    depth: int = 3
    norm: str = "instancenorm"
    conv_impl: str = "fast"
    act: str = "relu"
    pooling: str = "avgpooling"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
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
                x = apply_norm(make_norm(self.norm, f"norm{i}"), conv(x), train)
            x = POOLINGS[self.pooling](ACTIVATIONS[self.act](x))
        x = x.reshape(x.shape[0], -1)
        return dense(self.num_classes, x.shape[-1], "fc")(x)


def make_convnet(num_classes: int = 10, width: int = 128, depth: int = 3, norm: str = "instancenorm",
                 conv_impl: str = "auto", act: str = "relu", pooling: str = "avgpooling") -> ConvNet:
    """Builds a ConvNet; raises ValueError for an unknown norm, activation, pooling or conv implementation."""
    for what, value, known in (("norm", norm, NORMS), ("activation", act, ACTIVATIONS),
                               ("pooling", pooling, POOLINGS)):
        if value not in known:
            raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(known)}")
    return ConvNet(num_classes=num_classes, width=width, depth=depth, norm=norm,
                   conv_impl=resolve_conv(conv_impl), act=act, pooling=pooling)
