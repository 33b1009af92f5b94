"""Augmentation policies: which ops, in which stages, drawn how.

A policy is a tuple of stages; a stage is a tuple of op names (`OPS`). A one-op stage is always applied; a stage
with several ops applies one of them, chosen uniformly once per call (per batch). Sampling the parameters is
separate from applying them: `sample_policy(key, policy, n)` draws, `apply_policy(policy, params, x)` applies.
Each method names its own policies (sm_jax.methods).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from sm_jax.augmentation.dc_eval import DC_OPS
from sm_jax.augmentation.dsa import AFFINE_THETAS, DSA_OPS, apply_theta

Policy = tuple[tuple[str, ...], ...]
NO_POLICY: Policy = ()
# DSA's 'color_crop_cutout_flip_scale_rotate', one of the six ops per draw: DSA's matching, training and evaluation,
# and every method that borrows them (DM, MTT, its experts, DD-Ranking's augmented cells)
DSA_POLICY: Policy = (("color", "crop", "cutout", "flip", "scale", "rotate"),)

OPS: dict[str, tuple[Callable, Callable]] = {**DSA_OPS, **DC_OPS}  # name -> (sample, apply)


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
            x = _apply_one_of(stage, p, x)
    return x


def _apply_one_of(stage: tuple[str, ...], p: dict[str, Any], x: jax.Array) -> jax.Array:
    """The op `p['choice']` of `stage`. Under vmap (a draw per class) the choice is batched and every branch of the
    switch runs, so the stage's affine ops (scale, rotate) share one branch: one resampling with the chosen op's
    matrix, the same numbers as that op's own."""
    affine = [op for op in stage if op in AFFINE_THETAS]
    affine = affine if len(affine) > 1 else []
    others = [op for op in stage if op not in affine]
    branches = [lambda x, op=op: OPS[op][1](p[op], x) for op in others]
    if not affine:
        return jax.lax.switch(p["choice"], branches, x)
    branch = jnp.array([len(others) if op in affine else others.index(op) for op in stage])
    row = jnp.array([affine.index(op) if op in affine else 0 for op in stage])
    theta = jnp.stack([AFFINE_THETAS[op](p[op]) for op in affine])[row[p["choice"]]]  # (n, 2, 3) of the chosen op
    return jax.lax.switch(branch[p["choice"]], [*branches, lambda x: apply_theta(x, theta)], x)


def siamese(policy: Policy, key: jax.Array, real: jax.Array, syn: jax.Array) -> tuple[jax.Array, jax.Array]:
    """DSA's siamese augmentation: one draw of `policy` applied to both batches (N, H, W, C), (n, H, W, C)."""
    if not policy:
        return real, syn
    draw = sample_policy(key, policy, 1, real.shape[1:3])
    return apply_policy(policy, draw, real), apply_policy(policy, draw, syn)


def siamese_side(policy: Policy, key: jax.Array, x: jax.Array) -> jax.Array:
    """One side of `siamese`: the draw of `key` applied to one batch (N, H, W, C), so that the real and the synthetic
    side of a siamese pair can be computed in different programs (the same key gives the same transform)."""
    if not policy:
        return x
    return apply_policy(policy, sample_policy(key, policy, 1, x.shape[1:3]), x)


def augment(key: jax.Array, policy: Policy, x: jax.Array) -> jax.Array:
    """Per-sample augmentation of a batch (op chosen once per batch): the inner-loop and evaluation form."""
    if not policy:
        return x
    return apply_policy(policy, sample_policy(key, policy, x.shape[0], x.shape[1:3]), x)
