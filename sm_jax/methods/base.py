"""What every condensation family shares: `Method`, the interface a run drives.

A family (gradient matching in gradient.py, distribution matching in dm.py, trajectory matching in mtt.py) is a
subclass that owns its presets, its state (a pytree the checkpointer saves and restores whole), its context (the
device constants its iteration reads), one pure iteration, what its set is (stored -> trained-on images, pixels)
and what its evaluation needs (the protocol, values the method learned). Subset matching plugs into every family
through the same two fields (`subset_k`, `subset_lambda`) and the same decaying weight (`subset_weight`).
"""
from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sm_jax.augmentation import NO_POLICY, Policy, drop_ops
from sm_jax.backend import AUTO_CHUNK, FUSED, resolve_class_chunk, resolve_syn_chunk
from sm_jax.data import Dataset, DataSpec
from sm_jax.errors import ConfigError
from sm_jax.matching import lambda_schedule
from sm_jax.methods.context import CondenseState, make_context
from sm_jax.methods.inits import INITS
from sm_jax.methods.run_config import RunConfig
from sm_jax.models import denormalize, make_net, normalize, resolve_conv
from sm_jax.training import TrainProtocol

PRESETS = ("paper", "cpu")  # every method's budgets: Method.preset(name, ipc, dataset)


class Method:
    """A condensation family: `Method(config, spec, mesh)` builds one for a dataset's DataSpec (classes, image
    shape, normalisation); `mesh` (a jax.sharding.Mesh or None) splits its class axis.

    A run calls, in order: `preparation` (artifacts made before condensation, e.g. experts), `init_images`,
    `init_state`, `context`, then the jitted `iteration` until the budget is spent, then the evaluation of
    `decode(state.images)` with `eval_protocol(..., learned(state))`.
    """

    name: ClassVar[str]
    distance: ClassVar[str] = ""  # a gradient distance (matching.DISTANCES) where the family has one
    eval_policy: Policy = NO_POLICY  # augmentation of the evaluation networks
    uses_zca: ClassVar[bool] = False  # whether --zca applies (its images live in ZCA space)
    own_protocol: ClassVar[str] = "hard"  # its evaluation protocol (evaluation.protocols) when none is asked for
    class_chunked: ClassVar[bool] = True  # whether --class-chunk bounds its iteration's memory (classes apart)
    can_split: ClassVar[bool] = False  # whether its matching has the split form (--syn-chunk)
    # the metrics of `iteration` that the progress line shows, and those that must stay finite (else the run stops)
    shown_metrics: ClassVar[tuple[str, ...]] = ("loss_all", "loss_subset", "lambda")
    finite_metrics: ClassVar[tuple[str, ...]] = ("loss_all", "loss_subset", "grad_norm")

    @classmethod
    def paper_preset(cls, ipc: int, dataset: str) -> dict[str, Any]:
        """The published budget at `ipc` on `dataset`: Config fields and values."""
        raise NotImplementedError

    @classmethod
    def cpu_preset(cls, ipc: int, dataset: str) -> dict[str, Any]:
        """A reduced budget that finishes on 2 CPU cores in minutes (same algorithm, fewer/smaller steps)."""
        raise NotImplementedError

    @classmethod
    def preset_note(cls, ipc: int, dataset: str) -> str:
        """'' where the method's own code or paper gives settings for (dataset, ipc); else one line saying whose
        settings the preset took (logged at the run's start and recorded in config.json)."""
        return ""

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        """The method's own rules on a config (config.validate calls it): raises ConfigError."""

    @classmethod
    def preset(cls, name: str, ipc: int, dataset: str) -> dict[str, Any]:
        """The preset `name` (one of PRESETS) of this method."""
        return {"paper": cls.paper_preset, "cpu": cls.cpu_preset}[name](ipc, dataset)

    def __init__(self, cfg: RunConfig, spec: DataSpec = DataSpec(), mesh=None):
        self.cfg = cfg
        self.spec = spec
        self.num_classes = spec.num_classes
        self.mesh = mesh
        self.class_chunk = resolve_class_chunk(cfg.class_chunk, self.num_classes, mesh)
        # the method's network (the official --model; ConvNet-3 by default) on the convolution form of a network
        # matched across vmapped classes and subsets (one class per program without subsets leaves no vmapped axis:
        # then the form of one alone), and the same network, same parameters, on the form of one trained alone
        # (gradient matching's inner loop, IDC's network training)
        alone_in_matching = self.class_chunk == 1 and not cfg.use_subsets
        self.net = make_net(cfg.model, self.num_classes, spec.image_shape, cfg.width, cfg.depth, cfg.norm,
                            resolve_conv(cfg.conv_impl, vmap="none" if alone_in_matching else "shared"))
        alone = resolve_conv(cfg.conv_impl, vmap="none")
        self.net_alone = self.net if getattr(self.net.module, "conv_impl", alone) == alone else make_net(
            cfg.model, self.num_classes, spec.image_shape, cfg.width, cfg.depth, cfg.norm, alone)
        self.batch_norm = self.net.has_state
        if cfg.syn_chunk not in (AUTO_CHUNK, FUSED) and not self.can_split:
            raise ConfigError(f"--syn-chunk {cfg.syn_chunk} needs a gradient distance and no batch norm; "
                              f"{cfg.method} with --norm {cfg.norm} has only the fused form (--syn-chunk fused)")
        self.syn_chunk = resolve_syn_chunk(cfg.syn_chunk, self.class_chunk, self.num_classes, self.can_split)
        self.img_tx = optax.sgd(cfg.lr_img, momentum=cfg.momentum_img or None)
        self.eval_policy = drop_ops(type(self).eval_policy, cfg.aug_drop_ops)
        if cfg.eval_aug:
            self.eval_policy = () if cfg.eval_aug == "none" else ((cfg.eval_aug,),)
        h, w = self.spec.image_shape[:2]
        if h % cfg.factor or w % cfg.factor:
            raise ConfigError(f"--factor {cfg.factor} must divide the image size {h}x{w}")

    # --- before condensation ------------------------------------------------------------------------------
    def attach(self, data: Dataset) -> None:
        """Fits (or loads from the cache) what the method's input space needs of the training split (MTT: ZCA);
        a run calls it before anything is normalised. A no-op by default."""

    def preparation(self, data: Dataset, log=print, stop=None, progress: bool = True) -> None:
        """Makes or finds what the iteration needs beyond the data (trajectory matching: its experts). Interruptible
        (raises lifecycle.Stopped once `stop` is requested, with what was done kept); a no-op by default."""

    def context(self, data: Dataset, partitions) -> Any:
        """The device constants of `iteration` (a pytree of arrays): by default the dataset and the partitions."""
        return make_context(self.cfg, data, partitions)

    def context_shapes(self, data: Dataset) -> Any:
        """The shapes of `context` (jax.ShapeDtypeStruct leaves) without building it: what a compile for a target
        needs (sm_jax.aot)."""
        return jax.eval_shape(lambda: self.context(data, None))

    # --- the synthetic set ----------------------------------------------------------------------------------
    def eval_net(self, arch: str | None = None, parallel: int = 1):
        """The network the evaluation trains: architecture `arch` (models.ARCHS), by default the method's own, on the
        convolution form for `parallel` networks trained together (`resolve_conv`'s vmap role: batched when > 1,
        else none)."""
        cfg = self.cfg
        impl = resolve_conv(cfg.conv_impl, vmap="batched" if parallel > 1 else "none")
        if arch is None or arch == self.net.name:
            for net in (self.net_alone, self.net):
                if getattr(net.module, "conv_impl", impl) == impl:
                    return net
        return make_net(arch or cfg.model, self.num_classes, self.spec.image_shape, cfg.width, cfg.depth, cfg.norm,
                        impl)

    def normalize(self, x01: jax.Array) -> jax.Array:
        """[0, 1] pixels -> the networks' input space, with the dataset's statistics."""
        return normalize(x01, self.spec.mean, self.spec.std)

    def denormalize(self, x: jax.Array) -> jax.Array:
        return denormalize(x, self.spec.mean, self.spec.std)

    def init_images(self, data: Dataset, key: jax.Array) -> jax.Array:
        """Initial stored images (classes, ipc, H, W, C) as the config's `init` (a name of INITS) says."""
        return INITS[self.cfg.init](data, key, self.cfg.ipc, self.cfg.factor, self.normalize)

    def decode(self, images: jax.Array) -> jax.Array:
        """Stored images -> the normalised images that are matched and evaluated: (classes, n, H, W, C)."""
        return images

    def to_pixels(self, images: jax.Array) -> jax.Array:
        """Stored images -> [0, 1] pixels for saving and viewing."""
        return jnp.clip(self.denormalize(images), 0.0, 1.0)

    def init_state(self, images: jax.Array) -> Any:
        """The state a run starts from: a pytree with `images` and `iteration` (int32 scalar) among its fields,
        saved and restored whole. Leaves whose axis 0 is the class axis are split over a mesh (sharding)."""
        return CondenseState(images, self.img_tx.init(images), jnp.zeros((), jnp.int32))

    def class_axis(self, state) -> Any:
        """Per leaf of `state`, whether its axis 0 is the class axis (a mesh splits those): by default the leaves of
        `num_classes` rows (the images and their optimiser state)."""
        return jax.tree.map(lambda a: np.ndim(a) > 0 and np.shape(a)[0] == self.num_classes, state)

    def iteration(self, state, ctx, key: jax.Array):
        """One condensation iteration. Pure; jit at the call site (donating `state`).

        Returns:
          (new state, metrics: a dict of scalars holding at least `finite_metrics` and `shown_metrics`).
        """
        raise NotImplementedError

    def learned(self, state) -> dict[str, float]:
        """What the method learned beside the images that its evaluation uses (host floats; MTT: {'lr': ...})."""
        return {}

    # --- a matching step (the families that match classes: gradient matching, DM) ---------------------------
    def match(self, images, params, ctx, key: jax.Array, lam, apply_fn=None):
        """The matching loss's gradient w.r.t. the stored images and its terms: (grads, (loss_all (C,), loss_sub
        (C, K)))."""
        raise NotImplementedError

    def update_images(self, images, opt_state, grads):
        updates, opt_state = self.img_tx.update(grads, opt_state, images)
        return optax.apply_updates(images, updates), opt_state

    def matching_step(self, images, opt_state, params, ctx, key: jax.Array, lam, apply_fn=None):
        """One outer step: the matching of all classes and subsets (`match`), then the image update.

        Returns:
          (images, opt_state, metrics dict of scalars).
        """
        grads, (la, ls) = self.match(images, params, ctx, key, lam, apply_fn)
        images, opt_state = self.update_images(images, opt_state, grads)
        return images, opt_state, {"loss_all": la.sum(), "loss_subset": ls.sum(), "grad_norm": optax.tree.norm(grads)}

    # --- subset matching ----------------------------------------------------------------------------------
    def lam(self, iteration):
        return lambda_schedule(self.cfg.subset_lambda, iteration, self.cfg.iterations)

    def subset_weight(self, lam):
        """The weight of the subset term (and the reported `lambda`): 0 without subsets, 1 with --subset-only (no
        decay), else lam."""
        cfg = self.cfg
        return 0.0 if not cfg.use_subsets else (1.0 if cfg.subset_only else lam)

    # --- evaluation ---------------------------------------------------------------------------------------
    def eval_protocol(self, epochs: int | None = None, arch: str | None = None,
                      learned: dict[str, float] | None = None) -> TrainProtocol:
        """The evaluation training of architecture `arch` (default: the method's network): SGD, momentum 0.9,
        weight decay 5e-4, the lr divided by 10 after half the epochs. `learned` (from `learned(state)`, or a
        set's metadata) replaces the configured values it names (its 'lr': the evaluation's learning rate)."""
        e = self.cfg.eval_epochs if epochs is None else epochs
        return TrainProtocol(epochs=e, batch=self.cfg.eval_batch, lr=self.eval_lr(learned), momentum=0.9,
                             weight_decay=5e-4, policy=self.eval_policy, milestones=((e // 2 + 1, 0.1),),
                             reset_momentum_at_milestones=True)

    def eval_lr(self, learned: dict[str, float] | None) -> float:
        """The evaluation's learning rate: a learned one where given, else the config's."""
        return float((learned or {}).get("lr", self.cfg.eval_lr))
