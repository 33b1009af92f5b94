"""Per-class gradients w.r.t. the stored images: class c's loss depends on images[c] only, so each class's gradient
is taken on its own, vmapped over a chunk of classes and, inside, over the K subsets. Gradient matching and DM's
per-class form both build their step from these two functions."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def by_chunk(f: Callable, xs, n: int):
    """`f` mapped over the classes (axis 0 of every leaf of `xs`): vmapped, n classes per program (0 or >= C: all in
    one); the same values either way."""
    c = jax.tree.leaves(xs)[0].shape[0]
    return jax.vmap(f)(xs) if n <= 0 or n >= c else jax.lax.map(f, xs, batch_size=n)


def batch_terms(loss: Callable, xs):
    """The (whole, part) closures of `image_grads` for inputs holding real batches (draws.MatchInputs): `loss(real,
    syn, label, key)` on the whole-class batch and, vmapped over the K subsets, on each (real subset, synthetic
    subset) pair; None for a term that is off."""
    whole = None if xs.real is None else lambda x, syn: loss(x.real, syn, x.label, x.k_all)
    part = None if xs.real_sub is None else lambda x, syn: jax.vmap(
        lambda r, p, k: loss(r, syn[p], x.label, k))(x.real_sub, x.syn_part, x.k_sub)
    return whole, part


def image_grads(decode: Callable, select_syn: Callable, xs, whole: Callable | None, part: Callable | None,
                weight, chunk: int):
    """Per-class gradients w.r.t. the stored images of L_all + weight * sum_k L_k, `chunk` classes per program.

    Args:
      decode: (1, ipc, H, W, ch) stored images -> (1, n, H, W, ch) the images that are matched.
      select_syn: (syn (n, H, W, ch), key) -> the whole-class term's synthetic images (IDC's cap).
      xs: per-class inputs (draws.MatchInputs or draws.SynSide): `images`, `k_syn` and the terms' fields.
      whole: (x, syn) -> one class's L_all on its selected decoded images `syn`, or None (no whole-class term).
      part: (x, syn) -> one class's (K,) L_k on its decoded images `syn` (split by x.syn_part), or None.
    Returns:
      (grads (C, ipc, H, W, ch), (loss_all (C,), loss_sub (C, K))).
    """
    def class_grad(x):
        def loss_fn(images_c):  # (ipc, H, W, ch) stored images of one class
            syn = decode(images_c[None])[0]  # (n, H, W, ch)
            la = ls = jnp.zeros((), jnp.float32)
            if whole is not None:
                la = whole(x, select_syn(syn, x.k_syn))
            if part is not None:
                ls = part(x, syn)  # (K,)
            return la + weight * ls.sum(), (la, ls)

        return jax.grad(loss_fn, has_aux=True)(x.images)

    return by_chunk(class_grad, xs, chunk)
