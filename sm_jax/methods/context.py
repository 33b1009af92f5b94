"""What a condensation run keeps on the device beside its model: the dataset, the fixed subset partitions (drawn
once from the run seed) and the condensation state every method carries and checkpoints."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sm_jax.data import Dataset, DataSpec
from sm_jax.data.host import HostStore, place_train
from sm_jax.errors import ConfigError
from sm_jax.matching import make_partition
from sm_jax.methods.run_config import RunConfig
from sm_jax.models import normalize


class Context(NamedTuple):
    """Device-resident constants of a run (the dataset and the fixed subset partitions)."""

    train_x: jax.Array | HostStore  # (N, H, W, C) uint8, on the device or gathered from the host (--data-on)
    train_y: jax.Array  # (N,) int32
    class_idx: jax.Array  # (C, M) int32 indices into train_x, -1 padded
    real_part: jax.Array  # (C, K, M/K) int32 indices into train_x, -1 padded
    syn_part: jax.Array  # (C, K, n/K) int32 indices into a class's decoded synthetic images


class CondenseState(NamedTuple):
    images: jax.Array  # (classes, ipc, H, W, C): normalised (DC/DSA) or [0, 1] pixels (IDC)
    opt_state: Any  # image optimiser state
    iteration: jax.Array  # int32 scalar: iterations completed


def make_partitions(cfg: RunConfig, class_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def make_context(cfg: RunConfig, data: Dataset, partitions=None) -> Context:
    """Puts the dataset and the partitions (fresh, or restored from a checkpoint) on the device."""
    class_idx = data.class_indices()
    counts = (class_idx >= 0).sum(1)
    if counts.min() < cfg.batch_real:
        raise ConfigError(f"--batch-real {cfg.batch_real} exceeds the smallest class ({counts.min()} images)")
    real_part, syn_part = partitions if partitions is not None else make_partitions(cfg, class_idx)
    if cfg.use_subsets and (real_part >= 0).sum(-1).min() < cfg.subset_real:
        raise ConfigError(f"real subsets hold {(real_part >= 0).sum(-1).min()} images, fewer than the "
                         f"{cfg.subset_real} drawn per subset term")
    return Context(place_train(data, cfg.data_on), jnp.asarray(data.train_y), jnp.asarray(class_idx),
                   jnp.asarray(real_part), jnp.asarray(syn_part))


def real_batch(ctx: Context, idx: jax.Array, spec: DataSpec = DataSpec()) -> jax.Array:
    """Normalised float images for integer indices of any shape: (...,) -> (..., H, W, C)."""
    return normalize(ctx.train_x[idx].astype(jnp.float32) / 255.0, spec.mean, spec.std)
