"""DSA's differentiable augmentations (Zhao & Bilen 2021) as pure functions of their sampled parameters.

Each op is a pair: `sample(key, n, size) -> params` with leading dim n, and `apply(params, x) -> x` for x (N, H, W,
C) in normalised space, differentiable in x. Siamese use draws n=1 and applies one draw to the real and the
synthetic batch.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

# DSA's parameters (ParamDiffAug): brightness 1.0, saturation 2.0, contrast 0.5, crop 0.125, cutout 0.5,
# scale 1.2, rotate 15 degrees, flip 0.5.
# Crop shift and cutout size are fractions of the image side, rounded as the official code does: for 32x32,
# shift int(32 * 0.125 + 0.5) = 4 and cutout int(32 * 0.5 + 0.5) = 16; for 28x28, 4 and 14.
CROP_RATIO = 0.125
CUTOUT_RATIO = 0.5
SCALE_RATIO = 1.2
ROTATE_DEGREES = 15.0
FLIP_PROB = 0.5
# The official DSA code resamples scale/rotate with affine_grid/grid_sample(align_corners=True).
ALIGN_CORNERS = True

def _side(size: int, ratio: float) -> int:
    return int(size * ratio + 0.5)


# --- parameter sampling: each returns a dict of (n,) arrays; `size` is the images' (H, W) -----------

def _sample_color(key, n, size):
    kb, ks, kc = jax.random.split(key, 3)
    return {"brightness": jax.random.uniform(kb, (n,)), "saturation": jax.random.uniform(ks, (n,)),
            "contrast": jax.random.uniform(kc, (n,))}


def _sample_crop(key, n, size):
    kx, ky = jax.random.split(key)
    sx, sy = _side(size[0], CROP_RATIO), _side(size[1], CROP_RATIO)
    return {"dx": jax.random.randint(kx, (n,), -sx, sx + 1), "dy": jax.random.randint(ky, (n,), -sy, sy + 1)}


def _sample_cutout(key, n, size):
    kx, ky = jax.random.split(key)
    cut_h, cut_w = _side(size[0], CUTOUT_RATIO), _side(size[1], CUTOUT_RATIO)
    return {"cx": jax.random.randint(kx, (n,), 0, size[0] + (1 - cut_h % 2)),
            "cy": jax.random.randint(ky, (n,), 0, size[1] + (1 - cut_w % 2))}


def _sample_flip(key, n, size):
    return {"flip": jax.random.uniform(key, (n,)) < FLIP_PROB}


def _sample_scale(key, n, size):
    kx, ky = jax.random.split(key)
    lo, hi = 1.0 / SCALE_RATIO, SCALE_RATIO
    return {"sx": jax.random.uniform(kx, (n,)) * (hi - lo) + lo, "sy": jax.random.uniform(ky, (n,)) * (hi - lo) + lo}


def _sample_rotate(key, n, size):
    u = jax.random.uniform(key, (n,))
    return {"angle": (u - 0.5) * 2.0 * ROTATE_DEGREES / 180.0 * math.pi}


# --- application: x (N, H, W, C); params broadcast from (1,) or (N,) ----------------------------------

def _col(v, x):
    return jnp.broadcast_to(v, (x.shape[0],)).astype(x.dtype)[:, None, None, None]


def _apply_color(p, x):
    x = x + (_col(p["brightness"], x) - 0.5)
    mean_c = x.mean(axis=3, keepdims=True)
    x = (x - mean_c) * (_col(p["saturation"], x) * 2.0) + mean_c
    mean_all = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x - mean_all) * (_col(p["contrast"], x) + 0.5) + mean_all


def _shift_one(img, dx, dy):
    # out[i, j] = img[i + dx, j + dy], zeros where that falls outside
    h, w = img.shape[:2]
    ih, jw = jnp.arange(h) + dx, jnp.arange(w) + dy
    valid = ((ih >= 0) & (ih < h))[:, None] & ((jw >= 0) & (jw < w))[None, :]
    out = img[jnp.clip(ih, 0, h - 1)][:, jnp.clip(jw, 0, w - 1)]
    return out * valid[..., None].astype(img.dtype)


def _apply_crop(p, x):
    n = x.shape[0]
    return jax.vmap(_shift_one)(x, jnp.broadcast_to(p["dx"], (n,)), jnp.broadcast_to(p["dy"], (n,)))


def _apply_cutout(p, x):
    n, h, w = x.shape[:3]
    cx, cy = jnp.broadcast_to(p["cx"], (n,)), jnp.broadcast_to(p["cy"], (n,))
    cut_h, cut_w = _side(h, CUTOUT_RATIO), _side(w, CUTOUT_RATIO)
    rows = jnp.arange(h)[None, :]
    cols = jnp.arange(w)[None, :]
    in_r = (rows >= cx[:, None] - cut_h // 2) & (rows < cx[:, None] - cut_h // 2 + cut_h)
    in_c = (cols >= cy[:, None] - cut_w // 2) & (cols < cy[:, None] - cut_w // 2 + cut_w)
    keep = ~(in_r[:, :, None] & in_c[:, None, :])
    return x * keep[..., None].astype(x.dtype)


def _apply_flip(p, x):
    f = jnp.broadcast_to(p["flip"], (x.shape[0],))[:, None, None, None]
    return jnp.where(f, x[:, :, ::-1, :], x)


def affine_resample(img: jax.Array, theta: jax.Array, align_corners: bool = ALIGN_CORNERS) -> jax.Array:
    """Bilinear resampling with zero padding, as torch's affine_grid + grid_sample.

    Args:
      img: (H, W, C) image.
      theta: (2, 3) affine matrix mapping output to input normalised coordinates (x = width axis).
      align_corners: torch's flag, used for both the grid and the sampling.
    Returns:
      (H, W, C) resampled image.
    """
    h, w = img.shape[:2]

    def base(size):
        if align_corners:
            return jnp.linspace(-1.0, 1.0, size)
        return (2.0 * jnp.arange(size) + 1.0) / size - 1.0

    gy, gx = jnp.meshgrid(base(h), base(w), indexing="ij")
    sx = theta[0, 0] * gx + theta[0, 1] * gy + theta[0, 2]
    sy = theta[1, 0] * gx + theta[1, 1] * gy + theta[1, 2]
    if align_corners:
        ix, iy = (sx + 1.0) / 2.0 * (w - 1), (sy + 1.0) / 2.0 * (h - 1)
    else:
        ix, iy = ((sx + 1.0) * w - 1.0) / 2.0, ((sy + 1.0) * h - 1.0) / 2.0
    x0, y0 = jnp.floor(ix), jnp.floor(iy)
    wx1, wy1 = ix - x0, iy - y0
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)

    def tap(yy, xx):
        valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        v = img[jnp.clip(yy, 0, h - 1), jnp.clip(xx, 0, w - 1)]
        return v * valid[..., None].astype(img.dtype)

    return ((1 - wy1) * (1 - wx1))[..., None] * tap(y0, x0) + ((1 - wy1) * wx1)[..., None] * tap(y0, x0 + 1) \
        + (wy1 * (1 - wx1))[..., None] * tap(y0 + 1, x0) + (wy1 * wx1)[..., None] * tap(y0 + 1, x0 + 1)


def apply_theta(x: jax.Array, theta: jax.Array) -> jax.Array:
    """`affine_resample` of every image of x (N, H, W, C) with theta (2, 3), (1, 2, 3) or (N, 2, 3)."""
    return jax.vmap(affine_resample)(x, jnp.broadcast_to(theta, (x.shape[0], 2, 3)).astype(x.dtype))


def _theta_scale(p):
    sx, sy = p["sx"], p["sy"]
    z = jnp.zeros_like(sx)
    return jnp.stack([jnp.stack([sx, z, z], -1), jnp.stack([z, sy, z], -1)], -2)


def _theta_rotate(p):
    a = p["angle"]
    z = jnp.zeros_like(a)
    return jnp.stack([jnp.stack([jnp.cos(a), jnp.sin(-a), z], -1), jnp.stack([jnp.sin(a), jnp.cos(a), z], -1)], -2)


def _apply_scale(p, x):
    return apply_theta(x, _theta_scale(p))


def _apply_rotate(p, x):
    return apply_theta(x, _theta_rotate(p))


DSA_OPS: dict[str, tuple[Callable, Callable]] = {
    "color": (_sample_color, _apply_color),
    "crop": (_sample_crop, _apply_crop),
    "cutout": (_sample_cutout, _apply_cutout),
    "flip": (_sample_flip, _apply_flip),
    "scale": (_sample_scale, _apply_scale),
    "rotate": (_sample_rotate, _apply_rotate),
}
# The ops that are one affine resampling, by their matrix (params -> (n, 2, 3)): a stage choosing among several of
# them resamples once with the chosen matrix (policy.apply_policy).
AFFINE_THETAS: dict[str, Callable] = {"scale": _theta_scale, "rotate": _theta_rotate}
