"""The real-data reference: networks trained with hard labels on the real training split, once per identity, in a
directory every run and evaluation of that identity shares. Their test accuracy is the full-data accuracy of
DD-Ranking's hard-label recovery (HLR); the first of them is the `teacher` protocol's teacher.

The training split is the dataset's minus the hold-out (BUDGETS' `holdout` images per class, kept for choosing
evaluation learning rates: `split`), optionally cut to the first `per_class` images of each class (the `cpu`
budget). Recipe: SGD, momentum 0.9, weight decay 5e-4, batch 256, lr 0.01 divided by 10 after half the epochs, no
augmentation (DD-Ranking's real-data training of ConvNet-3 on CIFAR: SGD lr 0.01, momentum 0.9, weight decay 5e-4,
a step schedule, no augmentation). The networks train together (vmapped), one compiled epoch at a time; each
epoch's state is written atomically, so a stopped training resumes bit for bit.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sm_jax.data import Dataset, first_per_class
from sm_jax.data.zca import data_fingerprint
from sm_jax.errors import UserError
from sm_jax.lifecycle import Stopped
from sm_jax.progress import Progress
from sm_jax.training import TrainProtocol, accuracy, optimizer, train_epoch

# name (the run's --preset) -> reference networks, their epochs, their training images per class (0 = all but the
# hold-out), and the hold-out: training images per class kept out of every training, for choosing evaluation lrs
BUDGETS = {"paper": {"models": 5, "epochs": 100, "per_class": 0, "holdout": 500},
           "cpu": {"models": 1, "epochs": 10, "per_class": 300, "holdout": 100}}
PROTOCOL = TrainProtocol(epochs=0, batch=256, lr=0.01, momentum=0.9, weight_decay=5e-4)  # epochs from the budget


class ReferenceStoreError(UserError):
    """A reference directory that holds another identity (one line)."""


def recipe(budget: str) -> TrainProtocol:
    e = BUDGETS[budget]["epochs"]
    return TrainProtocol(**{**PROTOCOL.__dict__, "epochs": e, "milestones": ((e // 2 + 1, 0.1),)})


def split(data: Dataset, budget: str) -> tuple[Dataset, Dataset]:
    """(train, heldout): `data` without the budget's hold-out (its test split the real one), and the hold-out as the
    test split of the same training images (for choosing an lr without reading the test split)."""
    heldout = data.holdout(BUDGETS[budget]["holdout"])
    return dataclasses.replace(heldout, test_x=data.test_x, test_y=data.test_y, source=data.source), heldout


def of_method(method, data: Dataset, budget: str, cache_dir, arch: str | None = None):
    """The reference of `method`'s evaluation network on `arch` (default its own) in the method's input space (ZCA
    or the normalised pixels). Returns (Reference, net, train, heldout): `split(data, budget)` beside it."""
    train, heldout = split(data, budget)
    net = method.eval_net(arch)
    ref = Reference(cache_dir, train, net.name, budget, 0, "zca" if method.cfg.zca else "normalised")
    return ref, net, train, heldout


def training_split(data: Dataset, per_class: int) -> np.ndarray:
    """Indices of the reference's training images in `data` (already without the hold-out): all, or the first
    `per_class` of each class."""
    if not per_class:
        return np.arange(len(data.train_y))
    return first_per_class(data.train_y, data.num_classes, per_class)


class Reference:
    """The reference networks of one identity: `dir`/identity.json, state.npz (the training, resumable),
    accuracy.json (when done)."""

    def __init__(self, cache_dir: str | os.PathLike, data: Dataset, arch: str, budget: str, seed: int, space: str):
        b = BUDGETS[budget]
        self.budget, self.models, self.proto = budget, b["models"], recipe(budget)
        self.rows = training_split(data, b["per_class"])
        self.ident = {"data": data_fingerprint(data.train_x), "test": data_fingerprint(data.test_x), "arch": arch,
                      "space": space, "seed": seed, "models": self.models, "epochs": self.proto.epochs,
                      "per_class": b["per_class"], "batch": self.proto.batch, "lr": self.proto.lr}
        digest = hashlib.sha256(json.dumps(self.ident, sort_keys=True).encode()).hexdigest()[:12]
        self.dir = Path(cache_dir) / "references" / f"{data.name}_{arch}_{digest}"

    def done(self) -> bool:
        return (self.dir / "accuracy.json").is_file()

    def accuracies(self) -> list[float]:
        return json.loads((self.dir / "accuracy.json").read_text())["accuracies"]

    def _check(self) -> None:
        f = self.dir / "identity.json"
        if f.is_file() and json.loads(f.read_text()) != self.ident:
            raise ReferenceStoreError(f"{self.dir} holds another reference; remove it or use another SM_JAX_CACHE")

    def train(self, net, normalize, data: Dataset, log=print, stop=None, progress: bool = True, every: float = 30):
        """Trains (or finishes) the reference networks; returns their (params, state) stacked over networks.

        Args:
          net: a models.Net (the evaluated architecture); normalize: [0, 1] pixels -> its input space.
        Raises:
          Stopped: once `stop` is requested (between epochs; the last finished epoch is on disk).
        """
        self._check()
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "identity.json").write_text(json.dumps(self.ident, indent=2, sort_keys=True))
        key = jax.random.key(self.ident["seed"])
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(self.models))
        init = jax.vmap(lambda k: net.init(jax.random.fold_in(k, 0)))(keys)
        carry = (*init, jax.vmap(optimizer(self.proto).init)(init[0]))
        leaves, tree = jax.tree.flatten(carry)
        epoch, path = 0, self.dir / "state.npz"
        if path.is_file():
            saved = np.load(path)
            epoch = int(saved["epoch"])
            carry = jax.tree.unflatten(tree, [jnp.asarray(saved[f"leaf_{i}"]) for i in range(len(leaves))])
        if epoch < self.proto.epochs:
            log(f"reference: {self.models} x {net.name} on {len(self.rows)} real images, {self.proto.epochs} epochs "
                f"in {self.dir}; {epoch} done")
            x = normalize(jnp.asarray(data.train_x[self.rows], jnp.float32) / 255.0)
            y = jnp.asarray(data.train_y[self.rows], jnp.int32)
            step = jax.jit(jax.vmap(lambda c, k, e, x, y: train_epoch(net, self.proto, c, x, y,
                                                                     jax.random.fold_in(k, 1), e),
                                    in_axes=(0, 0, None, None, None)))
            bar = Progress(self.proto.epochs, epoch, "reference: epoch", enabled=progress, every=every)
            try:
                while epoch < self.proto.epochs:
                    if stop is not None and stop.requested:
                        raise Stopped(stop.signum, f"stopped by {stop.name}: the reference trained to epoch {epoch} "
                                      f"in {self.dir}; rerun the same command to resume")
                    carry = step(carry, keys, epoch, x, y)
                    epoch += 1
                    tmp = self.dir / "state.tmp.npz"
                    np.savez(tmp, epoch=epoch, **{f"leaf_{i}": np.asarray(a)
                                                  for i, a in enumerate(jax.tree.leaves(carry))})
                    os.replace(tmp, path)
                    bar.update(epoch)
            finally:
                bar.close()
        params, state = carry[0], carry[1]
        if not self.done():
            tx = normalize(jnp.asarray(data.test_x, jnp.float32) / 255.0)
            acc = jax.jit(jax.vmap(lambda p, s, tx, ty: accuracy(net, p, s, tx, ty), in_axes=(0, 0, None, None)))
            accs = np.asarray(acc(params, state, tx, jnp.asarray(data.test_y))).tolist()
            tmp = self.dir / "accuracy.tmp.json"
            tmp.write_text(json.dumps({"accuracies": accs, "test_images": len(data.test_y), "written_at": time.time(),
                                       **self.ident}, indent=2))
            os.replace(tmp, self.dir / "accuracy.json")
            log(f"reference: test accuracy {np.mean(accs):.4f} ({self.models} x {net.name} on real data)")
        return params, state

    def teacher(self, net, normalize, data: Dataset, **kw):
        """(net, params, state) of the first reference network: the teacher protocol's teacher."""
        params, state = self.train(net, normalize, data, **kw)
        return net, jax.tree.map(lambda a: a[0], params), jax.tree.map(lambda a: a[0], state)
