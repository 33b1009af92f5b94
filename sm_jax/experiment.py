"""Running a condensation experiment: resume, iterate, checkpoint, evaluate, write artifacts.

What a run is (its identity) is decided in config.py, the device's class chunk and precision in backend.py, the
evaluation on several architectures in evaluation.py; this module runs the loop.
"""
from __future__ import annotations

import importlib.metadata
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sm_jax import artifacts, backend, distributed
from sm_jax.aot.compile import estimate_seconds
from sm_jax.checkpointing import Checkpointer, CheckpointError
from sm_jax.config import Config, fit_batches, run_differences, validate
from sm_jax.data import DataError, Dataset, default_cache_dir, load_dataset
from sm_jax.data.host import data_on
from sm_jax.errors import UserError
from sm_jax.evaluation import (
    evaluate_archs,
    evaluation_program,
    per_arch,
    protocols,
    random_subset,
    reference,
    set_targets,
)
from sm_jax.evaluation.ddranking import ddranking
from sm_jax.lifecycle import Diverged, Stopped, StopSignals, Waiter
from sm_jax.methods import make_method, make_partitions
from sm_jax.models import arch_names
from sm_jax.progress import Progress
from sm_jax.sharding import host, make_mesh, place_state, put
from sm_jax.tensorboard import TensorBoard

EXPLODED = 100.0  # |synthetic pixel| beyond which a run warns once (normalised real CIFAR-10 lies within [-2.5, 2.8])


def resolve_class_form(cfg: Config, spec, mesh, state, ctx, key, limit: int | None = None, log=print):
    """The method with its class chunk and synthetic side's chunk resolved for this device, as a run builds it:
    backend.resolve_chunks (on an accelerator, or with `limit`
    device bytes, `auto` compiles the candidates' iteration programs on `state`, `ctx`, `key` to predict their memory
    and time; each program compiles once).

    Returns:
      (method, the predicted device bytes of its iteration program, None where none was compiled).
    """
    costs: dict = {}

    def cost_of(chunk: int, syn: int | None = None) -> tuple[int | None, float | None]:
        method = make_method(cfg.replace(class_chunk=chunk, syn_chunk=cfg.syn_chunk if syn is None else syn), spec,
                             mesh)
        if (chunk, method.syn_chunk) not in costs:  # keyed by what it resolved to: 'auto' is fused here
            compiled = jax.jit(method.iteration, donate_argnums=0).lower(state, ctx, key).compile()
            costs[chunk, method.syn_chunk] = backend.program_bytes(compiled), estimate_seconds(compiled)
        return costs[chunk, method.syn_chunk]

    chunk, syn = backend.resolve_chunks(cfg.class_chunk, cfg.syn_chunk, spec.num_classes,
                                        make_method(cfg, spec, mesh).can_split, mesh, cost_of, limit, log)
    return make_method(cfg.replace(class_chunk=chunk, syn_chunk=syn), spec, mesh), costs.get((chunk, syn), (None,))[0]


class RunError(UserError):
    """A run that cannot proceed as asked (one line, user-facing)."""


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _state_tree(state, partitions, key: jax.Array) -> dict[str, Any]:
    """What a checkpoint holds: the method's state whole (its own pytree), the partitions and the run key."""
    # every random draw of iteration i is fold_in(key, i): the key data plus the iteration fix the rest of the run
    return {"state": state, "real_part": partitions[0], "syn_part": partitions[1],
            "key": np.asarray(jax.random.key_data(key))}


def _check_finite(it: int, metrics: dict, names, last_saved: int | None, workdir: Path) -> None:
    """Raises Diverged naming iteration `it` when one of the metrics `names` (the method's finite_metrics) is not
    finite."""
    bad = {k: v for k, v in metrics.items() if k in names and not np.isfinite(v)}
    if bad:
        what = ", ".join(f"{k} = {v}" for k, v in bad.items())
        kept = f"the last good checkpoint is iteration {last_saved} in {workdir}" if last_saved is not None else \
            "no checkpoint was kept"
        raise Diverged(f"diverged at iteration {it}: {what}; {kept} (a smaller --lr-img may help)")


class Run:
    """One condensation run in a workdir. `Run(cfg).execute()` condenses (resuming if possible) and evaluates.

    With several processes (sm_jax.distributed) every process runs it alike; process 0 alone writes the run's files
    and logs, and the decisions that branch the program (stop, resume, evaluate) are made collectively.
    """

    def __init__(self, cfg: Config, data: Dataset | None = None, progress: bool = True, log=print):
        validate(cfg)
        self.cfg = cfg
        self.workdir = Path(cfg.workdir)
        self.writer = distributed.is_writer()
        self.log = log if self.writer else (lambda *a, **k: None)
        self.progress = progress and self.writer
        self.data = data if data is not None else load_dataset(cfg.dataset, cfg.data_dir, res=cfg.res)
        if cfg.holdout:
            self.data = self.data.holdout(cfg.holdout)
        if cfg.eval_test_per_class:
            self.data = self.data.test_subset(cfg.eval_test_per_class)
        if self.data.num_classes < 2:
            raise DataError("the dataset needs at least 2 classes")
        self.cfg = cfg = fit_batches(cfg, self.data, self.log)
        self.mesh = make_mesh(cfg.devices)
        self.method = make_method(cfg, self.data.spec, self.mesh)
        self.method.attach(self.data)
        self.key = jax.random.key(cfg.seed)
        self._teachers: dict = {}  # arch -> the teacher protocol's (net, params, state), once loaded
        self._parallel: dict = {}  # (models, epochs) -> the evaluation networks per call `auto` resolved to
        self.predicted: dict = {}  # program -> device bytes XLA predicted for the form chosen (where one was weighed)

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
            ckpt.save(0, _state_tree(host(state), partitions, self.key), self.meta(0))
            ckpt.wait()
            return state, partitions
        _, meta = ckpt.read_meta(step)
        diff = run_differences(meta.get("config", {}), self.cfg)
        if diff:
            raise RunError(f"{self.workdir} holds another run ({diff}); use a new --workdir or the same settings")
        state, partitions = self.restore(ckpt, step, state, partitions)
        self.log(f"resumed {self.workdir} at iteration {int(state.iteration)}")
        return state, partitions

    def restore(self, ckpt: Checkpointer, step: int | None, state, partitions):
        """Checkpoint `step` (latest if None), restored into the structure of a fresh (state, partitions)."""
        tree = ckpt.restore(step, _state_tree(host(state), partitions, self.key))  # host arrays, as saved
        if not np.array_equal(np.asarray(tree["key"]), np.asarray(jax.random.key_data(self.key))):
            raise RunError(f"{self.workdir}: the checkpoint's PRNG key differs from seed {self.cfg.seed}'s")
        # as uncommitted arrays, like a fresh state's: the same jit signature, so the persistent compilation cache
        # serves a resumed run the program its first sitting compiled
        fresh = lambda a: jnp.asarray(np.asarray(a))  # noqa: E731
        return jax.tree.map(fresh, tree["state"]), (np.asarray(tree["real_part"]), np.asarray(tree["syn_part"]))

    # --- evaluation ----------------------------------------------------------------------------------------
    def evaluate(self, state, models: int | None = None, epochs: int | None = None,
                 stop: StopSignals | None = None) -> dict:
        """The method's evaluation of `state`'s synthetic set on each architecture of the config's `eval_arch` (or
        the matching network); raises EvalStopped between networks once `stop` is requested.

        Returns:
          evaluation.evaluate_archs's results.
        """
        return self.evaluate_images(self.method.decode(state.images), int(state.iteration), models, epochs, stop,
                                    self.method.learned(state))

    def evaluate_images(self, images: jax.Array, iteration: int, models: int | None = None,
                        epochs: int | None = None, stop: StopSignals | None = None,
                        learned: dict | None = None, targets=None) -> dict:
        """`evaluate` of a set given as the images networks train on, (classes, n, H, W, C) normalised; the
        networks' keys are those of this run's evaluation at `iteration`; `learned`: what the method learned beside
        the images (Method.learned: MTT's lr), which the protocol uses; `targets`: the set's soft labels
        (classes, n, classes) logits, or None. With `--metrics ddranking` the result also has DD-Ranking's scores
        (evaluation.ddranking: hlr, ior, lrs, ars at the top level, their inputs under `ddranking`)."""
        cfg = self.cfg
        models = cfg.eval_models if models is None else models
        archs = arch_names(cfg.eval_arch) or (self.method.net.name,)
        bar = Progress(models * len(archs) * (2 if cfg.baseline else 1),
                       desc=f"evaluate iteration {iteration}: network", unit="net",
                       enabled=self.progress and models > 0, every=cfg.log_every)

        def stopping(_=None) -> None:  # between networks (cells): a stop ends the evaluation
            if stop is not None and distributed.stop_agreed(stop):
                raise EvalStopped

        def progress(done: int) -> None:
            bar.update(done)
            stopping()

        key = jax.random.fold_in(jax.random.fold_in(self.key, 2), iteration)
        try:
            with backend.precision(cfg.precision):
                ev = evaluate_archs(self.method, images, self.data.test_x, self.data.test_y, key, models, archs,
                                    epochs, self._eval_parallel(images, models, epochs, learned, targets),
                                    self.mesh,
                                    progress, self.log,
                                    self.baseline_images(images.shape[1]), learned, cfg.eval_protocol, targets,
                                    lambda arch: self.teacher(arch, stop))
                if cfg.metrics == "ddranking" and models:
                    scores = ddranking(self.method, self.data, images, jax.random.fold_in(key, 3), models, cfg.preset,
                                       default_cache_dir(), learned, targets, self.log, stop, self.progress,
                                       on_network=stopping)
                    ev = {**ev, **{k: scores[k] for k in ("hlr", "ior", "lrs", "ars")}, "ddranking": scores}
                return ev
        finally:
            bar.close()

    def _eval_parallel(self, images: jax.Array, models: int, epochs: int | None, learned: dict | None,
                       targets=None, limit: int | None = None) -> int:
        """The evaluation networks per call (backend.resolve_eval_parallel), resolved once per (models, epochs): on an
        accelerator `auto` compiles the evaluation program at both candidate widths to estimate them (not on a mesh,
        nor for the teacher protocol: there one network per device); weighed on the matching network, the width serves
        every architecture of `--eval-arch`; `limit` device bytes makes it weigh on CPU too."""
        cfg = self.cfg
        if (models, epochs) in self._parallel:
            return self._parallel[(models, epochs)]
        cost_of = None
        if self.mesh is None and not protocols.uses_teacher(cfg.eval_protocol, self.method):
            proto = protocols.train_protocol(cfg.eval_protocol, self.method, epochs, None, learned)
            x = images.reshape(-1, *images.shape[2:])  # (classes * n, H, W, C)
            y = set_targets(self.method, images, cfg.eval_protocol, targets)
            test = jax.ShapeDtypeStruct((len(self.data.test_y), *x.shape[1:]), jnp.float32)
            test_y = jax.ShapeDtypeStruct((len(self.data.test_y),), jnp.int32)

            def cost_of(width: int) -> tuple[int | None, float | None]:
                keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), width))
                program = jax.jit(evaluation_program(self.method.eval_net(None, width), proto))
                compiled = program.lower(x, y, keys, test, test_y).compile()
                sizes[width] = backend.program_bytes(compiled)
                return sizes[width], estimate_seconds(compiled)

        sizes: dict = {}
        width = backend.resolve_eval_parallel(cfg.eval_parallel, self.mesh, models or 1, cost_of, limit, self.log)
        self._parallel[(models, epochs)] = width
        if sizes.get(width) is not None:
            self.predicted["evaluation"] = max(sizes[width], self.predicted.get("evaluation") or 0)
        return width

    def _memory_bound(self, peak: int | None) -> dict | None:
        """backend.memory_bound of this run's device `peak` so far, logged on one line (None on CPU, or where no
        program was weighed)."""
        on_device = data_on(self.cfg.data_on, self.data.train_x.nbytes) == "device"
        bound = backend.memory_bound(peak, self.predicted.get("iteration"),
                                     self.predicted.get("evaluation"), self.data.train_x.nbytes if on_device else 0)
        if bound is not None:
            gib = lambda b: "-" if b is None else f"{b / 2**30:.2f}"  # noqa: E731
            self.log(f"device memory: peak {gib(bound['peak_bytes'])} GiB, {bound['ratio']:.2f}x the "
                     f"{gib(bound['predicted_bytes'])} GiB predicted (iteration {gib(bound['iteration_bytes'])}, "
                     f"evaluation {gib(bound['evaluation_bytes'])} + data {gib(bound['data_bytes'])}): "
                     + ("within" if bound["within"] else "over") + f" the {bound['bound']}x bound")
        return bound

    def teacher(self, arch: str | None = None, stop: StopSignals | None = None):
        """(net, params, state): the `teacher` protocol's teacher on `arch`, the first real-data reference network
        (evaluation.reference; trained on first use, then read from the cache; kept for the run's later
        evaluations). Raises Stopped once `stop` is requested during its training."""
        if arch not in self._teachers:
            ref, net, train, _ = reference.of_method(self.method, self.data, self.cfg.preset, default_cache_dir(), arch)
            self._teachers[arch] = ref.teacher(net, self.method.normalize, train, log=self.log, stop=stop,
                                               progress=self.progress, every=self.cfg.log_every)
        return self._teachers[arch]

    def baseline_images(self, per_class: int) -> jax.Array | None:
        """The config's baseline set (None without one): `per_class` random training images of each class
        (evaluation.random_subset, seeded by the run's seed), normalised: (classes, per_class, H, W, C)."""
        if not self.cfg.baseline:
            return None
        try:
            idx = random_subset(self.data.train_y, self.data.num_classes, per_class, self.cfg.seed)
        except ValueError as e:
            raise RunError(str(e)) from None
        return self.method.normalize(jnp.asarray(self.data.train_x[idx], jnp.float32) / 255.0)

    def _evaluate_and_log(self, state, metrics_log: artifacts.MetricsLog, stop: StopSignals) -> None:
        it = int(state.iteration)
        ev = self.evaluate(state, stop=stop)
        self._log_eval(metrics_log, it, ev, state.images)
        self.log(f"iteration {it}: accuracy {ev['accuracy_mean']:.4f} +- {ev['accuracy_std']:.4f}")

    def _log_eval(self, metrics_log: artifacts.MetricsLog, it: int, ev: dict, images) -> None:
        """An evaluation's metrics.jsonl line and, with TensorBoard on, the synthetic grid beside its scalars."""
        metrics_log.write({"iteration": it, "eval": ev})
        if isinstance(metrics_log.sink, TensorBoard):
            pixels = np.asarray(self.method.to_pixels(images), np.float32)
            metrics_log.sink.image("synthetic", np.asarray(artifacts.grid(pixels, self.data.class_names)), it)

    def _eval_pending(self, it: int) -> bool:
        """Whether the periodic evaluation due at iteration `it` has no line in metrics.jsonl (a run stopped during
        it: the resumed run does it first)."""
        cfg = self.cfg
        if not (cfg.eval_every and 0 < it < cfg.iterations and it % cfg.eval_every == 0):
            return False
        records = artifacts.read_metrics(self.workdir / "metrics.jsonl")
        return distributed.broadcast(not any(r.get("iteration") == it and "eval" in r for r in records))

    def _resolve_class_chunk(self, state, ctx, limit: int | None = None) -> None:
        """Rebuilds the method with the class chunk and the synthetic side's chunk resolved for this device
        (`resolve_class_form`); a no-op for a method whose iteration has no class chunk (Method.class_chunked)."""
        if not self.method.class_chunked:
            return
        method, self.predicted["iteration"] = resolve_class_form(self.cfg, self.data.spec, self.mesh, state, ctx,
                                                                 self.key, limit, self.log)
        if (method.class_chunk, method.syn_chunk) != (self.method.class_chunk, self.method.syn_chunk):
            self.method = method
            self.method.attach(self.data)

    # --- the run -------------------------------------------------------------------------------------------
    def execute(self) -> dict:
        """Condenses up to cfg.iterations (resuming), checkpoints, evaluates, writes artifacts; returns results.

        Raises:
          Stopped: after SIGINT / SIGTERM, once a checkpoint a rerun resumes from is saved.
          Diverged: at a non-finite loss or image gradient; the last good checkpoint is kept.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        ckpt = Checkpointer(self.workdir)
        self.tensorboard = TensorBoard(self.workdir / "tensorboard") if self.cfg.tensorboard and self.writer else None
        try:
            with StopSignals() as stop, backend.precision(self.cfg.precision):
                return self._execute(ckpt, stop)
        finally:
            ckpt.close()  # waits for an asynchronous save in flight
            if self.tensorboard is not None:
                self.tensorboard.close()

    def _execute(self, ckpt: Checkpointer, stop: StopSignals) -> dict:
        cfg = self.cfg
        if cfg.preset_note:
            self.log(f"preset: {cfg.preset_note}")
        self.method.preparation(self.data, self.log, stop, self.progress)
        state, partitions = self.load_or_init(ckpt)
        if self.writer:
            (self.workdir / "config.json").write_text(cfg.to_json())
        start = int(state.iteration)
        done_results = self.workdir / "results.json"
        if start >= cfg.iterations and distributed.broadcast(done_results.exists()):
            done = json.loads(done_results.read_text())
            if not run_differences(done["config"], cfg, results=True):
                self.log(f"{self.workdir}: already finished ({start} iterations)")
                return done
        metrics_log = artifacts.MetricsLog(self.workdir / "metrics.jsonl", keep_up_to=start, sink=self.tensorboard,
                                           enabled=self.writer)
        ctx = put(self.method.context(self.data, partitions), self.mesh, shard_leading=False)
        state, placement = place_state(state, self.mesh, self.method.class_axis(state))
        self._resolve_class_chunk(state, ctx)
        step_fn = jax.jit(self.method.iteration, donate_argnums=0, out_shardings=placement)
        # `last` is the newest finished state, copied to the host before the next iteration donates its buffers:
        # checkpoints are written from it (asynchronously), and a stop saves it without waiting for the device
        last, it, saved, t_saved = host(state), start, ckpt.latest_step(), time.time()

        def save() -> None:
            nonlocal saved, t_saved
            if saved != it:
                ckpt.save(it, _state_tree(last, partitions, self.key), self.meta(it))
                saved, t_saved = it, time.time()

        bar = Progress(cfg.iterations, start, f"{cfg.method} ipc{cfg.ipc} iteration", enabled=self.progress,
                       every=cfg.log_every)
        waiter, abandoned, warned, t_run = Waiter(), False, False, time.time()
        # several processes leave no iteration behind (they could not agree on dropping it): they stop after it
        grace = cfg.stop_grace if jax.process_count() == 1 else float("inf")
        try:
            if self._eval_pending(start):
                self._evaluate_and_log(state, metrics_log, stop)
            while it < cfg.iterations and not distributed.stop_agreed(stop):
                t0 = time.time()
                state, metrics = step_fn(state, ctx, jax.random.fold_in(self.key, it))  # dispatched asynchronously
                if not waiter.wait(metrics, stop, grace):
                    abandoned = True  # stopped, and the iteration in flight would not end within the grace period
                    break
                metrics = {k: float(v) for k, v in metrics.items()}  # host sync once per iteration, outside jit
                _check_finite(it + 1, metrics, self.method.finite_metrics, saved, self.workdir)
                it += 1
                last = host(state)
                peak = 0.0 if warned else float(np.abs(last.images).max())
                if peak > EXPLODED:  # finite but far outside the data: the loss may not show it
                    warned = True
                    self.log(f"warning: iteration {it}: synthetic pixels reach |x| = {peak:.3g} (real images lie "
                             f"within about 3 in these units): --lr-img {cfg.lr_img:g} may be too large")
                metrics_log.write({"iteration": it, **metrics, "seconds": time.time() - t0,
                                   "wall_time": time.time() - t_run})
                bar.update(it, **{k: metrics[k] for k in self.method.shown_metrics if k in metrics})
                evaluate_now = cfg.eval_every and it % cfg.eval_every == 0
                if it < cfg.iterations and (evaluate_now or (cfg.checkpoint_every and it % cfg.checkpoint_every == 0)
                                            or (cfg.checkpoint_minutes
                                                and time.time() - t_saved >= 60 * cfg.checkpoint_minutes)):
                    save()  # before an evaluation too: a stop during it then loses nothing
                if evaluate_now and it < cfg.iterations:
                    self._evaluate_and_log(state, metrics_log, stop)
        except EvalStopped:
            pass
        finally:
            bar.close()
            waiter.close()
        if distributed.stop_agreed(stop):
            save()
            ckpt.wait()
            dropped = " (the iteration in flight was dropped)" if abandoned else ""
            raise Stopped(stop.signum, f"stopped by {stop.name}: saved a checkpoint at iteration {it} in "
                          f"{self.workdir}{dropped}; rerun the same command to resume", abandoned)
        condense_seconds = time.time() - t_run
        save()
        ckpt.wait()
        learned = self.method.learned(last)
        if self.writer:
            artifacts.save_synthetic(self.workdir, self.method, last.images, self.data.class_names, learned)
        try:
            ev = self.evaluate(state, stop=stop)
        except EvalStopped:
            raise Stopped(stop.signum, f"stopped by {stop.name} during the final evaluation; the condensed set is "
                          f"saved (iteration {it}); rerun the same command to evaluate it") from None
        if ev["accuracy_mean"] is not None:
            self._log_eval(metrics_log, it, ev, last.images)
        peak = backend.device_peak_bytes()
        results = {**ev, "iterations": it, "learned": learned, "condense_seconds_this_sitting": condense_seconds,
                   "device_seconds": artifacts.device_seconds(self.workdir / "metrics.jsonl"),
                   "config": json.loads(cfg.to_json()), "data_source": self.data.source,
                   "num_classes": self.data.num_classes, "image_shape": list(self.data.spec.image_shape),
                   "data_on": data_on(cfg.data_on, self.data.train_x.nbytes), "versions": versions(),
                   "device": str(jax.devices()[0].device_kind), "device_peak_bytes": peak,
                   "device_memory": self._memory_bound(peak),
                   "processes": jax.process_count(),
                   "devices": self.mesh.size if self.mesh is not None else 1, "budget": {
                       "iterations": cfg.iterations, "outer_loop": cfg.outer_loop, "inner_loop": cfg.inner_loop,
                       "batch_real": cfg.batch_real, "eval_epochs": cfg.eval_epochs, "eval_models": cfg.eval_models,
                       "eval_arch": cfg.eval_arch, "eval_test_per_class": cfg.eval_test_per_class}}
        if self.writer:
            artifacts.write_json(done_results, results)
            artifacts.plot_progress(self.workdir)
        return results


class EvalStopped(Exception):
    """A stop requested during an evaluation (raised between networks)."""


def evaluate_checkpoint(workdir: str | Path, step: int | None = None, overrides: dict | None = None,
                        progress: bool = True, log=print) -> dict:
    """Restores the synthetic set of a checkpoint (latest by default) and runs the method's evaluation with the run's
    config, `overrides` (Config fields: eval_models, eval_epochs, eval_arch, data_dir, ...) replacing its values.

    Raises:
      Stopped: on SIGINT / SIGTERM (between networks; nothing is written).
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise CheckpointError(f"{workdir} is not a directory")
    ckpt = Checkpointer(workdir, create=False)
    step, meta = ckpt.read_meta(step)
    if "config" not in meta:
        raise CheckpointError(f"checkpoint {step} in {workdir} has no config metadata")
    cfg = Config.from_dict(meta["config"]).replace(**(overrides or {}))
    run = Run(cfg, progress=progress, log=log)
    state, _ = run.restore(ckpt, step, *run.fresh())
    ckpt.close()
    with StopSignals() as stop:
        try:
            # epochs given explicitly are trained as given (not scaled as a protocol's default is: DC's ConvNetBN)
            ev = run.evaluate(state, epochs=(overrides or {}).get("eval_epochs"), stop=stop)
        except EvalStopped:
            raise Stopped(stop.signum, f"stopped by {stop.name} during the evaluation") from None
    out = {**ev, "step": step, "workdir": str(workdir), "method": cfg.method, "ipc": cfg.ipc}
    if run.writer:
        artifacts.write_json(workdir / f"eval_step{step}.json", out)
        _merge_results(workdir / "results.json", out, run.method.net.name)
    return out


def _merge_results(path: Path, ev: dict, matching: str) -> None:
    """Adds an evaluation's per-architecture results to a run's results.json under `archs` (the top level keeps the
    run's own final evaluation); each entry records its step, networks and epochs."""
    results = json.loads(path.read_text()) if path.is_file() else {}
    # the run's own evaluation (on the matching network when it recorded one architecture) is kept
    archs = dict(per_arch(results, matching)) if results.get("accuracies") else {}
    for arch, r in per_arch(ev, matching).items():
        archs[arch] = {**r, "step": ev["step"], "eval_models": ev.get("eval_models")}
    if not results.get("accuracies"):  # no final evaluation recorded: this one is the run's result
        results.update({k: v for k, v in ev.items() if k != "archs"})
    results["archs"] = archs
    artifacts.write_json(path, results)
