"""Trajectory matching's preparation phase: expert trajectories (networks trained on the real data, the parameters
of every epoch kept), trained once per identity into a directory that every run of that identity shares.

An expert (METHOD.md section 10, `buffer.py`): the method's network, PyTorch's default init, plain SGD (lr
`lr_teacher`, no momentum, no weight decay, constant lr) on shuffled batches of `expert_batch` real images, each batch
through DSA (one op per batch, parameters per image), in ZCA space where `zca` is on. Several experts are trained
together in one vmapped program. With subset matching (K > 1) there are also `num_experts` experts per subset k,
each trained on the k-th real subset of every class (the partition is the experts' own, drawn from `expert_seed`).

Directory layout (`ExpertStore`): identity.json; epoch_NNN.npy = (experts, P) float32 flat parameters after epoch
NNN (000 = the initial weights), written atomically as each epoch ends, so an interrupted training resumes from the
last epoch on disk, bit for bit (every draw of epoch e is fold_in(key, e)); accuracy.json once all epochs are done.
Rows: the whole-data experts first, then subset 0's, subset 1's, ...
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial

from sm_jax.augmentation import DSA_POLICY
from sm_jax.data import Dataset
from sm_jax.data.host import place_train
from sm_jax.data.zca import data_fingerprint
from sm_jax.errors import UserError
from sm_jax.lifecycle import Stopped
from sm_jax.matching import make_partition
from sm_jax.progress import Progress
from sm_jax.training import accuracy, sgd, train_step

SNAPSHOT = "epoch_{:03d}.npy"


class ExpertError(UserError):
    """An expert directory that cannot be used as asked (one line)."""


def identity(cfg, data: Dataset) -> dict:
    """What makes two sets of experts the same: the data they saw, the network, the training, their number, seed and
    subsets (a config's fields; the training split by its fingerprint)."""
    return {"dataset": cfg.dataset, "train_split": data_fingerprint(data.train_x), "model": cfg.model,
            "width": cfg.width, "depth": cfg.depth, "norm": cfg.norm, "zca": cfg.zca, "lr_teacher": cfg.lr_teacher,
            "batch": cfg.expert_batch, "epochs": cfg.expert_train_epochs, "per_class": cfg.expert_per_class,
            "experts": cfg.num_experts, "seed": cfg.expert_seed, "subset_k": cfg.subset_k if cfg.use_subsets else 1,
            "augmentation": [list(s) for s in DSA_POLICY]}


def default_dir(ident: dict, cache_dir) -> Path:
    """<cache>/experts/<dataset>_<hash of the identity>: where experts of an identity go unless --experts-dir."""
    import hashlib

    h = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / "experts" / f"{ident['dataset']}_{h}"


def training_rows(cfg, data: Dataset) -> list[np.ndarray]:
    """The training indices each expert sees, by row: the whole split (or `expert_per_class` per class), then the
    k-th subset of every class for each k, `num_experts` times each."""
    rng = np.random.default_rng([cfg.expert_seed, 0xE7])
    classes = [np.flatnonzero(data.train_y == c) for c in range(data.num_classes)]
    if cfg.expert_per_class:
        classes = [m[:cfg.expert_per_class] for m in classes]
    rows = [np.sort(np.concatenate(classes))] * cfg.num_experts
    k = cfg.subset_k if cfg.use_subsets else 1
    if k > 1:
        parts = [make_partition(rng, m, k) for m in classes]  # (k, ceil(n/k)) per class, -1 padded
        for s in range(k):
            sub = np.sort(np.concatenate([p[s][p[s] >= 0] for p in parts]))
            rows += [sub] * cfg.num_experts
    return rows


class ExpertStore:
    """The experts of one identity in a directory: find, refuse, train (resuming) and load them."""

    def __init__(self, directory: str | os.PathLike, ident: dict):
        self.dir = Path(directory)
        self.ident = ident

    def check(self) -> None:
        """Raises ExpertError (one line) if the directory holds experts of another identity."""
        f = self.dir / "identity.json"
        if not f.is_file():
            if self.dir.is_dir() and any(self.dir.iterdir()):
                raise ExpertError(f"{self.dir} is not an expert directory (no identity.json) and is not empty")
            return
        recorded = json.loads(f.read_text())
        diff = [k for k in sorted(set(recorded) | set(self.ident)) if recorded.get(k) != self.ident.get(k)]
        if diff:
            k = diff[0]
            raise ExpertError(f"{self.dir} holds other experts ({k}: {recorded.get(k)!r} there vs "
                              f"{self.ident.get(k)!r} now); use another --experts-dir or the same settings")

    def epochs_done(self) -> int:
        """The last epoch on disk (-1: none)."""
        done = -1
        while (self.dir / SNAPSHOT.format(done + 1)).is_file():
            done += 1
        return done

    @property
    def complete(self) -> bool:
        return self.epochs_done() >= self.ident["epochs"]

    def load(self, first: int, last: int) -> np.ndarray:
        """Snapshots first..last (inclusive) of every expert: (experts, last - first + 1, P) float32."""
        return np.stack([np.load(self.dir / SNAPSHOT.format(e)) for e in range(first, last + 1)], axis=1)

    def accuracies(self) -> list[float]:
        f = self.dir / "accuracy.json"
        return json.loads(f.read_text())["accuracies"] if f.is_file() else []

    def _write(self, epoch: int, flat: np.ndarray) -> None:
        path = self.dir / SNAPSHOT.format(epoch)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, np.asarray(flat, np.float32))
        os.replace(tmp, path)

    def train(self, cfg, data: Dataset, net, normalize, log=print, stop=None, progress: bool = True) -> None:
        """Trains (or finishes training) the experts of `cfg` on `data`: `net` a models.Net, `normalize` the map of
        [0, 1] pixels to the networks' input space (ZCA or the dataset's statistics); given as a
        jax.tree_util.Partial (MTT.normalizer), its arrays are inputs of the epoch programs, not constants in them.

        Raises:
          Stopped: once `stop` is requested (between epochs; the epochs on disk are kept).
        """
        self.check()
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "identity.json").write_text(json.dumps(self.ident, indent=2, sort_keys=True))
        rows = training_rows(cfg, data)
        params0, _ = net.init(jax.random.key(0))
        _, unravel = ravel_pytree(params0)
        base = jax.random.key(cfg.expert_seed)
        done = self.epochs_done()
        if done < 0:
            inits = [ravel_pytree(net.init(jax.random.fold_in(jax.random.fold_in(base, 1), r))[0])[0]
                     for r in range(len(rows))]
            self._write(0, np.stack([np.asarray(p) for p in inits]))
            done = 0
        epochs = self.ident["epochs"]
        bytes_per = (epochs + 1) * sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params0)) * 4
        log(f"experts: {len(rows)} x {epochs} epochs in {self.dir} ({bytes_per / 2**20:.1f} MiB each); "
            f"{done} epochs on disk")
        train_x, train_y = place_train(data, cfg.data_on), jnp.asarray(data.train_y)
        groups = {}  # rows of one size train in one vmapped program
        for r, idx in enumerate(rows):
            groups.setdefault(len(idx), []).append(r)
        # the normalisation as an argument of the programs (a Partial's arrays are inputs, not constants)
        norm = normalize if isinstance(normalize, Partial) else Partial(normalize)
        programs = {n: jax.jit(_epoch_program(net, unravel, n, cfg.expert_batch, cfg.lr_teacher)) for n in groups}
        bar = Progress(epochs, done, "experts: epoch", enabled=progress, every=cfg.log_every)
        try:
            theta = np.load(self.dir / SNAPSHOT.format(done))
            for epoch in range(done + 1, epochs + 1):
                if stop is not None and stop.requested:
                    raise Stopped(stop.signum, f"stopped by {stop.name}: experts trained to epoch {epoch - 1} in "
                                  f"{self.dir}; rerun the same command to resume")
                new = np.empty_like(theta)
                for n, members in groups.items():
                    keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base, 2), r), epoch)
                                      for r in members])
                    idx = jnp.asarray(np.stack([rows[r] for r in members]), jnp.int32)
                    new[members] = np.asarray(programs[n](norm, jnp.asarray(theta[members]), idx, keys, train_x,
                                                          train_y))
                theta = new
                self._write(epoch, theta)
                bar.update(epoch)
        finally:
            bar.close()
        if not (self.dir / "accuracy.json").is_file():
            test_x = normalize(jnp.asarray(data.test_x, jnp.float32) / 255.0)
            test_y = jnp.asarray(data.test_y)
            acc = jax.jit(lambda t, tx, ty: accuracy(net, unravel(t), {}, tx, ty))  # the test set as an argument
            accs = [float(acc(jnp.asarray(t), test_x, test_y)) for t in theta]
            tmp = self.dir / "accuracy.json.tmp"
            tmp.write_text(json.dumps({"accuracies": accs, "epoch": epochs, "test_images": len(data.test_y),
                                       "written_at": time.time()}, indent=2))
            os.replace(tmp, self.dir / "accuracy.json")
            log(f"experts: test accuracy {np.mean(accs[:cfg.num_experts]):.4f} (whole-data experts)"
                + (f", {np.mean(accs[cfg.num_experts:]):.4f} (subset experts)" if len(accs) > cfg.num_experts else ""))


def _epoch_program(net, unravel, n: int, batch: int, lr: float):
    """(normalize, theta (G, P), idx (G, n), keys (G,), train_x, train_y) -> theta after one epoch of each of G
    experts; `normalize` a jax.tree_util.Partial mapping [0, 1] pixels to the networks' input space."""
    steps = -(-n // batch)
    tx = sgd()  # plain SGD: no momentum, no weight decay

    def one(normalize, theta, idx, key, train_x, train_y):
        perm = idx[jax.random.permutation(jax.random.fold_in(key, 0), n)]
        pad = steps * batch - n
        rows = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(steps, batch)
        w = jnp.concatenate([jnp.ones((n,)), jnp.zeros((pad,))]).reshape(steps, batch)

        def step(params, inp):
            r, wi, s = inp
            x = normalize(train_x[r].astype(jnp.float32) / 255.0)
            params, _, _, _ = train_step(net, tx, params, {}, tx.init(params), x, train_y[r], wi,
                                         jax.random.fold_in(key, s + 1), lr, DSA_POLICY)
            return params, None

        params, _ = jax.lax.scan(step, unravel(theta), (rows, w, jnp.arange(steps)))
        return ravel_pytree(params)[0]

    return jax.vmap(one, in_axes=(None, 0, 0, 0, None, None))


# --- the official code's experts -----------------------------------------------------------------------------------
def official_files(path: str | os.PathLike) -> list[Path]:
    """`replay_buffer_<n>.pt` in a directory (in n order), or the one file given."""
    p = Path(path)
    if p.is_file():
        return [p]
    files = sorted(p.glob("replay_buffer_*.pt"), key=lambda f: int(f.stem.rsplit("_", 1)[1]) if
                   f.stem.rsplit("_", 1)[1].isdigit() else -1)
    if not files:
        raise ExpertError(f"{p}: no replay_buffer_<n>.pt (the official buffer.py's experts) there")
    return files


def official_to_params(tensors, template) -> dict:
    """One snapshot of the official ConvNet (its `parameters()` in order: per block the conv's weight (O, I, 3, 3)
    and bias, the norm's weight and bias; the classifier's weight (classes, C*H*W) and bias) as this ConvNet's
    parameters: kernels OIHW -> HWIO, the classifier's inputs from the NCHW flattening to NHWC.

    Args:
      tensors: numpy arrays in the official order; template: this network's parameters (names and shapes).
    """
    it = iter(tensors)
    out = {}
    depth = sum(1 for k in template if k.startswith("conv"))
    try:
        for d in range(depth):
            out[f"conv{d}"] = {"kernel": next(it).transpose(2, 3, 1, 0), "bias": next(it)}
            if f"norm{d}" in template:
                out[f"norm{d}"] = {"scale": next(it), "bias": next(it)}
        w, b = next(it), next(it)
    except StopIteration:
        raise ExpertError("the official snapshot holds fewer tensors than this ConvNet's parameters") from None
    if next(it, None) is not None:
        raise ExpertError("the official snapshot holds more tensors than this ConvNet's parameters")
    feat = template["fc"]["kernel"].shape[0]
    ch = template[f"conv{depth - 1}"]["kernel"].shape[-1]
    side = int(round((feat // ch) ** 0.5))
    try:
        kernel = w.reshape(w.shape[0], ch, side, side).transpose(2, 3, 1, 0).reshape(feat, -1)
    except ValueError:
        kernel = w  # reported below
    out["fc"] = {"kernel": kernel, "bias": b}
    bad = [k for k in template for n in template[k] if np.shape(out[k][n]) != np.shape(template[k][n])]
    if bad:
        raise ExpertError(f"the official snapshot's {bad[0]} has another shape than this network's: is it the same "
                          f"--model / --width / --depth?")
    return out


def params_to_official(params) -> list[np.ndarray]:
    """The inverse of official_to_params: this ConvNet's parameters as the official ConvNet's `parameters()` in
    order (kernels HWIO -> OIHW, the classifier's inputs from the NHWC flattening to NCHW), e.g. to load them into
    the PyTorch codes' ConvNet (DD-Ranking's ConvNet-3, the official DC/MTT ConvNet)."""
    p = jax.tree.map(np.asarray, params)
    depth = sum(1 for k in p if k.startswith("conv"))
    out = []
    for d in range(depth):
        out += [p[f"conv{d}"]["kernel"].transpose(3, 2, 0, 1), p[f"conv{d}"]["bias"]]
        if f"norm{d}" in p:
            out += [p[f"norm{d}"]["scale"], p[f"norm{d}"]["bias"]]
    kernel = p["fc"]["kernel"]  # (H * W * C, classes)
    ch = p[f"conv{depth - 1}"]["kernel"].shape[-1]
    side = int(round((kernel.shape[0] // ch) ** 0.5))
    out += [kernel.reshape(side, side, ch, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1), p["fc"]["bias"]]
    return [np.ascontiguousarray(a) for a in out]


def read_official(path, net) -> np.ndarray:
    """The experts of the official `replay_buffer_*.pt` files (lists of experts, each a list of snapshots, each a
    list of parameter tensors), read with `weights_only=True`: (experts, snapshots, P) float32 flat parameters of
    `net` (a models.Net ConvNet)."""
    try:
        import torch
    except ImportError:
        raise ExpertError("reading the official experts needs PyTorch (pip install torch)") from None
    template = jax.tree.map(np.asarray, net.init(jax.random.key(0))[0])
    experts_ = []
    for f in official_files(path):
        try:
            buffer = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a corrupt or unsafe file
            raise ExpertError(f"{f}: not a readable replay buffer ({type(e).__name__})") from None
        for trajectory in buffer:
            experts_.append(np.stack([ravel_pytree(official_to_params([t.numpy() for t in snap], template))[0]
                                      for snap in trajectory]))
    if len({e.shape for e in experts_}) != 1:
        raise ExpertError(f"{path}: the experts hold different numbers of snapshots")
    if any(np.array_equal(e[0], e[-1]) for e in experts_):
        raise ExpertError(f"{path}: an expert's first and last snapshots are identical (buffer.py run on a CPU-only "
                          f"host saves `p.detach().cpu()`, the live parameters, for every epoch): retrain it")
    return np.stack(experts_).astype(np.float32)


def import_official(store: ExpertStore, path, cfg, data: Dataset, net, normalize, log=print) -> None:
    """Writes the official experts at `path` into `store` (whose identity is `cfg`'s: the settings they were
    trained with, which the user vouches for), with their test accuracy; the source is kept in provenance.json."""
    if store.ident["subset_k"] != 1:
        raise ExpertError("the official experts are whole-data experts: import them for --subset-k 1")
    traj = read_official(path, net)
    if traj.shape[0] != cfg.num_experts or traj.shape[1] != cfg.expert_train_epochs + 1:
        raise ExpertError(f"{path} holds {traj.shape[0]} experts of {traj.shape[1] - 1} epochs: give --num-experts "
                          f"{traj.shape[0]} --expert-train-epochs {traj.shape[1] - 1}")
    store.check()
    store.dir.mkdir(parents=True, exist_ok=True)
    (store.dir / "identity.json").write_text(json.dumps(store.ident, indent=2, sort_keys=True))
    (store.dir / "provenance.json").write_text(json.dumps({"official_buffers": [str(f) for f in
                                                                                official_files(path)]}, indent=2))
    for e in range(traj.shape[1]):
        store._write(e, traj[:, e])
    store.train(cfg, data, net, normalize, log, progress=False)  # nothing left to train: writes accuracy.json
