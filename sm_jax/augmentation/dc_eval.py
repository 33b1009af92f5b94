"""DC's evaluation augmentations (`utils.augment` of the DC/DSA code): not differentiable and not siamese, one op
drawn per image when training evaluation networks (MNIST: crop_scale_rotate; BatchNorm ConvNets: crop_noise)."""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from sm_jax.augmentation.dsa import affine_resample

# crop: shift by -4..3 pixels, filling with the batch's channel means; scale: nearest resize of each side by
# U(0.8, 1.2), centred, zero fill;
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


DC_OPS: dict[str, tuple[Callable, Callable]] = {
    "dc_crop_scale_rotate": (_dc_sampler(("crop", "scale", "rotate")), _dc_applier(("crop", "scale", "rotate"))),
    "dc_crop_noise": (_dc_sampler(("crop", "noise")), _dc_applier(("crop", "noise"))),
}
