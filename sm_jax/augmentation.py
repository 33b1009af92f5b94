"""Differentiable augmentations (DSA's ops, IDC's orderings, CutMix) as pure functions of a PRNG key.

Sampling the parameters is separate from applying them: `sample_policy(key, policy, n)` draws the
parameters and `apply_policy(policy, params, x)` applies them. Siamese use (DSA/IDC matching) draws with
n=1 and applies the same parameters to the real and the synthetic batch; per-sample use draws with
n=batch. Images are NHWC in normalised space.

A policy is a tuple of stages; a stage is a tuple of op names. A one-op stage is always applied; a
stage with several ops applies one of them, chosen uniformly once per call (per batch).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

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

Policy = tuple[tuple[str, ...], ...]

DSA_POLICY: Policy = (("color", "crop", "cutout", "flip", "scale", "rotate"),)
IDC_MATCH_POLICY: Policy = (("color",), ("crop",), ("cutout",))
IDC_NET_POLICY: Policy = (("color",), ("crop",))
IDC_EVAL_POLICY: Policy = (("flip",), ("color",), ("crop", "scale", "rotate"))
NO_POLICY: Policy = ()


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


def _apply_theta(x, theta):
    return jax.vmap(affine_resample)(x, jnp.broadcast_to(theta, (x.shape[0], 2, 3)).astype(x.dtype))


def _apply_scale(p, x):
    sx, sy = p["sx"], p["sy"]
    z = jnp.zeros_like(sx)
    theta = jnp.stack([jnp.stack([sx, z, z], -1), jnp.stack([z, sy, z], -1)], -2)
    return _apply_theta(x, theta)


def _apply_rotate(p, x):
    a = p["angle"]
    z = jnp.zeros_like(a)
    theta = jnp.stack([jnp.stack([jnp.cos(a), jnp.sin(-a), z], -1), jnp.stack([jnp.sin(a), jnp.cos(a), z], -1)], -2)
    return _apply_theta(x, theta)


# --- DC's evaluation augmentation (utils.augment of the DC/DSA code) ---------------------------------------
# Not differentiable and not siamese: used when training evaluation networks, one op drawn per image. The official
# code applies it on MNIST (crop_scale_rotate) and for BatchNorm ConvNets (crop_noise). crop: shift by -4..3 pixels,
# filling with the batch's channel means; scale: nearest resize of each side by U(0.8, 1.2), centred, zero fill;
# rotate: -45..44 degrees about the centre, filling with the mean of the channel means; noise: + 0.001 N(0, 1).
DC_CROP, DC_SCALE, DC_ROTATE, DC_NOISE = 4, 0.2, 45, 0.001


def _dc_sampler(strategy: tuple[str, ...]):
    def sample(key, n, size):
        kc, kr, kx, ks, ka, kn = jax.random.split(key, 6)
        return {"choice": jax.random.randint(kc, (n,), 0, len(strategy)),
                "shift": jax.random.randint(kr, (n, 2), 0, 2 * DC_CROP) - DC_CROP,
                "scale": jax.random.uniform(ks, (n, 2), minval=1 - DC_SCALE, maxval=1 + DC_SCALE),
                "angle": jax.random.randint(ka, (n,), -DC_ROTATE, DC_ROTATE).astype(jnp.float32),
                "noise": jax.random.split(kn, n)}
    return sample


def _dc_crop(img, shift, mean):
    h, w = img.shape[:2]
    i, j = jnp.arange(h)[:, None] + shift[0], jnp.arange(w)[None, :] + shift[1]
    valid = ((i >= 0) & (i < h) & (j >= 0) & (j < w))[..., None]
    return jnp.where(valid, img[jnp.clip(i, 0, h - 1), jnp.clip(j, 0, w - 1)], mean)


def _dc_scale(img, scale):
    # F.interpolate (nearest) to (int(s0 * H), int(s1 * H)), pasted centred on a zero canvas, centre crop H x W
    h, w = img.shape[:2]
    nh, nw = jnp.floor(scale[0] * h).astype(jnp.int32), jnp.floor(scale[1] * h).astype(jnp.int32)
    side = jnp.maximum(jnp.maximum(nh, nw), max(h, w))
    a = jnp.arange(h)[:, None] + (side - h) // 2 - (side - nh) // 2  # row of the resized image
    b = jnp.arange(w)[None, :] + (side - w) // 2 - (side - nw) // 2
    valid = ((a >= 0) & (a < nh) & (b >= 0) & (b < nw))[..., None]
    src_i = jnp.floor(a * (h / nh)).astype(jnp.int32)
    src_j = jnp.floor(b * (w / nw)).astype(jnp.int32)
    return jnp.where(valid, img[jnp.clip(src_i, 0, h - 1), jnp.clip(src_j, 0, w - 1)], 0.0)


def _dc_rotate(img, angle, fill):
    # about the centre, bilinear (scipy's rotate is a cubic spline: a departure, README), filled with `fill`
    rad = angle * math.pi / 180.0
    theta = jnp.array([[jnp.cos(rad), -jnp.sin(rad), 0.0], [jnp.sin(rad), jnp.cos(rad), 0.0]])
    inside = affine_resample(jnp.ones(img.shape[:2] + (1,), img.dtype), theta, align_corners=True)
    return affine_resample(img, theta, align_corners=True) + (1.0 - inside) * fill


def _dc_applier(strategy: tuple[str, ...]):
    def apply(p, x):
        mean = x.mean(axis=(0, 1, 2))  # (C,): the batch's channel means, as the official code takes them
        n = x.shape[0]
        branches = {
            "crop": lambda: jax.vmap(_dc_crop, (0, 0, None))(x, jnp.broadcast_to(p["shift"], (n, 2)), mean),
            "scale": lambda: jax.vmap(_dc_scale)(x, jnp.broadcast_to(p["scale"], (n, 2))),
            "rotate": lambda: jax.vmap(_dc_rotate, (0, 0, None))(x, jnp.broadcast_to(p["angle"], (n,)), mean.mean()),
            "noise": lambda: x + DC_NOISE * jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(
                p["noise"]),
        }
        choice = jnp.broadcast_to(p["choice"], (n,))
        out = x
        for i, op in enumerate(strategy):
            out = jnp.where((choice == i)[:, None, None, None], branches[op](), out)
        return out
    return apply


OPS: dict[str, tuple[Callable, Callable]] = {
    "color": (_sample_color, _apply_color),
    "crop": (_sample_crop, _apply_crop),
    "cutout": (_sample_cutout, _apply_cutout),
    "flip": (_sample_flip, _apply_flip),
    "scale": (_sample_scale, _apply_scale),
    "rotate": (_sample_rotate, _apply_rotate),
    # DC's evaluation augmentations: one op (of those named) per image
    "dc_crop_scale_rotate": (_dc_sampler(("crop", "scale", "rotate")), _dc_applier(("crop", "scale", "rotate"))),
    "dc_crop_noise": (_dc_sampler(("crop", "noise")), _dc_applier(("crop", "noise"))),
}
DC_MNIST_POLICY: Policy = (("dc_crop_scale_rotate",),)
DC_BN_POLICY: Policy = (("dc_crop_noise",),)


def drop_ops(policy: Policy, ops: Sequence[str]) -> Policy:
    """`policy` without the named ops (a stage left empty disappears): e.g. no flips for digits."""
    return tuple(st for st in (tuple(op for op in stage if op not in ops) for stage in policy) if st)


def check_policy(policy: Policy) -> None:
    for stage in policy:
        for op in stage:
            if op not in OPS:
                raise ValueError(f"unknown augmentation op {op!r}; known: {', '.join(OPS)}")


def sample_policy(key: jax.Array, policy: Policy, n: int, size: tuple[int, int] = (32, 32)
                  ) -> tuple[dict[str, Any], ...]:
    """Draws the parameters of every stage of `policy`.

    Args:
      key: PRNG key.
      policy: tuple of stages (tuples of op names).
      n: 1 for one draw shared by a whole batch (siamese), or the batch size for per-sample draws.
      size: the images' (H, W) (crop shifts and cutout boxes scale with it).
    Returns:
      One dict per stage: {'choice': int32 scalar, op_name: op params with leading dim n, ...}.
    """
    out = []
    for stage, k in zip(policy, jax.random.split(key, max(len(policy), 1))):
        kc, *ks = jax.random.split(k, len(stage) + 1)
        params = {op: OPS[op][0](kk, n, tuple(size)) for op, kk in zip(stage, ks)}
        params["choice"] = jax.random.randint(kc, (), 0, len(stage))
        out.append(params)
    return tuple(out)


def apply_policy(policy: Policy, params: Sequence[dict[str, Any]], x: jax.Array) -> jax.Array:
    """Applies parameters drawn by `sample_policy` to x (N, H, W, C); differentiable in x."""
    for stage, p in zip(policy, params):
        if len(stage) == 1:
            x = OPS[stage[0]][1](p[stage[0]], x)
        else:
            branches = [lambda x, op=op: OPS[op][1](p[op], x) for op in stage]
            x = jax.lax.switch(p["choice"], branches, x)
    return x


def augment(key: jax.Array, policy: Policy, x: jax.Array) -> jax.Array:
    """Per-sample augmentation of a batch (op chosen once per batch): the inner-loop and evaluation form."""
    if not policy:
        return x
    return apply_policy(policy, sample_policy(key, policy, x.shape[0], x.shape[1:3]), x)


def cutmix(key: jax.Array, x: jax.Array, valid: jax.Array, prob: float = 0.5):
    """CutMix as in IDC: with probability `prob`, paste a box from a permuted partner.

    Args:
      key: PRNG key.
      x: (N, H, W, C) images.
      valid: (N,) bool, rows that are real samples (padding rows are never chosen as partners).
      prob: probability of mixing this batch.
    Returns:
      (mixed x, partner (N,) int32 indices, lam scalar): the loss is lam * CE(y) + (1 - lam) * CE(y[partner]).
    """
    n, h, w = x.shape[:3]
    ku, kl, kp, kx, ky = jax.random.split(key, 5)
    apply = jax.random.uniform(ku) < prob
    lam_box = jax.random.uniform(kl)  # Beta(1, 1)
    # valid rows come first (padding sits at the end), so this permutes the valid rows among themselves
    partner = jnp.argsort(jnp.where(valid, jax.random.uniform(kp, (n,)), 2.0)).astype(jnp.int32)
    cut = jnp.floor(w * jnp.sqrt(1.0 - lam_box)).astype(jnp.int32)
    cx, cy = jax.random.randint(kx, (), 0, h), jax.random.randint(ky, (), 0, w)
    x1, x2 = jnp.clip(cx - cut // 2, 0, h), jnp.clip(cx + cut // 2, 0, h)
    y1, y2 = jnp.clip(cy - cut // 2, 0, w), jnp.clip(cy + cut // 2, 0, w)
    rows, cols = jnp.arange(h), jnp.arange(w)
    box = ((rows >= x1) & (rows < x2))[:, None] & ((cols >= y1) & (cols < y2))[None, :]
    box = box & apply
    mixed = jnp.where(box[None, :, :, None], x[partner], x)
    lam = 1.0 - box.sum() / (h * w)
    return mixed, partner, lam.astype(x.dtype)
