"""Gradient matching (DC, DSA, IDC; DM reuses its draws): one jitted iteration of a fresh network, matching steps
vmapped over classes and subsets, network training between them. The run's device constants and state are in
context.py, the initialisations in inits.py.

A method's own module (dc.py, dsa.py, idc.py) holds what is its own: its presets (paper and cpu budgets, by ipc and
dataset), its distance, its augmentation policies and its evaluation protocol.
"""
from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp

from sm_jax import sharding
from sm_jax.augmentation import NO_POLICY, Policy, drop_ops
from sm_jax.backend import FUSED
from sm_jax.data import DataSpec
from sm_jax.matching import DISTANCES, class_match, real_grads, sample_rows, syn_match
from sm_jax.methods.base import Method
from sm_jax.methods.classwise import batch_terms, by_chunk, image_grads
from sm_jax.methods.context import CondenseState, Context, real_batch
from sm_jax.methods.draws import MatchInputs, SynSide, draw_inputs
from sm_jax.models import make_net, resolve_conv
from sm_jax.training import TrainProtocol, train_on_set

BN_PER_CLASS = 16  # real images per class that set a batch-norm network's statistics before matching (official)
BN_KEY = 0xB0  # folded into an outer step's key for that draw


class GradientMatching(Method):
    """A condensation method by gradient matching; subclasses (one module each) set what is their own."""

    distance: ClassVar[str]  # the method's own matching distance (matching.DISTANCES; Config.distance '' = this)
    match_policy: Policy = NO_POLICY  # siamese augmentation in matching
    net_policy: Policy = NO_POLICY  # augmentation of the inner-loop network training

    def __init__(self, cfg, spec: DataSpec = DataSpec(), mesh=None):
        # before Method's __init__, whose check of --syn-chunk reads `can_split`
        self.dist = DISTANCES.get(cfg.distance or self.distance)  # None for a method without a gradient distance
        super().__init__(cfg, spec, mesh)
        self.match_policy = drop_ops(type(self).match_policy, cfg.aug_drop_ops)
        self.net_policy = drop_ops(type(self).net_policy, cfg.aug_drop_ops)
        # the split form's synthetic side is vmapped over its chunk of classes: the matching network on the form of
        # a network shared across a vmapped axis (the real side keeps `self.net`, the form its class chunk needs)
        self.net_syn = None
        if self.syn_chunk != FUSED:
            shared = resolve_conv(cfg.conv_impl, vmap="shared")
            self.net_syn = self.net if getattr(self.net.module, "conv_impl", shared) == shared else make_net(
                cfg.model, self.num_classes, spec.image_shape, cfg.width, cfg.depth, cfg.norm, shared)

    @property
    def can_split(self) -> bool:
        """The split form needs a gradient distance (DM has none: its real side is one forward pass) and a network
        without running statistics (a batch-norm network's matching closes over statistics set per step)."""
        return self.dist is not None and not self.batch_norm

    # --- the synthetic set ------------------------------------------------------------------------------
    def apply_fn(self, params, x):
        """Logits of the matching network without running statistics (a batch-norm network's matching builds its
        own from the statistics `freeze_bn` sets)."""
        return self.net.apply(params, {}, x)[0]

    def freeze_bn(self, params, state, ctx: Context, key: jax.Array):
        """The official code's step before matching with a batch-norm network: one training-mode pass over 16 real
        images per class updates the running statistics, which the matching then uses (evaluation mode)."""
        per_class = min(BN_PER_CLASS, self.cfg.batch_real)
        idx = jax.vmap(sample_rows, (0, 0, None))(jax.random.split(key, self.num_classes), ctx.class_idx, per_class)
        x = real_batch(ctx, idx.reshape(-1), self.spec)  # (classes * 16, H, W, C)
        return self.net.apply(params, state, x, True)[1]

    # --- matching -----------------------------------------------------------------------------------------
    def class_loss(self, apply_fn, params, real: jax.Array, syn: jax.Array, label: jax.Array,
                   key: jax.Array) -> jax.Array:
        """The matching loss of one class (or one subset of it): gradient matching under one siamese draw.

        Args:
          apply_fn: the network function `match` was given; real: (B, H, W, C); syn: (n, H, W, C) normalised;
          label: int32 scalar class; key: this (class, subset)'s augmentation key.
        """
        return class_match(apply_fn, self.dist, self.match_policy, params, real, syn, label, key)

    def real_target(self, apply_fn, params, real: jax.Array, label: jax.Array, key: jax.Array):
        """The split form's real side of `class_loss`: what the synthetic side is matched to (a constant).

        Args: as `class_loss`'s, without `syn`.
        """
        return real_grads(apply_fn, self.match_policy, params, real, label, key)

    def syn_loss(self, apply_fn, params, target, syn: jax.Array, label: jax.Array, key: jax.Array) -> jax.Array:
        """The split form's synthetic side: `class_loss` with the real batch's `real_target` in its place."""
        return syn_match(apply_fn, self.dist, self.match_policy, params, target, syn, label, key)

    def select_syn(self, syn: jax.Array, key: jax.Array) -> jax.Array:
        """The synthetic images of one class's whole-class term (IDC caps their number).

        Args:
          syn: (n, H, W, C) one class's decoded images; key: that class's key.
        """
        return syn

    def match_inputs(self, images: jax.Array, ctx: Context, key: jax.Array) -> MatchInputs:
        """The random draws of one matching step (draws.draw_inputs): per class the stored images, the real batches
        of the whole-class term and the subset terms, the synthetic partition and every term's augmentation key."""
        return draw_inputs(self.cfg, images, ctx, key, self.spec, self.mesh)

    def match(self, images: jax.Array, params, ctx: Context, key: jax.Array, lam, apply_fn=None):
        """Matching loss and its gradient w.r.t. the stored images, for all classes and subsets.

        Per class (classwise.image_grads): `_fused` (both sides of every term in one program per `self.class_chunk`
        classes; 0 = all) or, with `self.syn_chunk` not FUSED, `_split` (the real sides first, then the synthetic
        sides): the same losses and gradients, to float rounding.
        `apply_fn(params, x)`: the network function of `class_loss` (default `self.apply_fn`, the logits; a batch-norm
        network's frozen one; DM's embedding).
        Returns:
          (grads like images, (loss_all (C,), loss_sub (C, K))).
        """
        apply_fn = apply_fn or self.apply_fn
        xs = self.match_inputs(images, ctx, key)
        if self.syn_chunk == FUSED:
            grads, (la, ls) = self._fused(xs, params, apply_fn, lam)
        else:
            grads, (la, ls) = self._split(xs, params, apply_fn, lam)
        if not self.cfg.use_subsets:
            ls = jnp.zeros((images.shape[0], 1), jnp.float32)
        return sharding.constrain(grads, self.mesh), (la, ls)

    def _fused(self, xs: MatchInputs, params, apply_fn, lam):
        """Every term's real and synthetic side in one program per `self.class_chunk` classes."""
        whole, part = batch_terms(lambda r, s, y, k: self.class_loss(apply_fn, params, r, s, y, k), xs)
        return image_grads(self.decode, self.select_syn, xs, whole, part, self.subset_weight(lam), self.class_chunk)

    def _split(self, xs: MatchInputs, params, apply_fn, lam):
        """The real sides' parameter gradients first (`real_target`, first order only), `self.class_chunk` classes
        per program; then the synthetic sides against them as constants (`syn_loss`, on `self.net_syn`),
        `self.syn_chunk` classes per program."""
        def targets(x):  # one class's real sides
            t = None if x.real is None else self.real_target(apply_fn, params, x.real, x.label, x.k_all)
            t_sub = None if x.real_sub is None else jax.vmap(
                lambda r, k: self.real_target(apply_fn, params, r, x.label, k))(x.real_sub, x.k_sub)
            return t, t_sub

        real_sides = xs._replace(images=None, k_syn=None, syn_part=None)
        target, target_sub = by_chunk(targets, real_sides, self.class_chunk)
        side = SynSide(xs.images, xs.label, xs.k_syn, target, xs.k_all, target_sub, xs.syn_part, xs.k_sub)
        syn_apply = lambda p, x: self.net_syn.apply(p, {}, x)[0]  # noqa: E731
        loss = lambda t, syn, label, k: self.syn_loss(syn_apply, params, t, syn, label, k)  # noqa: E731
        whole = None if target is None else lambda x, syn: loss(x.target, syn, x.label, x.k_all)
        part = None if target_sub is None else lambda x, syn: jax.vmap(
            lambda t, p, k: loss(t, syn[p], x.label, k))(x.target_sub, x.syn_part, x.k_sub)
        return image_grads(self.decode, self.select_syn, side, whole, part, self.subset_weight(lam), self.syn_chunk)

    # --- one iteration ------------------------------------------------------------------------------------
    def net_protocol(self) -> TrainProtocol:
        cfg = self.cfg
        return TrainProtocol(epochs=cfg.inner_loop, batch=cfg.batch_train, lr=cfg.lr_net, momentum=cfg.momentum_net,
                             weight_decay=cfg.weight_decay_net, policy=self.net_policy)

    def start_images(self, images):
        """Start-of-iteration transform of the stored images (IDC clamps them)."""
        return images

    def net_init(self, params):
        """The inner loop's optimiser state (IDC's momentum; none for DC/DSA's fresh optimiser per loop)."""
        return None

    def train_net(self, params, net_state, images, ctx: Context, key):
        """Inner-loop network training between matching steps: DC/DSA train on the (detached) synthetic set.

        net_state: (running statistics, optimiser state of net_init).
        """
        bn, opt = net_state
        syn = jax.lax.stop_gradient(self.decode(images))
        x = syn.reshape(-1, *syn.shape[2:])
        y = jnp.repeat(jnp.arange(syn.shape[0]), syn.shape[1])
        params, bn = train_on_set(self.net_alone, params, bn, x, y, key, self.net_protocol())
        return params, (bn, opt)

    def iteration(self, state: CondenseState, ctx: Context, key: jax.Array):
        """One condensation iteration: a fresh network, outer_loop matching steps with network training between.

        Pure; jit at the call site (donating `state`).
        Returns:
          (new state, metrics dict of scalars).
        """
        cfg = self.cfg
        k_net, k_loop = jax.random.split(key)
        params, bn = self.net.init(k_net)
        lam = self.lam(state.iteration)
        images = self.start_images(state.images)

        def outer(carry, step):
            images, opt_state, params, net_state = carry
            k_step = jax.random.fold_in(k_loop, step)
            k_match, k_train = jax.random.split(k_step)
            apply_fn = None
            if self.batch_norm:  # statistics from real data, frozen for the matching (static: the net's kind)
                bn = self.freeze_bn(params, net_state[0], ctx, jax.random.fold_in(k_step, BN_KEY))
                net_state = (bn, net_state[1])
                apply_fn = lambda p, x: self.net.apply(p, bn, x)[0]  # noqa: E731
            images, opt_state, metrics = self.matching_step(images, opt_state, params, ctx, k_match, lam, apply_fn)
            params, net_state = jax.lax.cond(
                step < cfg.outer_loop - 1,
                lambda p, s: self.train_net(p, s, images, ctx, k_train),
                lambda p, s: (p, s), params, net_state)
            return (images, opt_state, params, net_state), metrics

        carry = (images, state.opt_state, params, (bn, self.net_init(params)))
        (images, opt_state, _, _), metrics = jax.lax.scan(outer, carry, jnp.arange(cfg.outer_loop))
        metrics = jax.tree.map(jnp.mean, metrics)
        metrics["lambda"] = jnp.asarray(self.subset_weight(lam))
        return CondenseState(images, opt_state, state.iteration + 1), metrics
