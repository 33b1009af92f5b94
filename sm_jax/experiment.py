"""Running a condensation experiment: resume, iterate, checkpoint, evaluate, write artifacts."""
from __future__ import annotations

import importlib.metadata
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sm_jax import artifacts
from sm_jax.checkpointing import Checkpointer, CheckpointError
from sm_jax.config import Config, ConfigError, validate
from sm_jax.data import DataError, Dataset, load_cifar10
from sm_jax.evaluation import evaluate_set
from sm_jax.methods import CondenseState, make_context, make_method, make_partitions
from sm_jax.sharding import ShardingError, check_divides, make_mesh, put

USER_ERRORS = (ConfigError, DataError, CheckpointError, ShardingError)


class RunError(Exception):
    """A run that cannot proceed as asked (one line, user-facing)."""


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def enable_compilation_cache() -> None:
    """Persists compiled XLA programs under $SM_JAX_CACHE/xla (a rerun, a resume or the next run of a study with
    the same shapes skips compilation); SM_JAX_COMPILE_CACHE=0 turns it off."""
    import os

    from sm_jax.data import default_cache_dir

    if os.environ.get("SM_JAX_COMPILE_CACHE", "1") == "0":
        return
    jax.config.update("jax_compilation_cache_dir", str(default_cache_dir() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def progress_bar(total: int, initial: int = 0, desc: str = ""):
    """A tqdm bar with rate and ETA; silent when stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=None, dynamic_ncols=True, leave=False)


def _state_tree(state: CondenseState, partitions, key: jax.Array) -> dict[str, Any]:
    # every random draw of iteration i is fold_in(key, i): the key data plus the iteration fix the rest of the run
    return {"images": state.images, "opt_state": state.opt_state, "iteration": state.iteration,
            "real_part": partitions[0], "syn_part": partitions[1], "key": jax.random.key_data(key)}


def _diff(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} (checkpoint) vs {b.get(k)!r} (now)" for k in keys[:4])


class _DeferredInterrupt:
    """Turns the first Ctrl-C into a flag checked between iterations (so the state, the iteration count and
    metrics.jsonl stay consistent); a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


class Run:
    """One condensation run in a workdir. `Run(cfg).execute()` condenses (resuming if possible) and evaluates."""

    def __init__(self, cfg: Config, data: Dataset | None = None, progress: bool = True, log=print):
        validate(cfg)
        self.cfg = cfg
        self.workdir = Path(cfg.workdir)
        self.log = log
        self.progress = progress
        self.data = data if data is not None else load_cifar10(cfg.data_dir)
        if cfg.holdout:
            self.data = self.data.holdout(cfg.holdout)
        if self.data.num_classes < 2:
            raise DataError("the dataset needs at least 2 classes")
        self.mesh = make_mesh(cfg.devices)
        check_divides(self.mesh, self.data.num_classes, "the number of classes")
        self.method = make_method(cfg, self.data.num_classes, self.mesh)
        self.key = jax.random.key(cfg.seed)

    # --- state ---------------------------------------------------------------------------------------------
    def fresh(self):
        images = self.method.init_images(self.data, jax.random.fold_in(self.key, 1))
        partitions = make_partitions(self.cfg, self.data.class_indices())
        return self.method.init_state(images), partitions

    def meta(self, iteration: int) -> dict:
        return {"config": json.loads(self.cfg.to_json()), "identity": self.cfg.identity(), "iteration": iteration,
                "data_source": self.data.source, "saved_at": time.time()}

    def load_or_init(self, ckpt: Checkpointer):
        """Resumes from the latest checkpoint (refusing a different config) or starts fresh."""
        state, partitions = self.fresh()
        step = ckpt.latest_step()
        if step is None:
            ckpt.save(0, _state_tree(state, partitions, self.key), self.meta(0))
            return state, partitions
        _, meta = ckpt.read_meta(step)
        if meta.get("identity") != json.loads(json.dumps(self.cfg.identity())):
            diff = _diff(meta.get("identity", {}), self.cfg.identity())
            raise RunError(f"{self.workdir} holds another run ({diff}); "
                           "use a new --workdir or the same settings")
        state, partitions = self.restore(ckpt, step, state, partitions)
        self.log(f"resumed {self.workdir} at iteration {int(state.iteration)}")
        return state, partitions

    def restore(self, ckpt: Checkpointer, step: int | None, state: CondenseState, partitions):
        """Checkpoint `step` (latest if None), restored into the structure of a fresh (state, partitions)."""
        tree = ckpt.restore(step, _state_tree(state, partitions, self.key))
        if not np.array_equal(np.asarray(tree["key"]), np.asarray(jax.random.key_data(self.key))):
            raise RunError(f"{self.workdir}: the checkpoint's PRNG key differs from seed {self.cfg.seed}'s")
        state = CondenseState(jnp.asarray(tree["images"]), jax.tree.map(jnp.asarray, tree["opt_state"]),
                              jnp.asarray(tree["iteration"], jnp.int32))
        return state, (np.asarray(tree["real_part"]), np.asarray(tree["syn_part"]))

    # --- evaluation ----------------------------------------------------------------------------------------
    def evaluate(self, state: CondenseState, models: int | None = None, epochs: int | None = None) -> dict:
        cfg = self.cfg
        models = cfg.eval_models if models is None else models
        if models == 0:
            return {"accuracies": [], "accuracy_mean": None, "accuracy_std": None}
        bar = progress_bar(models, desc="evaluate") if self.progress else None
        t0 = time.time()
        accs = evaluate_set(self.method, self.method.decode(state.images), self.data.test_x, self.data.test_y,
                            jax.random.fold_in(jax.random.fold_in(self.key, 2), int(state.iteration)), models,
                            epochs=epochs, parallel=cfg.eval_parallel,
                            progress=(lambda k: bar.update(k - bar.n)) if bar else None, mesh=self.mesh)
        if bar:
            bar.close()
        return {"accuracies": accs.tolist(), "accuracy_mean": float(accs.mean()), "accuracy_std": float(accs.std()),
                "eval_epochs": cfg.eval_epochs if epochs is None else epochs, "eval_models": models,
                "eval_seconds": time.time() - t0}

    # --- the run -------------------------------------------------------------------------------------------
    def execute(self) -> dict:
        """Condenses up to cfg.iterations (resuming), checkpoints, evaluates, writes artifacts; returns results."""
        cfg = self.cfg
        self.workdir.mkdir(parents=True, exist_ok=True)
        ckpt = Checkpointer(self.workdir)
        state, partitions = self.load_or_init(ckpt)
        (self.workdir / "config.json").write_text(cfg.to_json())
        start = int(state.iteration)
        done_results = self.workdir / "results.json"
        if start >= cfg.iterations and done_results.exists():
            done = json.loads(done_results.read_text())
            if (done["budget"]["eval_epochs"], done["budget"]["eval_models"]) == (cfg.eval_epochs, cfg.eval_models):
                self.log(f"{self.workdir}: already finished ({start} iterations)")
                return done
        metrics_log = artifacts.MetricsLog(self.workdir / "metrics.jsonl", keep_up_to=start)
        ctx = put(make_context(cfg, self.data, partitions), self.mesh, shard_leading=False)
        state = CondenseState(put(state.images, self.mesh, True), put(state.opt_state, self.mesh, True),
                              state.iteration)
        step_fn = jax.jit(self.method.iteration, donate_argnums=0)
        bar = progress_bar(cfg.iterations, start, f"{cfg.method} ipc{cfg.ipc}") if self.progress else None
        it = start
        t_run = time.time()
        try:
            with _DeferredInterrupt() as interrupt:
                while it < cfg.iterations:
                    if interrupt.requested:
                        raise KeyboardInterrupt
                    t0 = time.time()
                    state, metrics = step_fn(state, ctx, jax.random.fold_in(self.key, it))
                    metrics = {k: float(v) for k, v in metrics.items()}  # host sync once per iteration, outside jit
                    it += 1
                    metrics_log.write({"iteration": it, **metrics, "seconds": time.time() - t0,
                                       "wall_time": time.time() - t_run})
                    if bar:
                        bar.update(1)
                        bar.set_postfix(loss=f"{metrics['loss_all'] + metrics['lambda'] * metrics['loss_subset']:.3g}")
                    if cfg.checkpoint_every and it % cfg.checkpoint_every == 0 and it < cfg.iterations:
                        ckpt.save(it, _state_tree(state, partitions, self.key), self.meta(it))
                    if cfg.eval_every and it % cfg.eval_every == 0 and it < cfg.iterations:
                        ev = self.evaluate(state)
                        metrics_log.write({"iteration": it, "eval": ev})
                        self.log(f"iteration {it}: accuracy {ev['accuracy_mean']:.4f} +- {ev['accuracy_std']:.4f}")
                if interrupt.requested:  # Ctrl-C during the last iteration: stop before the evaluation
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            if bar:
                bar.close()
            ckpt.save(it, _state_tree(state, partitions, self.key), self.meta(it))
            self.log(f"interrupted: saved a checkpoint at iteration {it} in {self.workdir}; rerun to resume")
            raise
        if bar:
            bar.close()
        condense_seconds = time.time() - t_run
        if it not in ckpt.all_steps():
            ckpt.save(it, _state_tree(state, partitions, self.key), self.meta(it))
        ckpt.close()
        images = state.images
        if jax.process_count() > 1:  # several hosts: each holds only its classes' shards
            from jax.experimental import multihost_utils

            images = multihost_utils.process_allgather(images, tiled=True)
        artifacts.save_synthetic(self.workdir, self.method, images, self.data.class_names)
        ev = self.evaluate(state)
        if ev["accuracy_mean"] is not None:
            metrics_log.write({"iteration": it, "eval": ev})
        results = {**ev, "iterations": it, "condense_seconds_this_sitting": condense_seconds,
                   "config": json.loads(cfg.to_json()), "data_source": self.data.source, "versions": versions(),
                   "device": str(jax.devices()[0].device_kind), "budget": {
                       "iterations": cfg.iterations, "outer_loop": cfg.outer_loop, "inner_loop": cfg.inner_loop,
                       "batch_real": cfg.batch_real, "eval_epochs": cfg.eval_epochs, "eval_models": cfg.eval_models}}
        artifacts.write_json(done_results, results)
        artifacts.plot_progress(self.workdir)
        return results


def evaluate_checkpoint(workdir: str | Path, step: int | None = None, models: int | None = None,
                        epochs: int | None = None, data_dir: str | None = None, progress: bool = True,
                        log=print) -> dict:
    """Restores the synthetic set of a checkpoint (latest by default) and runs the method's evaluation."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise CheckpointError(f"{workdir} is not a directory")
    ckpt = Checkpointer(workdir, create=False)
    step, meta = ckpt.read_meta(step)
    if "config" not in meta:
        raise CheckpointError(f"checkpoint {step} in {workdir} has no config metadata")
    cfg = Config.from_dict(meta["config"])
    if data_dir is not None:
        cfg = cfg.replace(data_dir=data_dir)
    run = Run(cfg, progress=progress, log=log)
    state, _ = run.restore(ckpt, step, *run.fresh())
    ckpt.close()
    ev = run.evaluate(state, models, epochs)
    out = {**ev, "step": step, "workdir": str(workdir), "method": cfg.method, "ipc": cfg.ipc}
    artifacts.write_json(workdir / f"eval_step{step}.json", out)
    return out
