"""CutMix as IDC applies it in network training and evaluation."""
from __future__ import annotations

import jax
import jax.numpy as jnp


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
