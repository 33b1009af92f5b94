"""ConvNet-D (DC/DSA/IDC's network) as a Flax Linen module with PyTorch-default init."""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
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


def conv3x3_xla(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """XLA's native 3x3 SAME convolution; (N, H, W, Cin), (3, 3, Cin, Cout) -> (N, H, W, Cout)."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


# Winograd F(2x2, 3x3) (Lavin & Gray, 2016): B^T (input tiles), G (kernel), A^T (output tiles).
_WINO_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_WINO_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
_WINO_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)


def _combine(mat: np.ndarray, parts: list) -> list:
    """Rows of the small constant matrix `mat` applied to a list of arrays, as sums of (signed) arrays."""
    out = []
    for row in mat:
        terms = [p if c == 1 else -p if c == -1 else p * float(c) for c, p in zip(row, parts) if c != 0]
        out.append(functools.reduce(jnp.add, terms))
    return out


def conv3x3_winograd(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 SAME stride-1 convolution by Winograd F(2x2, 3x3): 16 matmuls of a quarter of the positions each.

    2.25x fewer multiplications than im2col + matmul, and a 4x (not 9x) expansion of the input. H and W even.
    The transforms reorder the sums, so values differ from a direct convolution by float rounding only.
    Args:
      x: (N, H, W, Cin); kernel: (3, 3, Cin, Cout) (HWIO).
    Returns:
      (N, H, W, Cout).
    """
    n, h, w, c = x.shape
    co = kernel.shape[-1]
    th, tw = h // 2, w // 2
    u = jnp.einsum("ai,ijkl,bj->abkl", _WINO_G, kernel, _WINO_G).reshape(16, c, co)
    m = jnp.einsum("tmc,tcd->tmd", _wino_input(x), u).reshape(4, 4, n, th, tw, co)
    p = _combine(_WINO_AT, [m[i] for i in range(4)])
    y = jnp.stack([jnp.stack(_combine(_WINO_AT, [q[i] for i in range(4)]), -2) for q in p], 3)
    return y.transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, co)  # (N, th, 2, tw, 2, Cout) -> (N, H, W, Cout)


def _wino_input(x: jax.Array) -> jax.Array:
    """Winograd F(2x2, 3x3) input tiles B^T d B of x padded by 1: (N, H, W, C) -> (16, N * H/2 * W/2, C)."""
    n, h, w, c = x.shape
    th, tw = h // 2, w // 2
    # tile (i, j) reads padded rows 2i..2i+3 = rows (0, 1) of pair i and of pair i + 1: contiguous slices
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(n, th + 1, 2, w + 2, c)
    rows = jnp.stack(_combine(_WINO_BT, [xp[:, :-1, 0], xp[:, :-1, 1], xp[:, 1:, 0], xp[:, 1:, 1]]))
    rb = rows.reshape(4, n, th, tw + 1, 2, c)
    v = jnp.stack(_combine(_WINO_BT, [rb[:, :, :, :-1, 0], rb[:, :, :, :-1, 1], rb[:, :, :, 1:, 0],
                                      rb[:, :, :, 1:, 1]]), 1)  # (4, 4, N, th, tw, C)
    return v.reshape(16, n * th * tw, c)


def _wino_weight_grad(x: jax.Array, g: jax.Array) -> jax.Array:
    """Kernel gradient of conv3x3 by Winograd F(2x2, 3x3): G^T (V^T (A g A^T)) G, one batched matmul."""
    n, h, w, c = x.shape
    co = g.shape[-1]
    gt = g.reshape(n, h // 2, 2, w // 2, 2, co)
    ga = jnp.stack(_combine(_WINO_AT.T, [gt[:, :, i] for i in range(2)]))  # (4, N, th, tw, 2, Cout)
    gb = jnp.stack(_combine(_WINO_AT.T, [ga[:, :, :, :, j] for j in range(2)]), 1)  # (4, 4, N, th, tw, Cout)
    du = jnp.einsum("tmc,tmd->tcd", _wino_input(x), gb.reshape(16, -1, co)).reshape(4, 4, c, co)
    return jnp.einsum("ai,abkl,bj->ijkl", _WINO_G, du, _WINO_G)


def _weight_grad(x: jax.Array, g: jax.Array) -> jax.Array:
    """d(sum(conv(x, w) * g)) / dw, (3, 3, Cin, Cout): Winograd where the shape allows, else im2col."""
    if x.shape[-1] >= 16 and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0:
        return _wino_weight_grad(x, g)
    zero = jnp.zeros((3, 3, x.shape[-1], g.shape[-1]), x.dtype)
    return jax.vjp(lambda k: conv3x3_patches(x, k), zero)[1](g)[0]


def _custom_conv(fwd: Callable, dx: Callable, dw: Callable) -> Callable:
    """A 3x3 convolution computed by `fwd`, whose input gradient is `dx(g, flipped kernel)` and kernel gradient
    `dw(x, g)`; the rules are plain JAX, so the result is twice differentiable."""

    @jax.custom_vjp
    def conv(x, kernel):
        return fwd(x, kernel)

    def bwd(res, g):
        x, kernel = res
        return dx(g, jnp.flip(kernel, (0, 1)).swapaxes(2, 3)), dw(x, g)

    conv.defvjp(lambda x, kernel: (fwd(x, kernel), (x, kernel)), bwd)
    return conv


_conv_small = _custom_conv(conv3x3_xla, conv3x3_xla, _weight_grad)
_conv_wino = _custom_conv(conv3x3_winograd, conv3x3_winograd, _wino_weight_grad)


def conv3x3_fast(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 SAME convolution in the form XLA:CPU runs fastest, forward and twice backward.

    Winograd F(2x2, 3x3) for the forward pass, the input gradient and the kernel gradient; for few input
    channels (the RGB layer) or odd sizes, XLA's convolution with an im2col kernel gradient. The kernel gradient never goes
    through XLA's own convolution-gradient form, which is several times slower on CPU, more so differentiated again.
    """
    if x.shape[-1] < 16 or x.shape[1] % 2 or x.shape[2] % 2:
        return _conv_small(x, kernel)
    return _conv_wino(x, kernel)


# The interchangeable convolutions (same parameters, same function up to float rounding), by name.
CONVS = {"fast": conv3x3_fast, "patches": conv3x3_patches, "winograd": conv3x3_winograd, "xla": conv3x3_xla}


class Conv3x3(nn.Module):
    """nn.Conv(features, (3, 3), padding='SAME') with a selectable implementation and the same params."""

    features: int
    impl: str = "fast"

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1] * 9
        kernel = self.param("kernel", torch_uniform(fan_in), (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", torch_uniform(fan_in), (self.features,))
        return CONVS[self.impl](x, kernel) + bias


def avg_pool2(x: jax.Array) -> jax.Array:
    """2x2 average pooling, stride 2: (N, H, W, C) -> (N, H/2, W/2, C).

    Written as a sum of four slices, not a reduction: XLA:CPU fuses it into the elementwise pass before it instead
    of running a separate reduction kernel over the full-resolution activations (a few percent of a DC step).
    """
    n, h, w, c = x.shape
    x = x.reshape(n, h // 2, 2, w // 2, 2, c)
    return (x[:, :, 0, :, 0] + x[:, :, 0, :, 1] + x[:, :, 1, :, 0] + x[:, :, 1, :, 1]) * 0.25


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
    conv_impl: str = "fast"  # a key of CONVS

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
            x = avg_pool2(x)
        x = x.reshape(x.shape[0], -1)
        fan_in = x.shape[-1]
        return nn.Dense(self.num_classes, kernel_init=torch_uniform(fan_in), bias_init=torch_uniform(fan_in),
                        name="fc")(x)


def resolve_conv_impl(conv_impl: str = "auto") -> str:
    """'auto' -> 'fast' on CPU, 'xla' on GPU/TPU (their convolution libraries serve every form); else unchanged.

    Raises ValueError for an unknown name.
    """
    if conv_impl == "auto":
        return "fast" if jax.default_backend() == "cpu" else "xla"
    if conv_impl not in CONVS:
        raise ValueError(f"unknown conv implementation {conv_impl!r}; choose auto or one of {', '.join(CONVS)}")
    return conv_impl


def make_model(num_classes: int = 10, width: int = 128, depth: int = 3, norm: str = "instancenorm",
               conv_impl: str = "auto") -> ConvNet:
    """Builds a ConvNet; raises ValueError for an unknown norm or conv implementation."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    return ConvNet(num_classes=num_classes, width=width, depth=depth, norm=norm,
                   conv_impl=resolve_conv_impl(conv_impl))


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
