"""DD-Ranking's scores of a condensed set (Li et al., "DD-Ranking: Rethinking the Evaluation of Dataset
Distillation", 2025; github NUS-HPC-AI-Lab/DD-Ranking, `pip install ddranking`, version 0.2.0 read for the
definitions), computed with sm_jax's networks.

With accuracies as fractions and lambda = 0.5 (the package's default `lrs_lambda`, `ars_lambda`):

  HLR (hard-label recovery)   = acc(real data, hard) - acc(set, hard)
  IOR (improvement over random) = acc(set, soft) - acc(random subset, soft)
  LRS (label-robust score)    = (exp(a) - exp(-1)) / (e - exp(-1)),  a = lambda IOR - (1 - lambda) HLR
  ARS (augmentation-robust)   = (exp(b) - exp(-1)) / (e - exp(-1)),
                                b = lambda (acc(set, aug) - acc(rdm, aug))
                                    + (1 - lambda) (acc(set, no aug) - acc(rdm, no aug))

`soft` is the teacher protocol (or the set's own soft labels, `learned`, where it carries them), `hard` the hard
protocol; the random subset has as many real images per class as the set trains on, drawn from the training split
without the hold-out; the real-data accuracy is the reference networks' (evaluation.reference). `ior_hard` and
`lrs_hard` are the hard-label forms (the package's LabelRobustScoreHard). The scores are reported in percent
(points for HLR and IOR); a, b are computed on fractions, so LRS and ARS lie in [0, 100] as the paper defines them.
(The package's code passes percentages to exp: its LRS and ARS differ; docs/sets.md.)

Every accuracy is the test split's after the last epoch, under the method's evaluation recipe (epochs, SGD,
momentum, lr steps) with DSA as the augmentation of the `aug` cells and none in the `no aug` cells. Each cell's lr
is the set's learned lr where it carries one (MTT's; synthetic cells only), else the best of LR_GRID on the
hold-out (training images no network trains on): never chosen on the test split. Network i of every cell starts
from the same initialisation key, so the scores are also given per network (mean and std over networks).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sm_jax.augmentation import DSA_POLICY
from sm_jax.data import Dataset
from sm_jax.evaluation import reference
from sm_jax.evaluation.core import make_evaluator, random_subset, set_targets
from sm_jax.evaluation.protocols import train_protocol

LR_GRID = (0.001, 0.005, 0.01, 0.05, 0.1)  # ddranking 0.2.0's lr_list (its _hyper_param_search_*)
LAMBDA = 0.5
DEFINITIONS = {
    "hlr": "acc(real, hard) - acc(set, hard), points",
    "ior": "acc(set, soft) - acc(random, soft), points",
    "lrs": "100 (exp(a) - exp(-1)) / (e - exp(-1)), a = 0.5 IOR - 0.5 HLR (fractions)",
    "ars": "100 (exp(b) - exp(-1)) / (e - exp(-1)), b = 0.5 (set - random with DSA) + 0.5 (set - random without)",
    "ior_hard": "acc(set, hard) - acc(random, hard), points",
    "lrs_hard": "LRS with ior_hard",
    "source": "DD-Ranking (Li et al. 2025), ddranking 0.2.0",
}
# cell -> (which set, protocol, augmented)
CELLS = {"syn_hard": ("set", "hard", True), "rdm_hard": ("random", "hard", True),
         "syn_soft": ("set", "soft", True), "rdm_soft": ("random", "soft", True),
         "syn_soft_noaug": ("set", "soft", False), "rdm_soft_noaug": ("random", "soft", False)}


def normalised_exp(a):
    """(exp(a) - exp(-1)) / (e - exp(-1)): 0 at a = -1, 1 at a = 1."""
    return (np.exp(a) - math.exp(-1)) / (math.e - math.exp(-1))


def scores(acc: dict, real: float, lam: float = LAMBDA) -> dict[str, np.ndarray]:
    """DD-Ranking's scores from accuracies (fractions, arrays paired over networks): `acc` has the CELLS' keys,
    `real` the real-data accuracy. Returns hlr, ior, ior_hard (points), lrs, lrs_hard, ars (percent), per network."""
    a = {k: np.asarray(v, np.float64) for k, v in acc.items()}
    hlr = real - a["syn_hard"]
    ior, ior_hard = a["syn_soft"] - a["rdm_soft"], a["syn_hard"] - a["rdm_hard"]
    beta = lam * (a["syn_soft"] - a["rdm_soft"]) + (1 - lam) * (a["syn_soft_noaug"] - a["rdm_soft_noaug"])
    return {"hlr": 100 * hlr, "ior": 100 * ior, "lrs": 100 * normalised_exp(lam * ior - (1 - lam) * hlr),
            "ars": 100 * normalised_exp(beta), "ior_hard": 100 * ior_hard,
            "lrs_hard": 100 * normalised_exp(lam * ior_hard - (1 - lam) * hlr)}


def choose_lr(fn_heldout: Callable, x, y, key) -> tuple[float, list[float]]:
    """The LR_GRID rate whose network scores best on the hold-out: `fn_heldout` an evaluator whose test split is
    the hold-out (one network per rate, vmapped, one key). Returns (lr, the hold-out accuracies)."""
    keys = jnp.stack([key] * len(LR_GRID))
    accs = np.asarray(fn_heldout(x, y, keys, jnp.asarray(LR_GRID, jnp.float32))).tolist()
    return LR_GRID[int(np.argmax(accs))], accs


def ddranking(method, data: Dataset, images: jax.Array, key: jax.Array, models: int, budget: str, cache_dir,
              learned: dict | None = None, targets=None, log=print, stop=None, progress: bool = True,
              on_network: Callable[[int], None] | None = None) -> dict:
    """DD-Ranking's scores of a set, with their inputs.

    Args:
      method: the set's method (its normalisation, network and recipe); data: the dataset (train and test splits).
      images: (classes, n, H, W, C) the normalised images networks train on.
      key: the evaluation key; models: networks per cell; budget: reference.BUDGETS' name (the run's preset).
      learned, targets: what the set carries (its learned lr, its soft-label logits (classes, n, classes)).
      on_network: called with the number of trained networks so far (it may raise to stop).
    Returns:
      {hlr, ior, lrs, ars, ior_hard, lrs_hard (means), <name>_std, per_network, cells, reference, definitions}.
    """
    ref, net, train, heldout = reference.of_method(method, data, budget, cache_dir)
    teacher = ref.teacher(net, method.normalize, train, log=log, stop=stop, progress=progress)
    real = float(np.mean(ref.accuracies()))
    rdm_idx = random_subset(train.train_y, train.num_classes, images.shape[1], method.cfg.seed)
    rdm = method.normalize(jnp.asarray(train.train_x[rdm_idx], jnp.float32) / 255.0)
    own_soft = targets is not None
    programs: dict = {}  # cells of one protocol share their compiled programs (the set and the random subset)

    def evaluator(proto, t, split: Dataset, width: int):
        key_ = (proto, t is not None, split is heldout, width)
        if key_ not in programs:
            programs[key_] = make_evaluator(method, proto, split.test_x, split.test_y, width, net, teacher=t)
        return programs[key_]

    cells, done = {}, 0
    for c, (name, (which, labels, aug)) in enumerate(CELLS.items()):
        protocol = "hard" if labels == "hard" else ("learned" if which == "set" and own_soft else "teacher")
        proto = train_protocol(protocol, method, None, None, learned if which == "set" else None)
        proto = dataclasses.replace(proto, policy=DSA_POLICY if aug else (), cutmix_prob=0.0)
        t = teacher if protocol == "teacher" else None
        x = images if which == "set" else rdm
        y = set_targets(method, x, protocol, targets if which == "set" else None)
        flat = x.reshape(-1, *x.shape[2:])
        k = jax.random.fold_in(key, c)
        carried = which == "set" and "lr" in (learned or {})
        if carried:
            lr, grid = float(learned["lr"]), None
        else:
            lr, grid = choose_lr(evaluator(proto, t, heldout, len(LR_GRID)), flat, y, jax.random.fold_in(k, 1 << 20))
        fn = evaluator(proto, t, train, models)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(models))  # paired over cells
        accs = np.asarray(fn(flat, y, keys, jnp.full((models,), lr, jnp.float32)), np.float64)
        cells[name] = {"set": which, "protocol": protocol, "augmentation": "dsa" if aug else "none", "lr": lr,
                       "lr_from": "the set's learned lr" if carried else "LR_GRID on the hold-out",
                       "heldout_accuracies": grid, "accuracies": accs.tolist(), "accuracy_mean": float(accs.mean()),
                       "accuracy_std": float(accs.std())}
        done += models
        log(f"ddranking {name}: {accs.mean():.4f} +- {accs.std():.4f} (lr {lr:g}, {protocol}, "
            f"{'DSA' if aug else 'no augmentation'})")
        if on_network is not None:
            on_network(done)
    per = scores({n: np.asarray(v["accuracies"]) for n, v in cells.items()}, real)
    out = {n: float(v.mean()) for n, v in per.items()}
    out.update({f"{n}_std": float(v.std()) for n, v in per.items()})
    return {**out, "per_network": {n: v.tolist() for n, v in per.items()}, "cells": cells, "lambda": LAMBDA,
            "lr_grid": list(LR_GRID), "heldout_per_class": reference.BUDGETS[budget]["holdout"],
            "reference": {"dir": str(ref.dir), "accuracies": ref.accuracies(), "accuracy_mean": real,
                          **{k: ref.ident[k] for k in ("models", "epochs", "per_class", "arch")}},
            "random_subset_seed": method.cfg.seed, "definitions": DEFINITIONS}
