"""A Flax module made pure for the training and matching loops: parameters and state (BatchNorm's running
statistics; empty for every other network) travel separately, because only parameters are trained."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

State = Any  # the `batch_stats` collection: {} for networks without batch norm


@dataclasses.dataclass(frozen=True)
class Net:
    """`init(key) -> (params, state)`; `apply(params, state, x, train) -> (logits, state)`.

    Attributes:
      module: the Flax module (its __call__ takes `train`).
      image_shape: (H, W, C) of the inputs.
      name: the architecture's name (for results and messages).
    """

    module: nn.Module
    image_shape: tuple[int, int, int] = (32, 32, 3)
    name: str = ""

    def init(self, key: jax.Array) -> tuple[Any, State]:
        return _init(self, key)

    @property
    def has_state(self) -> bool:
        """Whether the network carries running statistics (batch norm), from its abstract init."""
        return bool(jax.eval_shape(self.init, jax.random.key(0))[1])

    def apply(self, params, state: State, x: jax.Array, train: bool = False) -> tuple[jax.Array, State]:
        """Logits of x (N, H, W, C); in training a batch-norm network normalises with batch statistics and returns
        its updated running statistics, in evaluation it uses them."""
        if not state:
            return self.module.apply({"params": params}, x, train=train), state
        variables = {"params": params, "batch_stats": state}
        if train:
            logits, upd = self.module.apply(variables, x, train=True, mutable=["batch_stats"])
            return logits, dict(upd["batch_stats"])
        return self.module.apply(variables, x, train=False), state

    def embed(self, params, state: State, x: jax.Array, train: bool = False) -> tuple[jax.Array, State]:
        """The features of x before the classifier (N, D): the input of the network's last dense layer, as the
        official `embed` of every architecture (ConvNet: the flattened last block; MLP / LeNet: after the hidden
        dense layers). The classifier's output is discarded (XLA removes it under jit)."""
        inputs = []

        def record(next_fun, args, kwargs, context):
            if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
                inputs.append(args[0])
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            _, state = self.apply(params, state, x, train)
        return inputs[-1], state

    def num_params(self) -> int:
        params, _ = jax.eval_shape(self.init, jax.random.key(0))
        return sum(int(jnp.prod(jnp.asarray(p.shape))) for p in jax.tree.leaves(params))


@functools.partial(jax.jit, static_argnums=0)
def _init(net: Net, key: jax.Array) -> tuple[Any, State]:
    # one compiled program per architecture and shape: run eagerly, Flax's init traces a forward pass whose every
    # operation is dispatched (and, the first time, compiled) on its own
    v = net.module.init(key, jnp.zeros((1, *net.image_shape), jnp.float32), train=False)
    return v["params"], dict(v.get("batch_stats", {}))


@dataclasses.dataclass(frozen=True)
class FnNet:
    """A plain `apply_fn(params, x)` as a stateless Net (for code and tests that build their own function)."""

    apply_fn: Callable

    def apply(self, params, state, x, train=False):
        return self.apply_fn(params, x), state
