"""The convolutions models run on: interchangeable forms of one function (same parameters), chosen per platform.

Every model's convolutions run on one form of `CONVS`, named by the run's `conv_impl` and resolved by `resolve_conv`
(ConvNet's 3x3 layers through `layers.Conv3x3`, with the fused RGB conv + instance norm; the others through
`layers.Conv`). Kept apart from the architectures.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def conv3x3_patches(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 SAME stride-1 convolution as im2col + one matmul.

    Same result as lax.conv_general_dilated, but its parameter gradient is a plain (batched) matmul, which
    XLA:CPU runs several times faster than the convolution-gradient form, especially under vmap.
    Args:
      x: (N, H, W, Cin); kernel: (3, 3, Cin, Cout) (HWIO).
    Returns:
      (N, H, W, Cout).
    """
    return _patches(x) @ kernel.reshape(9 * x.shape[-1], -1)


def _patches(x: jax.Array) -> jax.Array:
    """The 3x3 neighbourhoods of a SAME convolution, zero-padded: (N, H, W, C) -> (N, H, W, 9C), (i, j, c) order."""
    n, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=-1)


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


def _shift(a: jax.Array, axis: int, toward_end: bool) -> jax.Array:
    """a moved by one position along `axis`, zero-filled: a[i - 1] (toward_end) or a[i + 1]."""
    pad = [(0, 0)] * a.ndim
    pad[axis] = (1, 0) if toward_end else (0, 1)
    start = 0 if toward_end else 1
    return jax.lax.slice_in_dim(jnp.pad(a, pad), start, start + a.shape[axis], axis=axis)


def _tile_split(a: jax.Array, axis: int, mat: np.ndarray) -> list:
    """The 4 overlapping rows (0-padded) of every 2-stride tile along `axis` (length 2T), transformed by `mat`.

    Tile p reads positions 2p - 1 .. 2p + 2 of the axis; returns mat @ those, as 4 arrays with the axis of length T.
    """
    shape = a.shape[:axis] + (a.shape[axis] // 2, 2) + a.shape[axis + 1:]
    even, odd = (jax.lax.index_in_dim(a.reshape(shape), i, axis + 1, keepdims=False) for i in range(2))
    return _combine(mat, [_shift(odd, axis, True), even, odd, _shift(even, axis, False)])


def _tile_merge(parts: list, axis: int, mat: np.ndarray) -> jax.Array:
    """Adjoint of `_tile_split`: mat^T applied, then the overlapping tile rows added back into a length-2T axis."""
    d = _combine(mat.T, parts)
    even = d[1] + _shift(d[3], axis, True)  # position 2q: row 1 of tile q, row 3 of tile q - 1
    odd = d[2] + _shift(d[0], axis, False)  # position 2q + 1: row 2 of tile q, row 0 of tile q + 1
    out = jnp.stack([even, odd], axis + 1)
    return out.reshape(out.shape[:axis] + (-1,) + out.shape[axis + 2:])


@jax.custom_vjp
def _wino_input(x: jax.Array) -> jax.Array:
    """Winograd F(2x2, 3x3) input tiles B^T d B (d: 4x4 tiles of x padded by 1, stride 2).

    (N, H, W, C) -> (16, N * H/2 * W/2, C). Linear; its adjoint `_wino_input_t` is written out, since the
    autodiff adjoint of these slices (one zero-padded copy per slice) costs more than the transform itself.
    """
    n, h, w, c = x.shape
    rows = jnp.stack(_tile_split(x, 1, _WINO_BT))  # (4, N, H/2, W, C)
    return jnp.stack(_tile_split(rows, 3, _WINO_BT), 1).reshape(16, n * (h // 2) * (w // 2), c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _wino_input_t(v: jax.Array, shape: tuple) -> jax.Array:
    """Adjoint of `_wino_input` for an input of `shape`: (16, N * H/2 * W/2, C) -> (N, H, W, C)."""
    n, h, w, c = shape
    v = v.reshape(4, 4, n, h // 2, w // 2, c)
    rows = _tile_merge([v[:, b] for b in range(4)], 3, _WINO_BT)  # (4, N, H/2, W, C)
    return _tile_merge([rows[a] for a in range(4)], 1, _WINO_BT)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _wino_output(m: jax.Array, shape: tuple) -> jax.Array:
    """Winograd F(2x2, 3x3) output transform A^T m A: (16, N * H/2 * W/2, Cout) -> (N, H, W, Cout). Linear."""
    n, h, w, co = shape
    m = m.reshape(4, 4, n, h // 2, w // 2, co)
    p = _combine(_WINO_AT, [m[i] for i in range(4)])
    y = jnp.stack([jnp.stack(_combine(_WINO_AT, [q[i] for i in range(4)]), -2) for q in p], 3)
    return y.transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, co)  # (N, H/2, 2, W/2, 2, Cout) -> (N, H, W, Cout)


@jax.custom_vjp
def _wino_output_t(y: jax.Array) -> jax.Array:
    """Adjoint of `_wino_output`: (N, H, W, Cout) -> (16, N * H/2 * W/2, Cout)."""
    n, h, w, co = y.shape
    yt = y.reshape(n, h // 2, 2, w // 2, 2, co)
    ga = jnp.stack(_combine(_WINO_AT.T, [yt[:, :, i] for i in range(2)]))  # (4, N, H/2, W/2, 2, Cout)
    return jnp.stack(_combine(_WINO_AT.T, [ga[:, :, :, :, j] for j in range(2)]), 1).reshape(16, -1, co)


# The adjoints are each other's transposes, so every order of differentiation stays on the written-out forms.
_wino_input.defvjp(lambda x: (_wino_input(x), x.shape), lambda shape, v: (_wino_input_t(v, shape),))
_wino_input_t.defvjp(lambda v, shape: (_wino_input_t(v, shape), None), lambda shape, _, x: (_wino_input(x),))
_wino_output.defvjp(lambda m, shape: (_wino_output(m, shape), None), lambda shape, _, y: (_wino_output_t(y),))
_wino_output_t.defvjp(lambda y: (_wino_output_t(y), y.shape), lambda shape, m: (_wino_output(m, shape),))


def conv3x3_winograd(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 SAME stride-1 convolution by Winograd F(2x2, 3x3): 16 matmuls of a quarter of the positions each.

    2.25x fewer multiplications than im2col + matmul, and a 4x (not 9x) expansion of the input. H and W even.
    The transforms reorder the sums, so values differ from a direct convolution by float rounding only.
    Args:
      x: (N, H, W, Cin); kernel: (3, 3, Cin, Cout) (HWIO).
    Returns:
      (N, H, W, Cout).
    """
    u = jnp.einsum("ai,ijkl,bj->abkl", _WINO_G, kernel, _WINO_G).reshape(16, x.shape[-1], kernel.shape[-1])
    return _wino_output(jnp.einsum("tmc,tcd->tmd", _wino_input(x), u), (*x.shape[:3], kernel.shape[-1]))


def _wino_weight_grad(x: jax.Array, g: jax.Array) -> jax.Array:
    """Kernel gradient of conv3x3 by Winograd F(2x2, 3x3): G^T (V^T (A g A^T)) G, one batched matmul."""
    du = jnp.einsum("tmc,tmd->tcd", _wino_input(x), _wino_output_t(g)).reshape(4, 4, x.shape[-1], g.shape[-1])
    return jnp.einsum("ai,abkl,bj->ijkl", _WINO_G, du, _WINO_G)


def _patches_weight_grad(x: jax.Array, g: jax.Array) -> jax.Array:
    """d(sum(conv(x, w) * g)) / dw, (3, 3, Cin, Cout), as the im2col matmul's gradient."""
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


_conv_small = _custom_conv(conv3x3_xla, conv3x3_xla, _patches_weight_grad)
_conv_wino = _custom_conv(conv3x3_winograd, conv3x3_winograd, _wino_weight_grad)


# Below this many input channels (the RGB layer), Winograd's transforms cost more than they save, and an instance
# norm after the convolution is cheaper computed from the input's patches (conv3x3_instancenorm).
FEW_CHANNELS = 16


def conv3x3_fast(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 SAME convolution in the form XLA:CPU runs fastest, forward and twice backward.

    Winograd F(2x2, 3x3) for the forward pass, the input gradient and the kernel gradient; for few input
    channels (the RGB layer) or odd sizes, XLA's convolution with an im2col kernel gradient. The kernel gradient
    never goes through XLA's own convolution-gradient form, which is several times slower on CPU, more so
    differentiated again.
    """
    if x.shape[-1] < FEW_CHANNELS or x.shape[1] % 2 or x.shape[2] % 2:
        return _conv_small(x, kernel)
    return _conv_wino(x, kernel)


def conv3x3_instancenorm(x: jax.Array, kernel: jax.Array, scale: jax.Array, shift: jax.Array,
                         eps: float = 1e-5) -> jax.Array:
    """A 3x3 SAME convolution followed by instance norm, computed from the input's patches.

    Instance norm is an affine map per (image, channel), so it folds into a per-image kernel: the output's mean and
    variance come from the mean (9Cin) and covariance (9Cin x 9Cin) of each image's patches, and the layer is one
    batched matmul over the patches. For few input channels (the RGB layer: 27 patch features against 128 output
    channels) this replaces every pass over the full-resolution output (the norm's reductions, forward and
    backward) by work on the 9Cin-wide patches. The conv bias cancels in the norm, so it does not appear. Same
    function as `InstanceNorm()(conv(x, kernel) + bias)` up to float rounding, at every order of differentiation.
    Args:
      x: (N, H, W, Cin); kernel: (3, 3, Cin, Cout) (HWIO); scale, shift: (Cout,) the norm's affine parameters.
    Returns:
      (N, H, W, Cout).
    """
    n, h, w, c = x.shape
    p = _patches(x).reshape(n, h * w, 9 * c)  # (N, HW, 9Cin)
    mu = p.mean(1)  # (N, 9Cin)
    pc = p - mu[:, None]
    cov = jnp.einsum("nsi,nsj->nij", pc, pc) / (h * w)  # (N, 9Cin, 9Cin): a Gram matrix, so var below is >= 0
    wm = kernel.reshape(9 * c, -1)  # (9Cin, Cout)
    var = jnp.einsum("nij,jo,io->no", cov, wm, wm)  # (N, Cout): variance of the conv output
    a = jax.lax.rsqrt(var + eps) * scale  # (N, Cout)
    # The per-image offset rides along as a row of the kernel against a column of ones, so that its gradient
    # (a sum over positions) comes out of the same matmul as the kernel's.
    w_img = jnp.concatenate([wm[None] * a[:, None], (shift - (mu @ wm) * a)[:, None]], axis=1)  # (N, 9Cin+1, Cout)
    p1 = jnp.concatenate([p, jnp.ones((n, h * w, 1), p.dtype)], axis=-1)
    return jnp.einsum("nsi,nio->nso", p1, w_img).reshape(n, h, w, -1)


def conv_im2col(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """Any k x k convolution (zero padding, stride) as shifted slices and one matmul, forward and backward.

    XLA:CPU runs its native convolution inside a loop body (the training scans) tens of times slower than outside
    one (measured: two AlexNet steps in a `lax.scan`, 175 s, against 2.7 s unrolled); slices, concatenation and
    matmuls keep their speed there.
    Args:
      x: (N, H, W, Cin); kernel: (k, k, Cin, Cout) (HWIO).
    Returns:
      (N, (H + 2p - k) // s + 1, (W + 2p - k) // s + 1, Cout).
    """
    k = kernel.shape[0]
    cols = _taps(x, k, stride, padding, *_out_size(x, k, stride, padding))
    return jnp.concatenate(cols, axis=-1) @ kernel.reshape(k * k * x.shape[-1], -1)


def conv_native(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """XLA's own k x k convolution; (N, H, W, Cin), (k, k, Cin, Cout) -> (N, Ho, Wo, Cout)."""
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(padding, padding)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _taps(x: jax.Array, k: int, stride: int, padding: int, ho: int, wo: int) -> list:
    """The k * k shifted (strided) views of the zero-padded input that meet the kernel's taps, (i, j) order: each
    (N, Ho, Wo, Cin)."""
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    return [jax.lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1,
                                             xp.shape[3]), (1, stride, stride, 1))
            for i in range(k) for j in range(k)]


def _out_size(x: jax.Array, k: int, stride: int, padding: int) -> tuple[int, int]:
    return (x.shape[1] + 2 * padding - k) // stride + 1, (x.shape[2] + 2 * padding - k) // stride + 1


def conv_gemm(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """Any k x k convolution as a sum over its k * k taps of (N Ho Wo, Cin) x (Cin, Cout) matrix products, and so are
    its gradients at every order (the autodiff of a slice and a product).

    Where the kernel is batched (N networks trained together under vmap), each product becomes one batched GEMM over
    the networks, where XLA's convolution becomes a grouped convolution (feature_group_count = N), which cuDNN runs
    slowly at these sizes. No k*k-fold copy of the input is made (unlike `conv_im2col`): one tap's view at a time.
    Args:
      x: (N, H, W, Cin); kernel: (k, k, Cin, Cout) (HWIO).
    Returns:
      (N, Ho, Wo, Cout).
    """
    k = kernel.shape[0]
    views = _taps(x, k, stride, padding, *_out_size(x, k, stride, padding))
    return functools.reduce(jnp.add, [v @ kernel[t // k, t % k] for t, v in enumerate(views)])


def kernel_grad_gemm(x: jax.Array, g: jax.Array, k: int, stride: int = 1, padding: int = 0) -> jax.Array:
    """d(sum(conv(x, w) * g)) / dw as k * k matrix products contracting (N, Ho, Wo): (k, k, Cin, Cout).

    Under vmap over classes (x and g batched, w shared) these are batched GEMMs over the classes; XLA's own kernel
    gradient there is a convolution grouped by the class count. Its derivatives (what the image update
    differentiates) are products with the per-class cotangent kernel: batched GEMMs again.
    With few input channels (the RGB layer) the taps are concatenated into one (N Ho Wo, k k Cin) patch matrix and
    contracted in one product: the per-tap form would read the full-resolution cotangent k * k times for a product
    with 3 rows (on the h200 target, DC ipc 10's RGB layer: 2.6 of the step's 19.7 ms of roofline), while the patches
    hold k * k * Cin values per position, about as many as the cotangent's Cout or fewer.
    Args:
      x: (N, H, W, Cin) the input; g: (N, Ho, Wo, Cout) the output's cotangent.
    """
    views = _taps(x, k, stride, padding, g.shape[1], g.shape[2])
    if x.shape[-1] < FEW_CHANNELS:  # (N, Ho, Wo, k k Cin): tap-major, as the kernel's (k, k, Cin) flatten
        return jnp.einsum("nhwc,nhwo->co", jnp.concatenate(views, axis=-1), g).reshape(k, k, x.shape[-1], -1)
    # Each product behind its own barrier: XLA:GPU's dot merger otherwise joins the k * k products that share `g`
    # into one over the concatenated views, an im2col matrix k * k times the activation (h200 target: IDC ipc 10 K 2's
    # step at 3 classes per program, 2.09 GiB in all, 1.38 with the barrier; the estimated time 1.5 % longer).
    dw = [jnp.einsum("nhwc,nhwo->co", *jax.lax.optimization_barrier((v, g))) for v in views]
    return jnp.stack(dw).reshape(k, k, x.shape[-1], g.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_xla_gemm(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """XLA's convolution forward and for the input gradient, the kernel gradient as per-tap GEMMs
    (`kernel_grad_gemm`). The form for a network whose weights are shared across a vmapped axis (gradient matching:
    one network, every class's images): the forward and input-gradient convolutions fold the classes into the batch
    (plain cuDNN convolutions), and only the per-class kernel gradient, which needs the classes apart, becomes
    batched GEMMs instead of grouped convolutions. Twice differentiable (the rules are plain JAX).
    Args:
      x: (N, H, W, Cin); kernel: (k, k, Cin, Cout) (HWIO).
    Returns:
      (N, Ho, Wo, Cout).
    """
    return conv_native(x, kernel, stride, padding)


def _xla_gemm_fwd(x, kernel, stride, padding):
    return conv_native(x, kernel, stride, padding), (x, kernel)


def _xla_gemm_bwd(stride, padding, res, g):
    x, kernel = res
    dx = jax.vjp(lambda x_: conv_native(x_, kernel, stride, padding), x)[1](g)[0]
    return dx, kernel_grad_gemm(x, g, kernel.shape[0], stride, padding)


conv_xla_gemm.defvjp(_xla_gemm_fwd, _xla_gemm_bwd)


def conv3x3_xla_gemm(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`conv_xla_gemm` for a 3x3 SAME stride-1 layer."""
    return conv_xla_gemm(x, kernel, 1, 1)


@dataclasses.dataclass(frozen=True)
class ConvForm:
    """One form of the convolution: `conv3x3(x, kernel)` for 3x3 stride-1 SAME layers (ConvNet's, VGG's, the
    ResNets'), `general(x, kernel, stride, padding)` for every other layer. Calling it picks the right one."""

    conv3x3: Callable
    general: Callable

    def __call__(self, x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
        if kernel.shape[:2] == (3, 3) and stride == 1 and padding == 1:
            return self.conv3x3(x, kernel)
        return self.general(x, kernel, stride, padding)


# The interchangeable convolutions (same parameters, same function up to float rounding), by name (--conv-impl).
# On CPU, XLA's native convolution runs tens of times slower inside the training scans (measured: two AlexNet steps
# in a `lax.scan`, 175 s, against 2.7 s unrolled), so the CPU forms use slices and matmuls; on GPU/TPU XLA's own is
# served by the convolution libraries, except where a vmapped axis would make it a grouped convolution (the per-class
# kernel gradient of gradient matching: `xla_gemm`; networks trained together: `gemm`). Their speed on CPU:
# `python -m benchmarks.evaluate --conv-impl`; the kernels they compile to on a GPU: docs/gpu.md.
CONVS: dict[str, ConvForm] = {
    "fast": ConvForm(conv3x3_fast, conv_im2col),
    "patches": ConvForm(conv3x3_patches, conv_im2col),
    "winograd": ConvForm(conv3x3_winograd, conv_im2col),
    "xla": ConvForm(conv3x3_xla, conv_native),
    "xla_gemm": ConvForm(conv3x3_xla_gemm, conv_xla_gemm),
    "gemm": ConvForm(lambda x, kernel: conv_gemm(x, kernel, 1, 1), conv_gemm),
}


VMAP_ROLES = ("shared", "batched", "none")  # how a network's convolutions meet vmap (resolve_conv)
_PLATFORM: list[str] = []  # the platform `auto` resolves for inside `compiling_for` (innermost last)


@contextlib.contextmanager
def compiling_for(platform: str):
    """Within this context `resolve_conv` resolves 'auto' for `platform` rather than JAX's default backend: the
    networks of a program compiled here for an accelerator that is not here (sm_jax.aot) get that accelerator's
    forms for each of their roles."""
    _PLATFORM.append(platform)
    try:
        yield
    finally:
        _PLATFORM.pop()


def resolve_conv(name: str = "auto", platform: str | None = None, vmap: str = "shared") -> str:
    """'auto' -> the form for the platform and the network's place under vmap; any other name unchanged.

    'auto' is 'fast' on CPU and 'xla' on a TPU (whose compiler writes the vmapped axes into its own convolutions).
    On a GPU it depends on `vmap`: 'shared' (one network's weights shared across a vmapped axis of inputs: the
    matching, vmapped over classes and subsets) -> 'xla_gemm', whose per-class kernel gradients are batched gemms;
    'batched' (several networks trained together under vmap, each its own weights) -> 'gemm'; 'none' (one network
    alone: an evaluation network trained by itself) -> 'xla', cuDNN's own kernel gradient. No grouped convolution
    in any of them (docs/gpu.md).
    Args:
      platform: the platform the program is compiled for (default: that of `compiling_for`, else JAX's default
        backend): 'cpu', 'gpu' or 'cuda', 'tpu'.
      vmap: one of VMAP_ROLES.
    Raises:
      ValueError: for an unknown name or role.
    """
    if vmap not in VMAP_ROLES:
        raise ValueError(f"unknown vmap role {vmap!r}; choose one of {', '.join(VMAP_ROLES)}")
    if name == "auto":
        platform = platform or (_PLATFORM[-1] if _PLATFORM else jax.default_backend())
        if platform == "cpu":
            return "fast"
        if platform in ("gpu", "cuda", "rocm"):
            return {"shared": "xla_gemm", "batched": "gemm", "none": "xla"}[vmap]
        return "xla"
    if name not in CONVS:
        raise ValueError(f"unknown conv implementation {name!r}; choose auto or one of {', '.join(CONVS)}")
    return name
