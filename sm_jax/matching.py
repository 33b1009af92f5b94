"""Gradient-matching distances (and DM's mean-embedding distance), subset partitions, the lambda schedule and the
vmapped matching loss."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sm_jax.augmentation import NO_POLICY, Policy, siamese, siamese_side
from sm_jax.models import cross_entropy

Params = Any


def _rows(g: jax.Array) -> jax.Array:
    """A weight gradient as rows the official `distance_wb` compares: one per output channel.

    Flax conv kernels are HWIO and dense kernels (in, out), so the channel is the last axis; layer norm's (H, W, C)
    scale and bias (the official (C, H, W) tensor, NHWC here) give C rows of H * W, as the official code's.
    """
    if g.ndim >= 3:
        return jnp.moveaxis(g, -1, 0).reshape(g.shape[-1], -1)
    return g.T.reshape(g.shape[-1], -1) if g.ndim == 2 else g.reshape(g.shape[0], -1)


def _norm(a: jax.Array) -> jax.Array:
    """Row norms whose gradient at a zero row is 0, as torch.norm's, not NaN: a channel that no image activates
    (a dead ReLU after batch norm) has an all-zero gradient row."""
    sq = jnp.sum(a * a, axis=-1)
    nonzero = sq > 0
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def cosine_distance(g_real: Params, g_syn: Params) -> jax.Array:
    """DC/DSA's layer-wise distance: per weight tensor (ndim > 1), sum over output rows of 1 - cos.

    1-D tensors (biases, norm scale/shift) contribute 0, as in the official code.
    """
    total = jnp.zeros((), jnp.float32)
    for a, b in zip(jax.tree.leaves(g_real), jax.tree.leaves(g_syn)):
        if a.ndim <= 1:
            continue
        a, b = _rows(a), _rows(b)
        dot = jnp.sum(a * b, axis=-1)
        den = _norm(a) * _norm(b) + 1e-6
        total = total + jnp.sum(1.0 - dot / den)
    return total


def _idc_weights(g_real: Params, g_syn: Params):
    """The gradient pairs IDC's `matchloss` compares: every tensor that is neither 1-D (biases, per-channel norm
    parameters) nor 2-D (the classifier), i.e. conv kernels and layer norm's (H, W, C) scale and bias."""
    return [(a, b) for a, b in zip(jax.tree.leaves(g_real), jax.tree.leaves(g_syn)) if a.ndim >= 3]


def mse_distance(g_real: Params, g_syn: Params) -> jax.Array:
    """IDC's distance: the sum of squared differences over `_idc_weights` (no fc, biases or per-channel norms)."""
    return sum((jnp.sum((a - b) ** 2) for a, b in _idc_weights(g_real, g_syn)), jnp.zeros((), jnp.float32))


def l1_distance(g_real: Params, g_syn: Params) -> jax.Array:
    """IDC's `l1` metric (its MNIST and Fashion-MNIST setting): the sum of absolute differences over
    `_idc_weights`."""
    return sum((jnp.sum(jnp.abs(a - b)) for a, b in _idc_weights(g_real, g_syn)), jnp.zeros((), jnp.float32))


DISTANCES: dict[str, Callable[[Params, Params], jax.Array]] = {"cosine": cosine_distance, "mse": mse_distance,
                                                                "l1": l1_distance}


def lambda_schedule(lambda0: float, iteration, total: int):
    """lambda_e = lambda_0 * (1 - e / E): linear decay from lambda_0 to 0 over the run."""
    return lambda0 * (1.0 - iteration / max(total, 1))


def make_partition(rng: np.random.Generator, class_members: np.ndarray, k: int) -> np.ndarray:
    """Random partition of one class's members into k disjoint subsets of (near-)equal size.

    Args:
      rng: numpy Generator (seeded by the run; the partition is built once, on the host).
      class_members: (n,) indices of the class's items.
      k: number of subsets.
    Returns:
      (k, ceil(n / k)) int32 indices, padded with -1 where n is not a multiple of k.
    """
    n = len(class_members)
    if k < 1 or k > n:
        raise ValueError(f"cannot split {n} items into {k} subsets")
    perm = class_members[rng.permutation(n)]
    size = -(-n // k)
    out = np.full((k, size), -1, np.int32)
    for i, chunk in enumerate(np.array_split(perm, k)):
        out[i, :len(chunk)] = chunk
    return out


def sample_rows(key: jax.Array, members: jax.Array, n: int) -> jax.Array:
    """n distinct entries of `members` (padded with -1), uniformly without replacement.

    Args:
      key: PRNG key.
      members: (m,) int32 indices, -1 for padding; at least n of them valid.
      n: how many to draw (static).
    Returns:
      (n,) int32 indices.
    """
    scores = jnp.where(members >= 0, jax.random.uniform(key, members.shape), -1.0)
    _, pos = jax.lax.top_k(scores, n)
    return members[pos]


def param_grad(apply_fn: Callable, params: Params, x: jax.Array, labels: jax.Array) -> Params:
    """Gradient of the mean cross-entropy w.r.t. the network parameters."""
    return jax.grad(lambda p: cross_entropy(apply_fn(p, x), labels))(params)


def class_match(apply_fn: Callable, dist: Callable, policy: Policy, params: Params, real: jax.Array,
                syn: jax.Array, label: jax.Array, key: jax.Array) -> jax.Array:
    """D(grad(E(real)), grad(E(syn))) for one class (or one subset of it), E a single siamese draw.

    Args:
      real: (B, H, W, C) normalised real images of the class.
      syn: (n, H, W, C) normalised synthetic images of the class.
      label: int32 scalar class.
      key: key of this (class, subset)'s siamese augmentation draw.
    Returns:
      scalar distance; its gradient flows into `syn` only (real gradients are constants).
    """
    real, syn = siamese(policy, key, real, syn)  # one draw for both sides (the split form draws it per side)
    return syn_match(apply_fn, dist, NO_POLICY, params, real_grads(apply_fn, NO_POLICY, params, real, label, key),
                     syn, label, key)


def real_grads(apply_fn: Callable, policy: Policy, params: Params, real: jax.Array, label: jax.Array,
               key: jax.Array) -> Params:
    """The real side of `class_match` alone: the (constant) parameter gradient its distance compares against.

    Args:
      real: (B, H, W, C) normalised real images of the class; label: int32 scalar; key: the pair's siamese key.
    """
    real = siamese_side(policy, key, real)
    return jax.lax.stop_gradient(param_grad(apply_fn, params, real, jnp.full(real.shape[:1], label)))


def syn_match(apply_fn: Callable, dist: Callable, policy: Policy, params: Params, g_real: Params,
              syn: jax.Array, label: jax.Array, key: jax.Array) -> jax.Array:
    """The synthetic side of `class_match`: D(g_real, grad(E(syn))), with `g_real` from `real_grads` under the same
    key, so that `syn_match(..., real_grads(..., real, ...), syn, ...)` is `class_match(..., real, syn, ...)`.

    Args:
      g_real: the real side's parameter gradient; syn: (n, H, W, C) normalised synthetic images of the class.
    """
    syn = siamese_side(policy, key, syn)
    return dist(g_real, param_grad(apply_fn, params, syn, jnp.full(syn.shape[:1], label)))


def mean_embedding_distance(e_real: jax.Array, e_syn: jax.Array) -> jax.Array:
    """DM's distance: ||mean(e_real) - mean(e_syn)||^2 over the batch axis of embeddings (B, D), (n, D); the real
    side is a constant (the official code detaches it)."""
    return jnp.sum((jax.lax.stop_gradient(e_real).mean(0) - e_syn.mean(0)) ** 2)


def matching_losses(apply_fn: Callable, dist: Callable, policy: Policy, params: Params,
                    real_all: jax.Array | None, syn_all: jax.Array | None,
                    real_sub: jax.Array | None, syn_sub: jax.Array | None, key: jax.Array):
    """Per-class whole-set and per-(class, subset) matching distances, vmapped (no Python loop over classes).

    The straightforward all-classes form: grad of the summed losses w.r.t. the synthetic images is the reference
    that `methods.Method.match` (per-class gradients in chunks of classes; faster and leaner on CPU)
    is tested against, and the one call that gives every class's losses at once.

    Args:
      real_all: (C, B, H, W, 3) real batches per class, or None to skip the whole-set term.
      syn_all: (C, n, H, W, 3) synthetic images per class.
      real_sub: (C, K, Bs, H, W, 3) real batches per (class, subset), or None to skip the subset term.
      syn_sub: (C, K, n/K, H, W, 3) synthetic subsets.
      key: PRNG key; split into one siamese draw per class and per (class, subset).
    Returns:
      (loss_all (C,), loss_sub (C, K)); a skipped term is zeros.
    """
    match = lambda r, s, y, k: class_match(apply_fn, dist, policy, params, r, s, y, k)  # noqa: E731
    k_all, k_sub = jax.random.split(key)
    if real_all is not None:
        c = real_all.shape[0]
        loss_all = jax.vmap(match)(real_all, syn_all, jnp.arange(c), jax.random.split(k_all, c))
    else:
        c = real_sub.shape[0]
        loss_all = jnp.zeros((c,), jnp.float32)
    if real_sub is not None:
        kk = real_sub.shape[1]
        labels = jnp.broadcast_to(jnp.arange(c)[:, None], (c, kk))
        keys = jax.random.split(k_sub, c * kk).reshape(c, kk)
        loss_sub = jax.vmap(jax.vmap(match))(real_sub, syn_sub, labels, keys)
    else:
        loss_sub = jnp.zeros((c, 1), jnp.float32)
    return loss_all, loss_sub
