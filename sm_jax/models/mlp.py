"""MLP of the DC/DSA code (`networks.MLP`): flatten -> 128 -> ReLU -> 128 -> ReLU -> classes."""
from __future__ import annotations

import jax
from flax import linen as nn

from sm_jax.models.layers import dense


class MLP(nn.Module):
    num_classes: int = 10
    width: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        # x: (batch, H, W, C) normalised images -> (batch, num_classes) logits
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(dense(self.width, x.shape[-1], "fc_1")(x))
        x = nn.relu(dense(self.width, self.width, "fc_2")(x))
        return dense(self.num_classes, self.width, "fc_3")(x)


def make_mlp(num_classes: int = 10) -> MLP:
    return MLP(num_classes=num_classes)
