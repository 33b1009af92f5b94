"""Network training loops shared by condensation (inner loops) and evaluation: pure, scan-based.

A network is anything with `apply(params, state, x, train) -> (logits, state)` (models.Net): parameters are
trained, the state (batch norm's running statistics, or {}) is carried along.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sm_jax.augmentation import Policy, augment, cutmix
from sm_jax.models import cross_entropy

Params = Any


def sgd(momentum: float = 0.0, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """PyTorch-semantics SGD direction (d = g + wd*p; buf = m*buf + d), WITHOUT the learning rate.

    The learning rate is applied by `apply_lr` so that schedules and momentum resets stay explicit.
    """
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    if momentum:
        parts.append(optax.trace(decay=momentum))
    return optax.chain(*parts) if parts else optax.identity()


def apply_lr(params: Params, updates: Params, lr) -> Params:
    return jax.tree.map(lambda p, u: p - lr * u, params, updates)


def reset_momentum(opt_state, reset) -> Any:
    """Zeroes the momentum buffers where `reset` (a traced bool) holds, as re-creating torch's optimizer does."""
    def fix(s):
        if isinstance(s, optax.TraceState):
            return optax.TraceState(trace=jax.tree.map(lambda t: jnp.where(reset, jnp.zeros_like(t), t), s.trace))
        return s
    return jax.tree.map(fix, opt_state, is_leaf=lambda s: isinstance(s, optax.TraceState))


def soft_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """KL(targets || softmax(logits)) averaged over the (weighted) rows: `targets` (batch, classes) probabilities.
    The same gradient as the soft cross-entropy; 0 where softmax(logits) equals the targets."""
    logq = jax.nn.log_softmax(logits)
    kl = jnp.sum(jax.scipy.special.xlogy(targets, targets) - targets * logq, axis=-1)
    if weights is None:
        return kl.mean()
    return (kl * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def train_step(net, tx: optax.GradientTransformation, params: Params, state, opt_state, x: jax.Array,
               y: jax.Array, w: jax.Array, key: jax.Array, lr, policy: Policy = (), cutmix_prob: float = 0.0,
               temperature: float = 1.0, teacher=None):
    """One SGD step on a (possibly padded) batch, the network in training mode.

    Args:
      net: a models.Net (or FnNet); state: its running statistics ({} for most networks).
      x: (B, H, W, C) normalised images; y: (B,) labels, or (B, classes) logits of soft targets (the loss is then
        KL(softmax(y / T) || softmax(logits / T))).
      w: (B,) 1 for real rows, 0 for padding.
      key: augmentation / CutMix key.
      lr: learning rate (scalar, may be traced).
      policy: per-sample augmentation policy (op chosen once per batch).
      cutmix_prob: probability of CutMix for this batch (0 disables it).
      temperature: T of the soft targets.
      teacher: (net, params, state) whose logits on the augmented (and mixed) batch are the soft targets: the
        student and the teacher see the same images; `y` is then unused.
    Returns:
      (params, state, opt_state, loss).
    """
    k_aug, k_mix = jax.random.split(key)
    x = augment(k_aug, policy, x)
    if cutmix_prob > 0:
        x, partner, lam = cutmix(k_mix, x, w > 0, cutmix_prob)
    else:
        partner, lam = None, 1.0
    if teacher is not None:
        t_net, t_params, t_state = teacher
        soft = jax.nn.softmax(jax.lax.stop_gradient(t_net.apply(t_params, t_state, x, False)[0]) / temperature)
    elif y.ndim == 2:
        soft = jax.nn.softmax(y / temperature)
        soft = soft if partner is None else lam * soft + (1.0 - lam) * soft[partner]
    else:
        soft = None

    def loss_fn(p):
        logits, new_state = net.apply(p, state, x, True)
        if soft is not None:
            return soft_cross_entropy(logits / temperature, soft, w), new_state
        if partner is None:
            return cross_entropy(logits, y, w), new_state
        return lam * cross_entropy(logits, y, w) + (1.0 - lam) * cross_entropy(logits, y[partner], w), new_state

    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return apply_lr(params, updates, lr), state, opt_state, loss


def epoch_batches(key: jax.Array, n: int, batch: int):
    """A shuffled epoch as padded batches (the last one partial, as torch's DataLoader with drop_last=False).

    Returns:
      (idx (steps, batch) int32, weight (steps, batch) float32).
    """
    steps = -(-n // batch)
    perm = jax.random.permutation(key, n)
    pad = steps * batch - n
    idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(steps, batch)
    w = jnp.concatenate([jnp.ones((n,)), jnp.zeros((pad,))]).reshape(steps, batch)
    return idx.astype(jnp.int32), w.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class TrainProtocol:
    """How a network is trained on a (synthetic) set: the evaluation protocol of a method."""

    epochs: int
    batch: int
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    policy: Policy = ()
    cutmix_prob: float = 0.0
    milestones: tuple[tuple[int, float], ...] = ()  # (first epoch at the reduced lr, lr factor)
    reset_momentum_at_milestones: bool = True
    temperature: float = 1.0  # of soft targets (a set's soft labels, a teacher's logits)


def lr_at_epoch(proto: TrainProtocol, epoch, lr=None) -> jax.Array:
    lr = jnp.asarray(proto.lr if lr is None else lr, jnp.float32)
    for e, g in proto.milestones:
        lr = jnp.where(epoch >= e, lr * g, lr)
    return lr


def train_on_set(net, params: Params, state, x: jax.Array, y: jax.Array, key: jax.Array,
                 proto: TrainProtocol, lr=None, teacher=None) -> tuple[Params, Any]:
    """Trains `params` (and the running statistics `state`) on (x, y) for proto.epochs epochs (pure; jit at the
    call site).

    Args:
      net: a models.Net; x: (N, H, W, C) normalised images; y: (N,) int32 labels or (N, classes) soft-target logits.
      lr: the initial learning rate, may be traced (default: proto.lr), so that a grid of rates is one program.
      teacher: (net, params, state) giving the soft targets on each augmented batch (train_step).
    Returns:
      (trained params, state).
    """
    def epoch_fn(carry, epoch):
        return train_epoch(net, proto, carry, x, y, key, epoch, lr, teacher), None

    carry = (params, state, optimizer(proto).init(params))
    (params, state, _), _ = jax.lax.scan(epoch_fn, carry, jnp.arange(proto.epochs))
    return params, state


def optimizer(proto: TrainProtocol) -> optax.GradientTransformation:
    return sgd(proto.momentum, proto.weight_decay)


def train_epoch(net, proto: TrainProtocol, carry, x: jax.Array, y: jax.Array, key: jax.Array, epoch, lr=None,
                teacher=None):
    """Epoch `epoch` of `train_on_set` (pure): carry = (params, state, opt_state) of `optimizer(proto)`, returned
    after the epoch; its batches and augmentation are drawn from fold_in(key, epoch), so training epoch by epoch
    (resuming between them) is the same computation."""
    params, state, opt_state = carry
    tx = optimizer(proto)
    n = x.shape[0]
    batch = min(proto.batch, n)  # a set smaller than the batch is one batch of n (no padded rows to compute)
    milestones = jnp.asarray([e for e, _ in proto.milestones] or [-1], jnp.int32)
    k = jax.random.fold_in(key, epoch)
    idx, w = epoch_batches(jax.random.fold_in(k, 0), n, batch)
    lr_e = lr_at_epoch(proto, epoch, lr)
    if proto.reset_momentum_at_milestones:
        opt_state = reset_momentum(opt_state, jnp.any(epoch == milestones))

    def step_fn(carry, inp):
        params, state, opt_state = carry
        i, wi, s = inp
        params, state, opt_state, _ = train_step(net, tx, params, state, opt_state, x[i], y[i], wi,
                                                 jax.random.fold_in(k, s + 1), lr_e, proto.policy,
                                                 proto.cutmix_prob, proto.temperature, teacher)
        return (params, state, opt_state), None

    carry, _ = jax.lax.scan(step_fn, (params, state, opt_state), (idx, w, jnp.arange(idx.shape[0])))
    return carry


def accuracy(net, params: Params, state, x: jax.Array, y: jax.Array, chunk: int = 500) -> jax.Array:
    """Top-1 accuracy (fraction) of the network in evaluation mode on normalised x (N, H, W, C), in chunks to
    bound memory."""
    n = x.shape[0]
    steps = -(-n // chunk)
    pad = steps * chunk - n
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]).reshape(steps, chunk, *x.shape[1:])
    yp = jnp.concatenate([y, jnp.full((pad,), -1, y.dtype)]).reshape(steps, chunk)
    correct = jax.lax.map(lambda xy: jnp.sum(jnp.argmax(net.apply(params, state, xy[0])[0], -1) == xy[1]),
                          (xp, yp))
    return correct.sum() / n
