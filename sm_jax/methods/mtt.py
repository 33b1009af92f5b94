"""MTT, trajectory matching (Cazenavette et al., CVPR 2022; `buffer.py`, `distill.py` of mtt-distillation), with
subset matching. METHOD.md section 10 holds the official algorithm and its numbers.

Each iteration takes the next expert of a shuffled walk and a start epoch s drawn from [0, max_start_epoch); a
student starts from the expert's epoch-s parameters and takes `syn_steps` plain SGD steps (lr: the learned `syn_lr`)
on minibatches of the synthetic images, each through DSA; the loss is the normalised parameter distance
||theta_N - theta_T||^2 / ||theta_0 - theta_T||^2 to the expert's epoch s + expert_epochs. Its gradient flows back
through every step into the images and syn_lr (second order). The unroll is a `lax.scan` whose body is
`jax.checkpoint`-ed: memory constant in syn_steps (each step's key goes through the scan, so the recomputation
redraws the same augmentation). `--tesla` replaces the exact gradient by TESLA's (the direct term of each step).

Subset matching: experts trained on the k-th real subset of every class (sm_jax.experts) and, for each k, a student
unrolled on the k-th synthetic subset of every class from that expert's start, matched to its target:
L = L_all + lambda * sum_k L_k, lambda decaying linearly to 0.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial

from sm_jax import experts
from sm_jax.augmentation import DSA_POLICY, augment, drop_ops
from sm_jax.data import Dataset, DataSpec, default_cache_dir
from sm_jax.data.registry import MTT_SUBSETS
from sm_jax.errors import ConfigError
from sm_jax.methods.base import Method
from sm_jax.models import cross_entropy

# METHOD.md section 10's table: (syn_steps, expert_epochs, max_start_epoch, batch_syn (0 = all), zca, lr_img, lr_lr)
TABLE: dict[tuple[str, int], tuple[int, int, int, int, bool, float, float]] = {
    ("cifar10", 1): (50, 2, 2, 0, True, 1000.0, 1e-7),
    ("cifar10", 10): (30, 2, 20, 0, True, 1000.0, 1e-5),
    ("cifar10", 50): (30, 2, 40, 0, False, 1000.0, 1e-5),
    ("cifar100", 1): (20, 3, 20, 0, True, 1000.0, 1e-5),
    ("cifar100", 10): (20, 2, 20, 0, False, 1000.0, 1e-5),
    ("cifar100", 50): (80, 2, 40, 125, True, 1000.0, 1e-5),
    # TinyImageNet (ConvNetD4): the authors' settings as transcribed outside the official repository (its README
    # shows the table as an image only): unconfirmed, docs/datasets.md
    ("tinyimagenet", 1): (10, 2, 10, 0, False, 1e4, 1e-4),
    ("tinyimagenet", 10): (20, 2, 40, 200, False, 1e4, 1e-4),
    ("tinyimagenet", 50): (20, 2, 40, 300, False, 1e4, 1e-4),
    # the ImageNet subsets (ConvNetD5): the maintainer's settings for every subset (issue #1), batch_syn 20 at ipc 10
    **{(name, ipc): (20, 2, 10, 20 if ipc == 10 else 0, False, 1e5, 1e-6) for name in MTT_SUBSETS for ipc in (1, 10)},
}


class MTTState(NamedTuple):
    images: jax.Array  # (classes, ipc, H, W, C) in the networks' input space (ZCA space with --zca)
    opt_state: Any  # the images' SGD momentum
    lr: jax.Array  # float32 scalar: the learned student lr (syn_lr)
    lr_opt_state: Any  # its SGD momentum
    order: jax.Array  # (1 + K, experts) int32: the current pass of the walk over the experts (whole data, subsets)
    iteration: jax.Array  # int32 scalar


class MTTContext(NamedTuple):
    trajectories: jax.Array  # (1 + K, experts, snapshots, P) float32: epochs 0..MTT.last_snapshot
    syn_part: jax.Array  # (classes, K, ipc / K) int32 indices into a class's synthetic images


class MTT(Method):
    name = "mtt"
    eval_policy = DSA_POLICY  # evaluate_synset with DSA
    uses_zca = True
    own_protocol = "learned"  # it evaluates at the lr it learned
    class_chunked = False  # a student's minibatch mixes every class
    shown_metrics = ("loss_all", "loss_subset", "lambda", "syn_lr")
    finite_metrics = ("loss_all", "loss_subset", "grad_norm", "syn_lr")

    @classmethod
    def paper_preset(cls, ipc: int, dataset: str) -> dict[str, Any]:
        """METHOD.md's table (CIFAR-10's row of the nearest ipc for another dataset or ipc), 5000 iterations, 100
        experts of 50 epochs, 5 evaluation networks of 1000 epochs at the learned lr."""
        steps, ee, ms, bs, zca, lr_img, lr_lr = TABLE[cls.table_row(ipc, dataset)]
        return dict(iterations=5000, syn_steps=steps, expert_epochs=ee, max_start_epoch=ms, batch_syn=bs, zca=zca,
                    lr_img=lr_img, momentum_img=0.5, lr_lr=lr_lr, lr_teacher=0.01, init="real", factor=1,
                    num_experts=100, expert_train_epochs=50, expert_batch=256, expert_per_class=0, outer_loop=1,
                    inner_loop=0, eval_epochs=1000, eval_models=5, eval_batch=256, eval_aug="",
                    checkpoint_every=100)

    @staticmethod
    def table_row(ipc: int, dataset: str) -> tuple[str, int]:
        """The row of TABLE the preset takes: (dataset, ipc) itself, else the dataset's (CIFAR-10's for a dataset
        without rows) nearest ipc."""
        rows = [k for k in TABLE if k[0] == dataset] or [k for k in TABLE if k[0] == "cifar10"]
        return min(rows, key=lambda k: (abs(k[1] - ipc), k[1]))

    @classmethod
    def preset_note(cls, ipc: int, dataset: str) -> str:
        row = cls.table_row(ipc, dataset)
        if row == (dataset, ipc):
            return ""
        steps, ee, ms, bs, zca, lr_img, lr_lr = TABLE[row]
        return (f"MTT's table has no row for {dataset} ipc {ipc}: {row[0]} ipc {row[1]}'s taken (syn_steps {steps}, "
                f"expert_epochs {ee}, max_start_epoch {ms}, lr_img {lr_img:g}, lr_lr {lr_lr:g})")

    @classmethod
    def cpu_preset(cls, ipc: int, dataset: str) -> dict[str, Any]:
        """Minutes on 2 cores: 2 experts of 4 epochs on 200 images per class, 10 unrolled steps from epochs 0..1,
        60 iterations; 3 networks of 100 epochs."""
        p = cls.paper_preset(ipc, dataset)
        return {**p, "iterations": 60, "syn_steps": 10, "max_start_epoch": 2, "expert_epochs": 2, "num_experts": 2,
                "expert_train_epochs": 4, "expert_per_class": 200, "eval_epochs": 100, "eval_models": 3,
                "checkpoint_every": 20}

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.factor != 1:
            raise ConfigError("--factor does not apply to MTT (its images are not decoded)")
        if cfg.max_start_epoch - 1 + cfg.expert_epochs > cfg.expert_train_epochs:
            raise ConfigError(f"the last start epoch ({cfg.max_start_epoch - 1}) + --expert-epochs {cfg.expert_epochs}"
                              f" exceeds the experts' --expert-train-epochs {cfg.expert_train_epochs}")
        if cfg.distance:
            raise ConfigError(f"--distance {cfg.distance} does not apply to MTT (it matches parameters)")
        if not (cfg.lr_teacher > 0):
            raise ConfigError(f"--lr-teacher must be positive, got {cfg.lr_teacher}")
        if cfg.tesla and cfg.use_subsets:
            raise ConfigError("--tesla is implemented for the whole-set term only: use --subset-k 1 with it")

    def __init__(self, cfg, spec: DataSpec = DataSpec(), mesh=None):
        super().__init__(cfg, spec, mesh)
        if self.batch_norm:
            raise ConfigError(f"MTT's students are functional networks without running statistics; {cfg.model} "
                              f"with {cfg.norm} has them")
        self.match_policy = drop_ops(DSA_POLICY, cfg.aug_drop_ops)
        self.lr_tx = optax.sgd(cfg.lr_lr, momentum=0.5)
        self.zca = None
        self._store = (None, None)  # (the dataset, its ExpertStore): `store`
        params, _ = self.net.init(jax.random.key(0))
        self.num_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
        self._unravel = ravel_pytree(params)[1]
        self.subsets = cfg.subset_k if cfg.use_subsets else 1
        self.rows = 1 + self.subsets if self.subsets > 1 else 1  # trajectory rows: whole data, then each subset
        n = self.num_classes * cfg.ipc
        if cfg.batch_syn and (n % cfg.batch_syn or (cfg.use_subsets and (n // cfg.subset_k) % max(1, cfg.batch_syn //
                                                                                                   cfg.subset_k))):
            raise ConfigError(f"--batch-syn {cfg.batch_syn} must divide the {n} synthetic images (and, per subset, "
                              f"its share of them)")

    # --- preparation: ZCA and the experts ----------------------------------------------------------------
    def attach(self, data: Dataset) -> None:
        if self.cfg.zca and self.zca is None:
            from sm_jax.data.zca import cached_zca

            self.zca = cached_zca(data.train_x, default_cache_dir(), f"{data.name} train split ({data.source})")

    def store(self, data: Dataset) -> experts.ExpertStore:
        """The experts of this config on `data` (built once per dataset: the identity hashes the training split)."""
        if self._store[0] is not data:
            ident = experts.identity(self.cfg, data)
            where = self.cfg.experts_dir or experts.default_dir(ident, default_cache_dir())
            self._store = (data, experts.ExpertStore(where, ident))
        return self._store[1]

    def preparation(self, data, log=print, stop=None, progress=True) -> None:
        """Finds the experts of this config's identity (refusing a directory of others) or trains them (resuming)."""
        self.attach(data)
        store = self.store(data)
        store.check()
        if store.complete:
            log(f"experts: reusing {store.dir}")
            return
        store.train(self.cfg, data, self.net, self.normalizer(), log, stop, progress)

    def context(self, data: Dataset, partitions) -> MTTContext:
        cfg = self.cfg
        store = self.store(data)
        store.check()
        if not store.complete:
            raise experts.ExpertError(f"{store.dir} holds {store.epochs_done()} of {cfg.expert_train_epochs} epochs "
                                      f"of the experts: train them first (python -m experiments.experts)")
        traj = store.load(0, self.last_snapshot)  # (rows, snapshots, P)
        traj = traj.reshape(self.rows, cfg.num_experts, *traj.shape[1:])
        syn_part = partitions[1] if partitions is not None else np.zeros((data.num_classes, 1, cfg.ipc), np.int32)
        return MTTContext(jnp.asarray(traj), jnp.asarray(syn_part))

    @property
    def last_snapshot(self) -> int:
        """The last expert epoch an iteration can read: the last start epoch + expert_epochs."""
        return self.cfg.max_start_epoch - 1 + self.cfg.expert_epochs

    def context_shapes(self, data: Dataset) -> MTTContext:
        cfg = self.cfg
        snaps = self.last_snapshot + 1
        return MTTContext(jax.ShapeDtypeStruct((self.rows, cfg.num_experts, snaps, self.num_params), jnp.float32),
                          jax.ShapeDtypeStruct((data.num_classes, cfg.subset_k, cfg.ipc // cfg.subset_k), jnp.int32))

    # --- the set ------------------------------------------------------------------------------------------
    def _whitening(self):
        if self.zca is None:
            raise RuntimeError("MTT with --zca: attach(data) first (the whitening is fitted on the training split)")
        return self.zca

    def normalize(self, x01):
        return self._whitening().apply(x01) if self.cfg.zca else super().normalize(x01)

    def normalizer(self) -> Partial:
        """`normalize` as a pytree, for a program that takes it as an argument (the ZCA transform an input of the
        program, not a constant in it)."""
        return self._whitening().normalizer() if self.cfg.zca else Partial(self.normalize)

    def denormalize(self, x):
        return self._whitening().invert(x) if self.cfg.zca else super().denormalize(x)

    def init_state(self, images):
        lr = jnp.asarray(self.cfg.lr_teacher, jnp.float32)
        return MTTState(images, self.img_tx.init(images), lr, self.lr_tx.init(lr),
                        jnp.zeros((self.rows, self.cfg.num_experts), jnp.int32), jnp.zeros((), jnp.int32))

    def class_axis(self, state):
        split = jax.tree.map(lambda _: False, state)
        return split._replace(images=True, opt_state=jax.tree.map(lambda _: True, state.opt_state))

    def learned(self, state) -> dict[str, float]:
        return {"lr": float(np.asarray(state.lr))}

    # --- one iteration ------------------------------------------------------------------------------------
    def _step_grad(self, y: jax.Array, key: jax.Array, batch: int):
        """`(theta (P,), x (n, H, W, C), i) -> (P,)`: the cross-entropy gradient of student step i at theta, on that
        step's minibatch of `batch` images (chunks of a permutation redrawn when used up) through DSA; every draw
        comes from `key` and i, so a recomputation redraws the same ones."""
        n = y.shape[0]
        chunks = n // batch
        k_perm, k_aug = jax.random.split(key)

        def grad_at(theta, x, i):
            perm = jax.random.permutation(jax.random.fold_in(k_perm, i // chunks), n)
            idx = jax.lax.dynamic_slice_in_dim(perm, (i % chunks) * batch, batch)
            xb = augment(jax.random.fold_in(k_aug, i), self.match_policy, x[idx])
            return jax.grad(lambda t: cross_entropy(self.net.apply(self._unravel(t), {}, xb, True)[0], y[idx]))(theta)

        return grad_at

    def student_loss(self, x: jax.Array, y: jax.Array, lr, theta0: jax.Array, target: jax.Array, key: jax.Array,
                     batch: int) -> jax.Array:
        """The normalised parameter distance after `syn_steps` student steps on (x, y) from theta0.

        Args:
          x: (n, H, W, C) synthetic images; y: (n,) labels; lr: the student's lr (scalar).
          theta0, target: (P,) flat parameters (the expert's epoch s and s + expert_epochs).
          key: this unroll's key (minibatches, augmentation); batch: images per step (divides n).
        """
        grad_at = self._step_grad(y, key, batch)

        def step(theta, i):
            return theta - lr * grad_at(theta, x, i), None

        body = jax.checkpoint(step) if self.cfg.remat else step
        theta, _ = jax.lax.scan(body, theta0, jnp.arange(self.cfg.syn_steps))
        return jnp.sum((theta - target) ** 2) / jnp.sum((theta0 - target) ** 2)

    def tesla_grads(self, x, y, lr, theta0, target, key, batch):
        """TESLA's form: (loss, (d/dx, d/dlr)). A forward pass without a graph keeps each step's parameters; then
        every step's gradient g_i is recomputed at them and the loss is backpropagated through g_i into that step's
        images only (the dependence of later steps on x is dropped: not the exact gradient)."""
        grad_at = self._step_grad(y, key, batch)

        def forward(theta, i):
            g = grad_at(theta, x, i)
            return theta - lr * g, (theta, g)

        theta_n, (thetas, gs) = jax.lax.scan(forward, theta0, jnp.arange(self.cfg.syn_steps))
        d = jnp.sum((theta0 - target) ** 2)
        loss = jnp.sum((theta_n - target) ** 2) / d
        v = jax.lax.stop_gradient(-lr * 2.0 * (theta_n - target) / d)  # dL/dg_i for every i: theta_N = theta_0 - lr G
        g_lr = jnp.sum(2.0 * (theta_n - target) * -gs.sum(0)) / d

        def direct(xx):
            def body(acc, inp):
                theta, i = inp
                return acc + jnp.vdot(v, grad_at(jax.lax.stop_gradient(theta), xx, i)), None
            body = jax.checkpoint(body) if self.cfg.remat else body
            return jax.lax.scan(body, jnp.zeros(()), (thetas, jnp.arange(self.cfg.syn_steps)))[0]

        return loss, (jax.grad(direct)(x), g_lr)

    def subset_losses(self, images: jax.Array, lr, syn_part: jax.Array, theta0: jax.Array, target: jax.Array,
                      key: jax.Array, batch: int) -> jax.Array:
        """The subset terms: student k unrolled on the k-th synthetic subset of every class, from expert k's start.

        Args:
          images: (C, ipc, H, W, C') the synthetic set; lr: the student lr; syn_part: (C, K, ipc / K) int32.
          theta0, target: (K, P) each subset expert's start and target; key: the subset terms' key; batch: the
            whole-set student's images per step (each subset student takes its K-th share).
        Returns:
          (K,) normalised parameter distances.
        """
        c, ipc = images.shape[:2]
        kk = syn_part.shape[1]
        sub = images[jnp.arange(c)[:, None, None], syn_part]  # (C, K, ipc/K, H, W, C')
        xs = jnp.swapaxes(sub, 0, 1).reshape(kk, c * (ipc // kk), *images.shape[2:])
        ys = jnp.repeat(jnp.arange(c), ipc // kk)
        keys = jax.random.split(key, kk)
        sub_batch = max(1, batch // kk)
        return jax.vmap(lambda x, a, b, k: self.student_loss(x, ys, lr, a, b, k, sub_batch))(xs, theta0, target, keys)

    def _pick(self, order, it, traj, key):
        """(theta0, target, start epoch) of the walk's current expert in one row of trajectories (experts, S, P)."""
        e = order[it % order.shape[0]]
        start = jax.random.randint(key, (), 0, self.cfg.max_start_epoch)
        return traj[e, start], traj[e, start + self.cfg.expert_epochs], start

    def iteration(self, state: MTTState, ctx: MTTContext, key: jax.Array):
        cfg = self.cfg
        c, ipc = state.images.shape[:2]
        k_walk, k_start, k_all, k_sub = jax.random.split(key, 4)
        e = cfg.num_experts
        # a new pass of the walk over the experts (each row its own shuffle) every `experts` iterations
        fresh = jax.vmap(lambda k: jax.random.permutation(k, e))(jax.random.split(k_walk, self.rows)).astype(jnp.int32)
        order = jnp.where(state.iteration % e == 0, fresh, state.order)
        starts = jax.random.split(k_start, self.rows)
        lam = self.lam(state.iteration)
        w = self.subset_weight(lam)
        labels = jnp.repeat(jnp.arange(c), ipc)
        batch = cfg.batch_syn or c * ipc
        theta0, target, start = self._pick(order[0], state.iteration, ctx.trajectories[0], starts[0])

        def whole(images, lr):
            return self.student_loss(images.reshape(-1, *images.shape[2:]), labels, lr, theta0, target, k_all, batch)

        def subsets(images, lr):
            picks = [self._pick(order[1 + k], state.iteration, ctx.trajectories[1 + k], starts[1 + k])
                     for k in range(cfg.subset_k)]
            return self.subset_losses(images, lr, ctx.syn_part, jnp.stack([p[0] for p in picks]),
                                      jnp.stack([p[1] for p in picks]), k_sub, batch)

        if cfg.tesla:
            la, (g_img, g_lr) = self.tesla_grads(state.images.reshape(-1, *state.images.shape[2:]), labels, state.lr,
                                                 theta0, target, k_all, batch)
            g_img = g_img.reshape(state.images.shape)
            ls = jnp.zeros((1,), jnp.float32)
        else:
            def total(images, lr):
                la = jnp.zeros(()) if cfg.subset_only else whole(images, lr)
                ls = subsets(images, lr) if cfg.use_subsets else jnp.zeros((1,), jnp.float32)
                return la + w * ls.sum(), (la, ls)

            (_, (la, ls)), (g_img, g_lr) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(state.images,
                                                                                                   state.lr)
        updates, opt_state = self.img_tx.update(g_img, state.opt_state, state.images)
        images = optax.apply_updates(state.images, updates)
        lr_updates, lr_opt_state = self.lr_tx.update(g_lr, state.lr_opt_state, state.lr)
        lr = optax.apply_updates(state.lr, lr_updates)
        metrics = {"loss_all": la, "loss_subset": ls.sum(), "lambda": jnp.asarray(w, jnp.float32),
                   "grad_norm": optax.tree.norm(g_img), "syn_lr": lr, "start_epoch": start}
        return MTTState(images, opt_state, lr, lr_opt_state, order, state.iteration + 1), metrics
