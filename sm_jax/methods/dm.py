"""DM, distribution matching (Zhao & Bilen, WACV 2023; `main_DM.py` of the DC/DSA repository): per iteration a
freshly initialised, never-trained network in train mode; per class, the squared distance between the mean embedding
(the features before the classifier) of a real batch and of the class's synthetic images, both through one DSA
siamese draw; one SGD step on the synthetic pixels. Subset matching adds the same distance within each (real
subset, synthetic subset) pair, one draw per pair.

With a batch-norm network the official code embeds all classes' real images in one batch (train-mode statistics
over every class), and all synthetic images in another; so does `DM.match` (the subset term: per subset index k,
all classes' k-th subsets in one batch).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sm_jax import sharding
from sm_jax.augmentation import DSA_POLICY, drop_ops, siamese
from sm_jax.data import DataSpec
from sm_jax.errors import ConfigError
from sm_jax.matching import mean_embedding_distance
from sm_jax.methods.base import Method
from sm_jax.methods.classwise import batch_terms, image_grads
from sm_jax.methods.context import CondenseState, Context
from sm_jax.methods.draws import MatchInputs, draw_inputs


class DM(Method):
    name = "dm"
    distance = "mean_embedding"  # not a gradient distance: --distance does not apply
    match_policy = DSA_POLICY
    eval_policy = DSA_POLICY  # evaluation as DSA's

    @classmethod
    def paper_preset(cls, ipc: int, dataset: str) -> dict[str, Any]:
        return dict(iterations=20000, outer_loop=1, inner_loop=0, batch_real=256, lr_img=1.0, momentum_img=0.5,
                    init="real", factor=1, max_syn_per_class=0, eval_epochs=1000, eval_aug="", eval_models=20,
                    eval_batch=256, checkpoint_every=500)

    @classmethod
    def cpu_preset(cls, ipc: int, dataset: str) -> dict[str, Any]:
        """20 iterations on 64 real images per class; 3 networks x 40 epochs."""
        return {**cls.paper_preset(ipc, dataset), "iterations": 20, "batch_real": 64, "eval_epochs": 40,
                "eval_models": 3, "checkpoint_every": 10}

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.distance:
            raise ConfigError(f"--distance {cfg.distance} does not apply to DM (it matches mean embeddings)")

    def __init__(self, cfg, spec: DataSpec = DataSpec(), mesh=None):
        super().__init__(cfg, spec, mesh)
        self.match_policy = drop_ops(type(self).match_policy, cfg.aug_drop_ops)

    def embedder(self, state):
        """`(params, x) -> embeddings (N, D)` of the network in train mode; `state`: its initial running statistics
        (a batch-norm network normalises with the batch's own; the updated statistics are not kept)."""
        return lambda params, x: self.net.embed(params, state, x, train=True)[0]

    def class_loss(self, apply_fn, params, real, syn, label, key):
        real, syn = siamese(self.match_policy, key, real, syn)
        return mean_embedding_distance(apply_fn(params, real), apply_fn(params, syn))

    def match(self, images, params, ctx: Context, key: jax.Array, lam, apply_fn=None):
        """The matching loss and its gradient w.r.t. the stored images, on the draws gradient matching takes from
        the same key (draws.draw_inputs): per class (classwise.image_grads, `class_chunk` classes per program) or, a
        batch-norm network, every class in one batch (`_match_joint`). `apply_fn`: the embedding (default
        `embedder({})`).

        Returns:
          (grads like images, (loss_all (C,), loss_sub (C, K))).
        """
        embed = apply_fn or self.embedder({})
        xs = draw_inputs(self.cfg, images, ctx, key, self.spec, self.mesh)
        if self.batch_norm:
            grads, (la, ls) = self._match_joint(xs, params, lam, embed)
        else:
            whole, part = batch_terms(lambda r, s, y, k: self.class_loss(embed, params, r, s, y, k), xs)
            grads, (la, ls) = image_grads(self.decode, lambda syn, k: syn, xs, whole, part, self.subset_weight(lam),
                                          self.class_chunk)
        if not self.cfg.use_subsets:
            ls = jnp.zeros((images.shape[0], 1), jnp.float32)
        return sharding.constrain(grads, self.mesh), (la, ls)

    def _match_joint(self, xs: MatchInputs, params, lam, embed):
        """The batch-norm form: the same draws, every class through the network in one batch."""
        c = xs.images.shape[0]
        aug = jax.vmap(lambda r, s, k: siamese(self.match_policy, k, r, s))

        def joint(real, syn):  # (C, B, H, W, C'), (C, n, H, W, C') -> (C,) distances
            er = embed(params, real.reshape(-1, *real.shape[2:])).reshape(c, real.shape[1], -1)
            es = embed(params, syn.reshape(-1, *syn.shape[2:])).reshape(c, syn.shape[1], -1)
            return jax.vmap(mean_embedding_distance)(er, es)

        sub_weight = self.subset_weight(lam)

        def loss_fn(images):
            syn = self.decode(images)  # (C, n, H, W, C')
            la = ls = jnp.zeros((c,), jnp.float32)
            if xs.real is not None:  # (C, B, H, W, C')
                la = joint(*aug(xs.real, syn, xs.k_all))
            if xs.real_sub is not None:  # (C, K, Bs, H, W, C')
                syn_sub = syn[jnp.arange(c)[:, None, None], xs.syn_part]  # (C, K, n/K, H, W, C')
                r, s = jax.vmap(aug, in_axes=1, out_axes=1)(xs.real_sub, syn_sub, xs.k_sub)
                ls = jax.vmap(joint, in_axes=1, out_axes=1)(r, s)  # (C, K): per k, all classes in one batch
            return la.sum() + sub_weight * ls.sum(), (la, ls)

        return jax.grad(loss_fn, has_aux=True)(xs.images)

    def iteration(self, state: CondenseState, ctx: Context, key: jax.Array):
        """One DM iteration: a fresh network (never trained), one matching step on the synthetic pixels.

        Pure; jit at the call site (donating `state`).
        """
        k_net, k_match = jax.random.split(key)
        params, bn = self.net.init(k_net)
        lam = self.lam(state.iteration)
        images, opt_state, metrics = self.matching_step(state.images, state.opt_state, params, ctx, k_match, lam,
                                                        self.embedder(bn))
        metrics["lambda"] = jnp.asarray(self.subset_weight(lam))
        return CondenseState(images, opt_state, state.iteration + 1), metrics
