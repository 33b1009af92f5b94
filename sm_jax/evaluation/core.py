"""The evaluation protocol: fresh networks trained on the synthetic set, accuracy on the test set, on one
architecture (`evaluate_set`) or several (`evaluate_archs`)."""
from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sm_jax import sharding
from sm_jax.evaluation import protocols
from sm_jax.training import TrainProtocol, accuracy, train_on_set

# Test images per step of the accuracy pass, over all the networks of a call: P networks trained together test
# TEST_BATCH // P images each per step, so that the pass's activations do not grow with P (20 networks at 500
# images each held 10,000 images' activations at once).
TEST_BATCH = 500


def train_network(net, proto: TrainProtocol, x: jax.Array, y: jax.Array, key: jax.Array, lr=None, teacher=None):
    """One fresh network (initialised from `key`) trained on a set with the evaluation protocol.

    Args:
      net: a models.Net; x: (M, H, W, C) normalised images; y: (M,) labels or (M, classes) soft-target logits.
      lr: the initial lr (traced; default proto.lr); teacher: (net, params, state) giving the targets.
    Returns:
      the trained (parameters, running statistics).
    """
    k_init, k_train = jax.random.split(key)
    params, state = net.init(k_init)
    return train_on_set(net, params, state, x, y, k_train, proto, lr, teacher)


def make_evaluator(method, proto: TrainProtocol, test_x: np.ndarray, test_y: np.ndarray, parallel: int = 1,
                   net=None, mesh=None, teacher=None):
    """A compiled function keys (P,) -> accuracies (P,) for P fresh networks trained together (vmapped).

    Args:
      method: a methods.Method (its normalisation; its matching network unless `net` is given).
      proto: the training protocol.
      test_x: (N, H, W, C) uint8 test images; test_y: (N,) labels.
      parallel: networks per call (the vmapped width).
      mesh: the run's mesh (the test set is replicated over it).
      teacher: (net, params, state) whose softened outputs are the targets (the `teacher` protocol), or None.
    Returns:
      fn(x (M, H, W, C) normalised synthetic images, y (M,) or (M, classes), keys (parallel,), lrs (parallel,) or
      None) -> (parallel,) accuracies.
    """
    net = net or method.net
    tx_, ty_ = sharding.put((method.normalize(np.asarray(test_x, np.float32) / 255.0), np.asarray(test_y, np.int32)),
                            mesh, shard_leading=False)
    t_net, t_vars = (None, None) if teacher is None else (teacher[0], teacher[1:])
    run = _compiled(net, proto, t_net)
    return lambda x, y, keys, lrs=None: run(x, y, keys, tx_, ty_, lrs, t_vars)


@functools.lru_cache(maxsize=64)
def _compiled(net, proto: TrainProtocol, teacher_net) -> Callable:
    """The jitted evaluation program of (network, protocol, teacher network): one per combination in a process, so
    the evaluations of a run, the cells of DD-Ranking's scores and the sets of a ranking reuse its compilations
    (the networks and protocols are frozen dataclasses: equal ones are the same program)."""
    return jax.jit(evaluation_program(net, proto, teacher_net))


def evaluation_program(net, proto: TrainProtocol, teacher_net=None) -> Callable:
    """The evaluation's one program (pure; jit at the call site): fresh networks trained on a set, then tested.

    Returns:
      fn(x (M, H, W, C) normalised images, y (M,) or (M, classes), keys (P,), test_x (N, H, W, C) normalised,
      test_y (N,), lrs (P,) or None (then proto.lr), teacher (params, state) of `teacher_net` or None) -> (P,)
      accuracies. The test set and the teacher are arguments: as closed-over constants XLA folds them (slowly).
    """
    def run(x, y, keys, tx, ty, lrs=None, teacher=None):
        t = None if teacher_net is None else (teacher_net, *teacher)
        chunk = max(1, TEST_BATCH // keys.shape[0])  # the test images one step passes through all P networks

        def one(k, lr):
            return accuracy(net, *train_network(net, proto, x, y, k, lr, t), tx, ty, chunk)
        return jax.vmap(one)(keys, lrs) if lrs is not None else jax.vmap(lambda k: one(k, None))(keys)

    return run


def evaluate_set(method, images: jax.Array, test_x: np.ndarray, test_y: np.ndarray, key: jax.Array,
                 models: int, epochs: int | None = None, parallel: int = 1,
                 progress: Callable[[int], None] | None = None, mesh=None, arch: str | None = None,
                 evaluator=None, learned: dict | None = None, protocol: str = "", targets=None,
                 teacher=None) -> np.ndarray:
    """Trains `models` fresh networks on the decoded synthetic set and returns their final test accuracies.

    Args:
      method: the run's method (its eval protocol is used).
      images: (classes, n, H, W, C) decoded, normalised synthetic images.
      key: evaluation key; network i uses fold_in(key, i), so results do not depend on `parallel`.
      models: number of networks; epochs: override of the protocol's epochs.
      progress: called with the number of networks finished after each chunk.
      mesh: when given and `parallel` is a multiple of its size, each chunk's networks are split over its devices.
      arch: the architecture trained (models.ARCHS; default the matching network), with its protocol.
      evaluator: a `make_evaluator` function for these shapes, protocol and `parallel` (reused: not recompiled).
      learned: what the method learned that its protocol uses (Method.learned; MTT's lr).
      protocol: an evaluation protocol (protocols.PROTOCOLS; '' = the method's own).
      targets: (classes, n, classes) soft-label logits the set carries (used by the `learned` protocol), or None.
      teacher: (net, params, state) for the `teacher` protocol.
    Returns:
      (models,) float accuracies in [0, 1].
    """
    proto = protocols.train_protocol(protocol, method, epochs, arch, learned)
    x = images.reshape(-1, *images.shape[2:])
    y = set_targets(method, images, protocol, targets)
    parallel = max(1, min(parallel, models))
    fn = evaluator or make_evaluator(method, proto, test_x, test_y, parallel, method.eval_net(arch, parallel), mesh,
                                     teacher)
    if mesh is not None:  # replicated: every device trains its networks on the whole set
        x, y = sharding.put((sharding.host(x), np.asarray(y)), mesh, shard_leading=False)
    accs = []
    for start in range(0, models, parallel):
        ids = np.arange(start, start + parallel)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(ids))
        if mesh is not None:  # the networks split over the devices where they divide evenly
            keys = sharding.put(keys, mesh, shard_leading=parallel % mesh.size == 0)
        accs.extend(sharding.host(fn(x, y, keys)).tolist())
        if progress is not None:
            progress(min(start + parallel, models))
    return np.asarray(accs[:models], np.float64)


def set_targets(method, images: jax.Array, protocol: str = "", targets=None) -> jax.Array:
    """What networks train on beside the images (classes, n, ...): the soft-label logits (classes * n, classes)
    where the protocol reads the set's and the set has them, else the class labels (classes * n,) in class order."""
    if targets is not None and protocols.uses_set_targets(protocol, method):
        return jnp.asarray(targets, jnp.float32).reshape(-1, np.shape(targets)[-1])
    return jnp.repeat(jnp.arange(images.shape[0]), images.shape[1])


def random_subset(train_y: np.ndarray, num_classes: int, per_class: int, seed: int) -> np.ndarray:
    """The random real baseline's images: per class `per_class` distinct training images, drawn by a generator
    seeded with `seed` alone (the same subset for the same seed, whatever else the run does).

    Returns:
      (num_classes, per_class) indices into the training split, sorted within each class.
    Raises:
      ValueError: if a class has fewer than `per_class` training images.
    """
    rng = np.random.default_rng([seed, 0xBA5E])
    out = []
    for c in range(num_classes):
        members = np.flatnonzero(np.asarray(train_y) == c)
        if len(members) < per_class:
            raise ValueError(f"the random baseline needs {per_class} training images of class {c}, which has "
                             f"{len(members)}")
        out.append(np.sort(rng.choice(members, per_class, replace=False)))
    return np.stack(out)


BASELINES = ("random",)


def _summary(accs: np.ndarray) -> dict[str, Any]:
    return {"accuracies": accs.tolist(), "accuracy_mean": float(accs.mean()), "accuracy_std": float(accs.std())}


ARCH_RESULT = ("accuracies", "accuracy_mean", "accuracy_std", "eval_epochs", "eval_lr", "eval_protocol", "baseline",
               "difference")


def per_arch(ev: dict[str, Any], matching: str) -> dict[str, dict[str, Any]]:
    """An `evaluate_archs` result (or a results.json) per architecture: its `archs`, or, with one architecture,
    {matching: its top-level fields of ARCH_RESULT}."""
    return ev.get("archs") or {matching: {k: ev[k] for k in ARCH_RESULT if k in ev}}


def evaluate_archs(method, images: jax.Array, test_x: np.ndarray, test_y: np.ndarray, key: jax.Array, models: int,
                   archs: Sequence[str], epochs: int | None = None, parallel: int = 1, mesh=None,
                   progress: Callable[[int], None] | None = None, log: Callable[[str], None] = print,
                   baseline: jax.Array | None = None, learned: dict | None = None, protocol: str = "",
                   targets=None, teacher: Callable | None = None) -> dict[str, Any]:
    """`evaluate_set` on each architecture of `archs`, with one log line each when there are several (or the one is
    not the matching network, or a baseline is evaluated).

    Args:
      key: the evaluation key; architecture a > 0 uses fold_in(key, a) (the first keeps the key itself).
      progress: called with the networks finished so far over all architectures (it may raise to stop).
      baseline: (classes, n, H, W, C) normalised real images (`random_subset`) trained with the same protocol and
        the same network keys, so that the difference compares paired networks.
      learned: what the method learned that its protocol uses (Method.learned; MTT's lr), for both sets.
      protocol: the evaluation protocol (protocols.PROTOCOLS; '' = the method's own); `targets`: the set's soft
        labels (evaluate_set); `teacher`: arch -> (net, params, state), called for the `teacher` protocol.
    Returns:
      the first architecture's accuracies at the top level (accuracies, accuracy_mean, accuracy_std, eval_epochs,
      eval_models, eval_seconds; with a baseline also `baseline` = {accuracies, accuracy_mean, accuracy_std} and
      `difference` = the set's mean minus the baseline's) and, with several, `archs[name]` = the same per
      architecture.
    """
    if models == 0:
        return {"accuracies": [], "accuracy_mean": None, "accuracy_std": None}
    t0 = time.time()
    per: dict[str, dict] = {}
    several = len(archs) > 1 or archs[0] != method.net.name
    sets = (images,) if baseline is None else (images, baseline)
    for a, arch in enumerate(archs):
        res = []
        proto = protocols.train_protocol(protocol, method, epochs, arch, learned)
        t = teacher(arch) if protocols.uses_teacher(protocol, method) else None
        width = max(1, min(parallel, models))
        fn = make_evaluator(method, proto, test_x, test_y, width, method.eval_net(arch, width), mesh,
                            t)  # one program for the set and the baseline
        for b, x in enumerate(sets):
            done = (lambda n, i=a * len(sets) + b: progress(i * models + n)) if progress is not None else None
            res.append(evaluate_set(method, x, test_x, test_y, jax.random.fold_in(key, a) if a else key, models,
                                    epochs=epochs, parallel=parallel, progress=done, mesh=mesh, arch=arch,
                                    evaluator=fn, learned=learned, protocol=protocol,
                                    targets=targets if b == 0 else None))
        per[arch] = {**_summary(res[0]), "eval_epochs": proto.epochs, "eval_lr": proto.lr,
                     "eval_protocol": protocols.resolve(protocol, method)}
        line = f"{arch}: accuracy {per[arch]['accuracy_mean']:.4f} +- {per[arch]['accuracy_std']:.4f}"
        if baseline is not None:
            per[arch]["baseline"] = {"kind": "random", **_summary(res[1])}
            per[arch]["difference"] = float(res[0].mean() - res[1].mean())
            line += (f"; random real subset {res[1].mean():.4f} +- {res[1].std():.4f}; difference "
                     f"{per[arch]['difference']:+.4f}")
        if several or baseline is not None:
            log(f"{line} ({models} networks, {per[arch]['eval_epochs']} epochs)")
    out: dict[str, Any] = dict(per[archs[0]], eval_models=models, eval_seconds=time.time() - t0)
    if several:
        out["archs"] = per
    return out
