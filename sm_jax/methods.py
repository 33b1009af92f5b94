"""DC, DSA and IDC behind one interface, each with optional subset matching.

A method owns: how the synthetic set is initialised and stored, how it is decoded into the images that
are matched and evaluated, the matching distance and augmentation, what one condensation iteration does,
and its evaluation protocol. `METHODS[name](config, spec)` builds one for a dataset's DataSpec (classes, image
shape, normalisation statistics).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sm_jax import augmentation as aug
from sm_jax import sharding
from sm_jax.backend import CPU_CLASS_CHUNK
from sm_jax.config import AUTO_CHUNK, Config, ConfigError, aug_drop_ops
from sm_jax.data import DataSpec, Dataset
from sm_jax.matching import DISTANCES, class_match, lambda_schedule, make_partition, sample_rows
from sm_jax.models import denormalize, make_net, normalize
from sm_jax.training import TrainProtocol, sgd, train_on_set, train_step


BN_PER_CLASS = 16  # real images per class that set a batch-norm network's statistics before matching (official)
BN_KEY = 0xB0  # folded into an outer step's key for that draw


class Context(NamedTuple):
    """Device-resident constants of a run (the dataset and the fixed subset partitions)."""

    train_x: jax.Array  # (N, H, W, C) uint8
    train_y: jax.Array  # (N,) int32
    class_idx: jax.Array  # (C, M) int32 indices into train_x, -1 padded
    real_part: jax.Array  # (C, K, M/K) int32 indices into train_x, -1 padded
    syn_part: jax.Array  # (C, K, n/K) int32 indices into a class's decoded synthetic images


class CondenseState(NamedTuple):
    images: jax.Array  # (classes, ipc, H, W, C): normalised (DC/DSA) or [0, 1] pixels (IDC)
    opt_state: Any  # image optimiser state
    iteration: jax.Array  # int32 scalar: iterations completed


def make_partitions(cfg: Config, class_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The run's fixed subset partitions, drawn once from the run seed.

    Args:
      cfg: run config (subset_k, seed, syn_per_class).
      class_idx: (C, M) training indices per class, -1 padded.
    Returns:
      real_part (C, K, ceil(M/K)) and syn_part (C, K, n/K) int32.
    """
    rng = np.random.default_rng([cfg.seed, 0x5B5E7])
    real = np.stack([make_partition(rng, row[row >= 0], cfg.subset_k) for row in class_idx])
    syn = np.stack([make_partition(rng, np.arange(cfg.syn_per_class), cfg.subset_k) for _ in class_idx])
    return real, syn


def make_context(cfg: Config, data: Dataset, partitions=None) -> Context:
    """Puts the dataset and the partitions (fresh, or restored from a checkpoint) on the device."""
    class_idx = data.class_indices()
    counts = (class_idx >= 0).sum(1)
    if counts.min() < cfg.batch_real:
        raise ConfigError(f"--batch-real {cfg.batch_real} exceeds the smallest class ({counts.min()} images)")
    real_part, syn_part = partitions if partitions is not None else make_partitions(cfg, class_idx)
    if cfg.use_subsets and (real_part >= 0).sum(-1).min() < cfg.subset_real:
        raise ConfigError(f"real subsets hold {(real_part >= 0).sum(-1).min()} images, fewer than the "
                         f"{cfg.subset_real} drawn per subset term")
    return Context(jnp.asarray(data.train_x), jnp.asarray(data.train_y), jnp.asarray(class_idx),
                   jnp.asarray(real_part), jnp.asarray(syn_part))


def real_batch(ctx: Context, idx: jax.Array, spec: DataSpec = DataSpec()) -> jax.Array:
    """Normalised float images for integer indices of any shape: (...,) -> (..., H, W, C)."""
    return normalize(ctx.train_x[idx].astype(jnp.float32) / 255.0, spec.mean, spec.std)


class GradientMatching:
    """DC (Zhao et al. 2021): noise init, layer-wise cosine distance, no augmentation."""

    name = "dc"
    distance = "cosine"
    match_policy: aug.Policy = aug.NO_POLICY
    net_policy: aug.Policy = aug.NO_POLICY
    eval_policy: aug.Policy = aug.NO_POLICY
    bn_eval_policy: aug.Policy = aug.DC_BN_POLICY  # DC's evaluation of ConvNetBN (utils.get_daparam)

    def __init__(self, cfg: Config, spec: DataSpec | int = DataSpec(), mesh=None):
        self.cfg = cfg
        self.spec = DataSpec(num_classes=spec) if isinstance(spec, int) else spec  # an int: CIFAR-like classes
        self.num_classes = self.spec.num_classes
        self.mesh = mesh  # a jax.sharding.Mesh: the class axis is split over its devices (None: one device)
        # the matching network (the official --model; ConvNet-3 by default)
        self.net = make_net(cfg.model, self.num_classes, self.spec.image_shape, cfg.width, cfg.depth, cfg.norm,
                            cfg.conv_impl)
        self.model = self.net.module
        self.batch_norm = self.net.has_state
        self.img_tx = optax.sgd(cfg.lr_img, momentum=cfg.momentum_img or None)
        self.dist = DISTANCES[cfg.distance or self.distance]
        drop = aug_drop_ops(cfg)
        self.match_policy = aug.drop_ops(type(self).match_policy, drop)
        self.net_policy = aug.drop_ops(type(self).net_policy, drop)
        self.eval_policy = aug.drop_ops(type(self).eval_policy, drop)
        if cfg.eval_aug:
            self.eval_policy = () if cfg.eval_aug == "none" else ((cfg.eval_aug,),)
        h, w = self.spec.image_shape[:2]
        if h % cfg.factor or w % cfg.factor:
            raise ConfigError(f"--factor {cfg.factor} must divide the image size {h}x{w}")

    # --- the synthetic set ------------------------------------------------------------------------------
    def apply_fn(self, params, x):
        """Logits of the matching network without running statistics (a batch-norm network's matching builds its
        own from the statistics `freeze_bn` sets)."""
        return self.net.apply(params, {}, x)[0]

    def init_params(self, key: jax.Array):
        """Fresh parameters of the matching network for this dataset's image shape."""
        return self.net.init(key)[0]

    def eval_net(self, arch: str | None = None):
        """The network the evaluation trains: architecture `arch` (models.ARCHS), by default the matching one."""
        if arch is None or arch == self.net.name:
            return self.net
        cfg = self.cfg
        return make_net(arch, self.num_classes, self.spec.image_shape, cfg.width, cfg.depth, cfg.norm, cfg.conv_impl)

    def freeze_bn(self, params, state, ctx: Context, key: jax.Array):
        """The official code's step before matching with a batch-norm network: one training-mode pass over 16 real
        images per class updates the running statistics, which the matching then uses (evaluation mode)."""
        per_class = min(BN_PER_CLASS, self.cfg.batch_real)
        idx = jax.vmap(sample_rows, (0, 0, None))(jax.random.split(key, self.num_classes), ctx.class_idx, per_class)
        x = real_batch(ctx, idx.reshape(-1), self.spec)  # (classes * 16, H, W, C)
        return self.net.apply(params, state, x, True)[1]

    def normalize(self, x01: jax.Array) -> jax.Array:
        """[0, 1] pixels -> the networks' input space, with the dataset's statistics."""
        return normalize(x01, self.spec.mean, self.spec.std)

    def denormalize(self, x: jax.Array) -> jax.Array:
        return denormalize(x, self.spec.mean, self.spec.std)

    def init_images(self, data: Dataset, key: jax.Array) -> jax.Array:
        """Initial stored images (classes, ipc, H, W, C) as the config's `init` says."""
        c, ipc = data.num_classes, self.cfg.ipc
        if self.cfg.init == "noise":
            return jax.random.normal(key, (c, ipc, *data.train_x.shape[1:]), jnp.float32)
        idx = data.class_indices()
        if self.cfg.init == "real":
            picks = [jax.random.choice(k, row[row >= 0], (ipc,), replace=False)
                     for k, row in zip(jax.random.split(key, c), idx)]
            return self.normalize(jnp.asarray(data.train_x)[jnp.stack(picks)].astype(jnp.float32) / 255.0)
        return idc_init(data.train_x, idx, ipc, self.cfg.factor)

    def decode(self, images: jax.Array) -> jax.Array:
        """Stored images -> the normalised images that are matched and evaluated: (classes, n, H, W, C)."""
        return images

    def to_pixels(self, images: jax.Array) -> jax.Array:
        """Stored images -> [0, 1] pixels for saving and viewing."""
        return jnp.clip(self.denormalize(images), 0.0, 1.0)

    def init_state(self, images: jax.Array) -> CondenseState:
        return CondenseState(images, self.img_tx.init(images), jnp.zeros((), jnp.int32))

    # --- matching -----------------------------------------------------------------------------------------
    def select_syn(self, syn: jax.Array, key: jax.Array) -> jax.Array:
        """The synthetic images of one class's whole-class term (IDC caps their number).

        Args:
          syn: (n, H, W, C) one class's decoded images; key: that class's key.
        """
        return syn

    def match(self, images: jax.Array, params, ctx: Context, key: jax.Array, lam, apply_fn=None):
        """Matching loss and its gradient w.r.t. the stored images, for all classes and subsets.

        Class c's loss depends on images[c] only, so each class's gradient is taken on its own: `class_grad` is
        vmapped over (a chunk of) the classes and, inside, over the K subsets. `cfg.class_chunk` classes go
        through one vmapped program at a time (0 = all at once), which bounds the memory of the second-order
        activations; the result is the same for every chunk size.
        `apply_fn(params, x)`: the network's logits (default `self.apply_fn`; a batch-norm network's frozen one).
        Returns:
          (grads like images, (loss_all (C,), loss_sub (C, K))).
        """
        cfg = self.cfg
        apply_fn = apply_fn or self.apply_fn
        c = images.shape[0]
        k_all, k_sub, k_syn, k_aug = jax.random.split(key, 4)
        ka_all, ka_sub = jax.random.split(k_aug)
        xs = {"images": images, "label": jnp.arange(c), "k_syn": jax.random.split(k_syn, c)}
        if not cfg.subset_only:
            idx = jax.vmap(sample_rows, (0, 0, None))(jax.random.split(k_all, c), ctx.class_idx, cfg.batch_real)
            xs["real"] = sharding.constrain(real_batch(ctx, idx, self.spec), self.mesh)  # (classes, B, H, W, C)
            xs["k_all"] = jax.random.split(ka_all, c)
        if cfg.use_subsets:
            k = ctx.real_part.shape[1]
            keys = jax.random.split(k_sub, c * k).reshape(c, k)
            idx = jax.vmap(jax.vmap(sample_rows, (0, 0, None)), (0, 0, None))(keys, ctx.real_part, cfg.subset_real)
            xs["real_sub"] = sharding.constrain(real_batch(ctx, idx, self.spec), self.mesh)  # (classes, K, Bs, H, W, C)
            xs["syn_part"] = ctx.syn_part  # (C, K, n/K)
            xs["k_sub"] = jax.random.split(ka_sub, c * k).reshape(c, k)
        sub_weight = 1.0 if cfg.subset_only else lam

        def class_grad(x):
            def loss_fn(images_c):  # (ipc, H, W, C) stored images of one class
                syn = self.decode(images_c[None])[0]  # (n, H, W, C)
                la = ls = jnp.zeros((), jnp.float32)
                if "real" in x:
                    la = class_match(apply_fn, self.dist, self.match_policy, params, x["real"],
                                     self.select_syn(syn, x["k_syn"]), x["label"], x["k_all"])
                if "real_sub" in x:
                    match = lambda r, part, kk: class_match(apply_fn, self.dist, self.match_policy,  # noqa: E731
                                                           params, r, syn[part], x["label"], kk)
                    ls = jax.vmap(match)(x["real_sub"], x["syn_part"], x["k_sub"])  # (K,)
                return la + sub_weight * ls.sum(), (la, ls)

            return jax.grad(loss_fn, has_aux=True)(x["images"])

        chunk = c if self.mesh is not None or cfg.class_chunk <= 0 else min(cfg.class_chunk, c)
        if chunk == c:
            grads, (la, ls) = jax.vmap(class_grad)(xs)
        else:
            grads, (la, ls) = jax.lax.map(class_grad, xs, batch_size=chunk)
        if not cfg.use_subsets:
            ls = jnp.zeros((c, 1), jnp.float32)
        return sharding.constrain(grads, self.mesh), (la, ls)

    # --- one iteration ------------------------------------------------------------------------------------
    def lam(self, iteration):
        return lambda_schedule(self.cfg.subset_lambda, iteration, self.cfg.iterations)

    def update_images(self, images, opt_state, grads):
        updates, opt_state = self.img_tx.update(grads, opt_state, images)
        return optax.apply_updates(images, updates), opt_state

    def net_protocol(self) -> TrainProtocol:
        cfg = self.cfg
        return TrainProtocol(epochs=cfg.inner_loop, batch=cfg.batch_train, lr=cfg.lr_net, momentum=cfg.momentum_net,
                             weight_decay=cfg.weight_decay_net, policy=self.net_policy)

    def prepare(self, images):
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
        params, bn = train_on_set(self.net, params, bn, x, y, key, self.net_protocol())
        return params, (bn, opt)

    def matching_step(self, images, opt_state, params, ctx: Context, key: jax.Array, lam, apply_fn=None):
        """One outer step: the matching of all classes and subsets, then the image update.

        Returns:
          (images, opt_state, metrics dict of scalars).
        """
        grads, (la, ls) = self.match(images, params, ctx, key, lam, apply_fn)
        images, opt_state = self.update_images(images, opt_state, grads)
        return images, opt_state, {"loss_all": la.sum(), "loss_subset": ls.sum(), "grad_norm": optax.tree.norm(grads)}

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
        images = self.prepare(state.images)

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
        metrics["lambda"] = jnp.asarray(0.0 if not cfg.use_subsets else (1.0 if cfg.subset_only else lam))
        return CondenseState(images, opt_state, state.iteration + 1), metrics

    # --- evaluation ---------------------------------------------------------------------------------------
    def eval_protocol(self, epochs: int | None = None, arch: str | None = None) -> TrainProtocol:
        """The evaluation training of architecture `arch` (default: the matching network's protocol).

        DC evaluates ConvNetBN with its crop / noise augmentation and, as augmented training "needs more epochs"
        in the official code (1000 instead of 300), 10/3 times the configured epochs unless `epochs` is given.
        """
        e = self.cfg.eval_epochs if epochs is None else epochs
        policy = self.eval_policy
        if self.bn_eval_policy and arch == "convnetbn" and not self.cfg.eval_aug:
            policy = self.bn_eval_policy
            e = e * 10 // 3 if epochs is None else e
        return TrainProtocol(epochs=e, batch=self.cfg.eval_batch, lr=self.cfg.eval_lr, momentum=0.9,
                             weight_decay=5e-4, policy=policy, milestones=((e // 2 + 1, 0.1),),
                             reset_momentum_at_milestones=True)


class DSA(GradientMatching):
    """DSA (Zhao & Bilen 2021): real init; siamese augmentation in matching, augmentation in training."""

    name = "dsa"
    match_policy = aug.DSA_POLICY
    net_policy = aug.DSA_POLICY
    eval_policy = aug.DSA_POLICY
    bn_eval_policy = aug.NO_POLICY  # DSA evaluates every network with its own augmentation


def idc_init(train_x: np.ndarray, class_idx: np.ndarray, ipc: int, factor: int = 2) -> jax.Array:
    """IDC's init: the first factor^2 * ipc images of each class, subsampled by `factor` and tiled.

    Block k (row-major) of stored image j holds real image k * ipc + j of the class.
    Returns:
      (classes, ipc, H, W, C) float32 in [0, 1].
    """
    n = factor * factor * ipc
    out = []
    for row in class_idx:
        row = row[row >= 0]
        if len(row) < n:
            raise ConfigError(f"IDC init needs {n} images per class, a class has {len(row)}")
        small = train_x[row[:n]][:, ::factor, ::factor].astype(np.float32) / 255.0  # (f*f*ipc, h, w, C)
        h, w, ch = small.shape[1:]
        blocks = small.reshape(factor, factor, ipc, h, w, ch)  # (block row, block col, image, ...)
        out.append(blocks.transpose(2, 0, 3, 1, 4, 5).reshape(ipc, factor * h, factor * w, ch))
    return jnp.asarray(np.stack(out))


def idc_decode(images: jax.Array, factor: int = 2) -> jax.Array:
    """Each stored image -> its factor^2 crops (row-major), upsampled bilinearly (align_corners False).

    Args:
      images: (classes, ipc, H, W, C), H and W multiples of factor.
    Returns:
      (classes, factor^2 * ipc, H, W, C), crop-major: index = crop * ipc + image.
    """
    if factor == 1:
        return images
    c, ipc, h, w, ch = images.shape
    sh, sw = h // factor, w // factor
    crops = images.reshape(c, ipc, factor, sh, factor, sw, ch).transpose(0, 2, 4, 1, 3, 5, 6)
    crops = crops.reshape(c, factor * factor * ipc, sh, sw, ch)
    return jax.image.resize(crops, (c, factor * factor * ipc, h, w, ch), "bilinear", antialias=False)


class IDC(GradientMatching):
    """IDC (Kim et al. 2022): multi-formation, mse over conv kernels, per-class image steps, real-data net training."""

    name = "idc"
    distance = "mse"
    match_policy = aug.IDC_MATCH_POLICY
    net_policy = aug.IDC_NET_POLICY
    eval_policy = aug.IDC_EVAL_POLICY

    def decode(self, images):
        return self.normalize(idc_decode(images, self.cfg.factor))

    def to_pixels(self, images):
        return jnp.clip(images, 0.0, 1.0)

    def prepare(self, images):
        return jnp.clip(images, 0.0, 1.0)

    def select_syn(self, syn, key):
        cap = self.cfg.max_syn_per_class
        if not cap or syn.shape[0] <= cap:
            return syn
        return syn[jax.random.choice(key, syn.shape[0], (cap,), replace=False)]

    def update_images(self, images, opt_state, grads):
        # IDC steps the optimiser once per class; class c's loss depends only on images[c], so the joint
        # gradient holds each class's gradient in its own slice. Replay the C momentum steps in order.
        def one(carry, c):
            images, opt_state = carry
            mask = (jnp.arange(images.shape[0]) == c).astype(grads.dtype)[:, None, None, None, None]
            updates, opt_state = self.img_tx.update(grads * mask, opt_state, images)
            return (optax.apply_updates(images, updates), opt_state), None

        (images, opt_state), _ = jax.lax.scan(one, (images, opt_state), jnp.arange(images.shape[0]))
        return images, opt_state

    def net_init(self, params):
        return sgd(self.cfg.momentum_net, self.cfg.weight_decay_net).init(params)

    def train_net(self, params, net_state, images, ctx, key):
        """inner_loop SGD steps on random real batches, per-sample color+crop, then CutMix (p 0.5)."""
        cfg = self.cfg
        tx = sgd(cfg.momentum_net, cfg.weight_decay_net)
        n = ctx.train_x.shape[0]

        def step(carry, s):
            params, bn, opt_state = carry
            k_idx, k_step = jax.random.split(jax.random.fold_in(key, s))
            idx = jax.random.randint(k_idx, (cfg.batch_train,), 0, n)
            x, y = real_batch(ctx, idx, self.spec), ctx.train_y[idx]
            params, bn, opt_state, _ = train_step(self.net, tx, params, bn, opt_state, x, y,
                                                  jnp.ones((cfg.batch_train,)), k_step, cfg.lr_net, self.net_policy,
                                                  cfg.cutmix_prob)
            return (params, bn, opt_state), None

        (params, *net_state), _ = jax.lax.scan(step, (params, *net_state), jnp.arange(cfg.inner_loop))
        return params, tuple(net_state)

    def eval_protocol(self, epochs=None, arch=None):
        e = self.cfg.eval_epochs if epochs is None else epochs
        return TrainProtocol(epochs=e, batch=self.cfg.eval_batch, lr=self.cfg.eval_lr, momentum=0.9,
                             weight_decay=5e-4, policy=self.eval_policy, cutmix_prob=self.cfg.cutmix_prob,
                             milestones=((2 * e // 3, 0.2), (5 * e // 6, 0.2)), reset_momentum_at_milestones=False)


METHODS: dict[str, type[GradientMatching]] = {"dc": GradientMatching, "dsa": DSA, "idc": IDC}


def make_method(cfg: Config, spec: DataSpec | int = DataSpec(), mesh=None) -> GradientMatching:
    """The method named by cfg.method for a dataset's DataSpec (or a class count, for CIFAR-shaped data); `mesh`
    shards its class axis (see sharding.py).

    `class_chunk` auto becomes backend.CPU_CLASS_CHUNK on CPU and all classes elsewhere; `Run` resolves it by the
    device's memory first (backend.auto_class_chunk).
    """
    if cfg.class_chunk == AUTO_CHUNK:
        cfg = cfg.replace(class_chunk=CPU_CLASS_CHUNK if jax.default_backend() == "cpu" else 0)
    return METHODS[cfg.method](cfg, spec, mesh)
