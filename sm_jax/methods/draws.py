"""The random draws of one matching step, as typed records: every family that matches classes (gradient matching,
DM) draws its real batches, partitions and augmentation keys with `draw_inputs`, so that the same key gives the same
draws whichever loss consumes them."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sm_jax import sharding
from sm_jax.data import DataSpec
from sm_jax.matching import sample_rows
from sm_jax.methods.context import Context, real_batch
from sm_jax.methods.run_config import RunConfig


class MatchInputs(NamedTuple):
    """One matching step's inputs, per class (leading axis C); a term that is off has None in its fields."""

    images: jax.Array  # (C, ipc, H, W, ch) the stored images
    label: jax.Array  # (C,) int32
    k_syn: jax.Array  # (C,) keys of the whole-class term's choice of synthetic images (IDC's cap)
    real: jax.Array | None  # (C, B, H, W, ch) whole-class real batches, normalised; None with --subset-only
    k_all: jax.Array | None  # (C,) siamese keys of the whole-class terms
    real_sub: jax.Array | None  # (C, K, Bs, H, W, ch) real batches per (class, subset); None without subsets
    syn_part: jax.Array | None  # (C, K, n/K) int32: the fixed synthetic partition
    k_sub: jax.Array | None  # (C, K) siamese keys of the subset terms


class SynSide(NamedTuple):
    """The split form's synthetic side, per class: the real sides' parameter gradients in place of the batches."""

    images: jax.Array  # (C, ipc, H, W, ch)
    label: jax.Array  # (C,)
    k_syn: jax.Array  # (C,)
    target: object  # the whole-class term's real gradient (a params pytree, leading axis C), or None
    k_all: jax.Array | None  # (C,)
    target_sub: object  # the subset terms' real gradients (leading axes C, K), or None
    syn_part: jax.Array | None  # (C, K, n/K)
    k_sub: jax.Array | None  # (C, K)


def draw_inputs(cfg: RunConfig, images: jax.Array, ctx: Context, key: jax.Array, spec: DataSpec = DataSpec(),
                mesh=None) -> MatchInputs:
    """The random draws of one matching step: per class, the whole-class real batch (unless --subset-only), per
    (class, subset) a real batch from the subset's fixed partition (with subsets), and every term's augmentation key.

    Args:
      images: (C, ipc, H, W, ch) the stored images (carried along; the draws do not depend on them).
      ctx: the run's device constants (class indices, partitions, the training split).
      key: the step's key; split into the real draws, the synthetic choice and the augmentation keys.
    """
    c = images.shape[0]
    k_all, k_sub, k_syn, k_aug = jax.random.split(key, 4)
    ka_all, ka_sub = jax.random.split(k_aug)
    real = keys_all = real_sub = syn_part = keys_sub = None
    if not cfg.subset_only:
        idx = jax.vmap(sample_rows, (0, 0, None))(jax.random.split(k_all, c), ctx.class_idx, cfg.batch_real)
        real = sharding.constrain(real_batch(ctx, idx, spec), mesh)  # (C, B, H, W, ch)
        keys_all = jax.random.split(ka_all, c)
    if cfg.use_subsets:
        k = ctx.real_part.shape[1]
        keys = jax.random.split(k_sub, c * k).reshape(c, k)
        idx = jax.vmap(jax.vmap(sample_rows, (0, 0, None)), (0, 0, None))(keys, ctx.real_part, cfg.subset_real)
        real_sub = sharding.constrain(real_batch(ctx, idx, spec), mesh)  # (C, K, Bs, H, W, ch)
        syn_part = ctx.syn_part  # (C, K, n/K)
        keys_sub = jax.random.split(ka_sub, c * k).reshape(c, k)
    return MatchInputs(images, jnp.arange(c), jax.random.split(k_syn, c), real, keys_all, real_sub, syn_part,
                       keys_sub)
